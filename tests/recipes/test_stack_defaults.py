"""The software stack fills the fields a recipe leaves out (app/recipes/read.py TF4_DEFAULTS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.errors import CalibrationError
from app.recipes import RecipeFile, import_recipe
from tests.webapp import app, client

__all__ = ["app", "client"]  # fixtures

ARGS = {"per_device_train_batch_size": 2, "gradient_checkpointing": True, "bf16": True, "output_dir": "out"}


def _import(args: dict[str, object], stack: str) -> dict[str, object]:
    file = RecipeFile.from_bytes("training_args.json", json.dumps(args).encode())
    return import_recipe([file], stack).plan_fields  # type: ignore[arg-type]


def test_transformers_4_checkpoints_reentrant_when_the_file_gives_no_kwargs() -> None:
    """4.57.6 gradient_checkpointing_enable() defaults to use_reentrant=True; transformers 5 to False."""
    four, five = _import(ARGS, "transformers-4"), _import(ARGS, "transformers-5")
    assert four["reentrant"] is True and four["stack"] == "transformers-4"
    assert "reentrant" not in five and "stack" not in five


def test_the_files_own_kwargs_win_over_the_stack_default() -> None:
    given = {**ARGS, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert "reentrant" not in _import(given, "transformers-4")


def test_no_checkpointing_no_reentrant_on_either_stack() -> None:
    assert "reentrant" not in _import({**ARGS, "gradient_checkpointing": False}, "transformers-4")


def test_the_api_imports_with_the_plans_stack(client: TestClient) -> None:
    body = {
        "model": "meta-llama/Llama-3.1-8B",
        "files": [{"name": "training_args.json", "text": json.dumps(ARGS)}],
        "plan": {"stack": "transformers-4", "method": "lora"},
    }
    response = client.post("/api/v1/estimate/from-config", json=body)
    assert response.status_code == 200, response.text
    plan = response.json()["plan"]
    assert plan["stack"] == "transformers-4" and plan["reentrant"] is True
    assert plan["autocast"] is True  # no torch_dtype: 4.57 loads fp32, bf16 autocasts (the method lora is given)
    bad = client.post("/api/v1/estimate/from-config", json={**body, "plan": {"stack": "transformers-3"}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "plan.stack"


ADAPTER = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
BNB = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}


def _recipe(stack: str, args: dict[str, object], *others: tuple[str, dict[str, object]], method: str | None = None):  # type: ignore[no-untyped-def]
    files = [RecipeFile.from_bytes("training_args.json", json.dumps(args).encode())]
    files += [RecipeFile.from_bytes(name, json.dumps(doc).encode()) for name, doc in others]
    return import_recipe(files, stack, method)  # type: ignore[arg-type]


def test_transformers_4_loads_fp32_without_a_dtype_so_bf16_is_autocast() -> None:
    """4.57.6 from_pretrained without dtype/torch_dtype keeps torch's default fp32 (modeling_utils.py _get_dtype);
    Trainer's bf16 then autocasts. transformers 5 loads the config's dtype: bf16 weights, no autocast."""
    lora = ("adapter_config.json", ADAPTER)
    four, five = _recipe("transformers-4", ARGS, lora), _recipe("transformers-5", ARGS, lora)
    assert (four.plan.method, four.plan.dtype, four.plan.autocast, four.plan.weight_dtype) == (
        "lora",
        "bf16",
        True,
        "fp32",
    )
    assert (five.plan.dtype, five.plan.autocast, five.plan.weight_dtype) == ("bf16", False, "bf16")


def test_transformers_4_without_bf16_or_fp16_trains_in_fp32() -> None:
    plain = {k: v for k, v in ARGS.items() if k != "bf16"}
    four = _recipe("transformers-4", plain, ("adapter_config.json", ADAPTER))
    assert (four.plan.dtype, four.plan.autocast) == ("fp32", False)
    torch_dtype = [m for m in four.mapped if m.field == "torch_dtype"]
    assert torch_dtype and torch_dtype[0].default and torch_dtype[0].plan_value == "fp32"
    assert _recipe("transformers-5", plain, ("adapter_config.json", ADAPTER)).plan.dtype == "bf16"


def test_a_given_torch_dtype_wins_over_the_stack_default() -> None:
    given = {**ARGS, "torch_dtype": "bfloat16"}
    four = _recipe("transformers-4", given, ("adapter_config.json", ADAPTER))
    assert (four.plan.dtype, four.plan.autocast) == ("bf16", False)


def test_qlora_on_transformers_4_is_no_autocast_and_says_why() -> None:
    """bitsandbytes' quantizer loads fp16 without a torch_dtype (4.57.6 quantizer_bnb_4bit.py update_dtype) and
    prepare_model_for_kbit_training upcasts to fp32: the qlora plan; the autocast is reported, not planned."""
    four = _recipe("transformers-4", ARGS, ("adapter_config.json", ADAPTER), ("bnb.json", BNB))
    assert (four.plan.method, four.plan.autocast) == ("qlora", False)
    why = {e.field: e.why for e in four.not_modelled}["bf16"]
    assert "lora and full fine-tuning only" in why and "update_dtype" in why
    alone = _recipe("transformers-4", ARGS)  # the method left to the default, qlora: no 422
    assert alone.plan.method == "qlora" and alone.plan.autocast is False
    assert "bf16" in {e.field for e in alone.not_modelled}


def test_a_method_given_beside_the_files_keeps_the_autocast() -> None:
    four = _recipe("transformers-4", ARGS, method="lora")
    assert four.plan_fields["autocast"] is True and not [e for e in four.not_modelled if e.field == "bf16"]


def test_an_mxfp4_quantization_config_is_the_plans_mxfp4() -> None:
    """Mxfp4Config's dequantize defaults to False (the experts stay MXFP4); the published gpt-oss config.json carries
    {quant_method: mxfp4} only."""
    published = {
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    }
    kept = import_recipe([RecipeFile.from_bytes("config.json", json.dumps(published).encode())])
    assert kept.plan.mxfp4 == "keep" and not kept.unknown and not kept.not_modelled
    cookbook = {"quantization_config": {"quant_method": "mxfp4", "dequantize": True}}
    assert import_recipe([RecipeFile.from_bytes("q.json", json.dumps(cookbook).encode())]).plan.mxfp4 == "dequantize"


# Saves a tiny bf16 Llama, then loads it back with from_pretrained and no dtype: prints the weights' dtype.
LOAD_SCRIPT = """
import sys, torch, transformers
cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                               num_hidden_layers=1, vocab_size=64, dtype="bfloat16")
transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
print(transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).model.layers[0].mlp.up_proj.weight.dtype)
"""


@pytest.mark.parametrize(
    ("stack", "loaded"), [("transformers-4", "torch.float32"), ("transformers-5", "torch.bfloat16")]
)
def test_from_pretrained_without_a_dtype_loads_what_the_stack_default_says(
    stack: str, loaded: str, tmp_path: Path
) -> None:
    """The default TF4_DEFAULTS states, run: a bf16 checkpoint loads fp32 on 4.57.6 and in its own dtype on 5.24."""
    from app.calibration.stacks import stack_python

    if stack == "transformers-4":
        try:
            python = str(stack_python("transformers-4"))
        except CalibrationError as missing:
            pytest.skip(str(missing))
    else:
        pytest.importorskip("torch")
        python = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [python, "-c", LOAD_SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == loaded
