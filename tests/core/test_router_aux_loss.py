"""The MoE router auxiliary (load-balancing) loss term: `router_aux_loss_bytes` (app/core/experts.py)."""

from __future__ import annotations

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.experts import router_aux_loss_bytes
from app.core.plan import TrainingPlan
from app.recipes import RecipeFile, import_recipe

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"


def _term(model: str, plan: TrainingPlan) -> int:
    return sum(t.bytes for t in estimate(load_spec(model), plan).breakdown if t.term == "router_aux_loss_bytes")


def test_the_term_is_every_moe_layers_router_logits_in_the_activation_dtype() -> None:
    """Mixtral-8x7B: 32 MoE layers, 8 experts; QLoRA's prepared router runs in fp32, LoRA's in bf16."""
    spec = load_spec(MIXTRAL)
    qlora = TrainingPlan(router_aux_loss=True, seq_len=4096, batch_size=4)
    lora = TrainingPlan(method="lora", router_aux_loss=True, seq_len=4096, batch_size=4, dropout=0.0)
    assert router_aux_loss_bytes(spec, qlora, 32) == (32 * 4 * 4096 * 8 * 4, 4 * 4096 * 8 * 4)
    assert router_aux_loss_bytes(spec, lora, 32) == (32 * 4 * 4096 * 8 * 2, 4 * 4096 * 8 * 2)


def test_off_by_default_and_zero_where_the_model_computes_no_aux_loss() -> None:
    assert router_aux_loss_bytes(load_spec(MIXTRAL), TrainingPlan(), 32) == (0, 0)
    dense = load_spec("meta-llama/Llama-3.1-8B")
    assert router_aux_loss_bytes(dense, TrainingPlan(router_aux_loss=True), 32) == (0, 0)
    # transformers' DeepseekV3ForCausalLM records router logits but adds no load_balancing_loss_func
    deepseek = load_spec("deepseek-ai/DeepSeek-V3")
    assert router_aux_loss_bytes(deepseek, TrainingPlan(router_aux_loss=True), 61) == (0, 0)


def test_without_checkpointing_the_forward_peak_grows_by_the_whole_term() -> None:
    base = TrainingPlan(method="lora", gradient_checkpointing=False, dropout=0.0, seq_len=1024)
    with_aux = base.model_copy(update={"router_aux_loss": True})
    spec = load_spec(MIXTRAL)
    grown = estimate(spec, with_aux).peak_allocated_bytes - estimate(spec, base).peak_allocated_bytes
    assert grown == 32 * 1024 * 8 * 2 == _term(MIXTRAL, with_aux)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "llamafactory.yaml",
            "model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nmoe_aux_loss_coef: 0.001\n",
            True,
        ),
        ("llamafactory.yaml", "model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nmoe_aux_loss_coef: 0\n", None),
        ("axolotl.yaml", "base_model: m\nadapter: qlora\nmodel_config:\n  output_router_logits: true\n", True),
        (
            "axolotl.yaml",
            "base_model: m\nadapter: qlora\noverrides_of_model_config:\n  output_router_logits: false\n",
            False,
        ),
    ],
)
def test_recipes_that_turn_on_output_router_logits_import_as_router_aux_loss(
    name: str, text: str, expected: bool | None
) -> None:
    fields = import_recipe([RecipeFile(name=name, text=text)]).plan_fields
    assert fields.get("router_aux_loss") is expected


def test_a_trl_model_init_kwargs_override_imports_as_router_aux_loss() -> None:
    text = '{"output_dir": "o", "model_init_kwargs": {"output_router_logits": true}, "max_length": 512}'
    fields = import_recipe([RecipeFile(name="sft_config.json", text=text, format="trl")]).plan_fields
    assert fields["router_aux_loss"] is True
