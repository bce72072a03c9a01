"""FSDP2 as accelerate 1.14+ cuts its units (plan.fsdp_units accelerate): the embedding and the tail on their own."""

from __future__ import annotations

from typing import Any

import pytest

from app.calibration.matrix import _identity
from app.catalog import load_spec
from app.core.estimate import _prepared, backward_moments, estimate, forward_moments, persistent_terms
from app.core.fsdp2_units import accelerate_units, embed_param_bytes, fsdp2_units
from app.core.plan import TrainingPlan
from app.core.sharding import layer_param_bytes, root_param_bytes
from app.core.spec import ModelSpec

LLAMA = "meta-llama/Llama-2-7b-hf"  # untied: embed_tokens and lm_head 32000 x 4096 each
BASE = {"optimizer": "adamw", "gpus": 2, "seq_len": 256, "sharding": "fsdp"}


def _spec(name: str = LLAMA) -> ModelSpec:
    spec = load_spec(name)
    assert spec is not None
    return spec


def _terms(spec: ModelSpec, **fields: Any) -> Any:
    return _prepared(spec, TrainingPlan(**{**BASE, **fields}))


def test_the_embedding_is_half_of_an_untied_llamas_root() -> None:
    units = accelerate_units(_spec())
    assert not units.tied
    assert units.embed_fraction == pytest.approx(0.5, abs=1e-4)  # the final norm's 4096 elements are the rest


def test_only_fsdp2_on_several_gpus_under_accelerates_units_has_units() -> None:
    spec = _spec()
    assert fsdp2_units(spec, TrainingPlan(**BASE)) is not None
    for fields in (
        {"fsdp_units": "layers"},
        {"sharding": "ddp"},
        {"gpus": 1},
        {"fsdp_version": 1},
        {"sharding": "zero3"},
    ):
        assert fsdp2_units(spec, TrainingPlan(**{**BASE, **fields})) is None, fields


def test_fsdp_units_means_nothing_outside_fsdp2_and_leaves_the_shipped_ids() -> None:
    ddp = TrainingPlan(**{**BASE, "sharding": "ddp", "fsdp_units": "layers"})
    assert ddp.fsdp_units == "accelerate"  # normalised: only FSDP2 has units to cut
    assert "fsdp_units" not in _identity(TrainingPlan(**{**BASE, "fsdp_units": "layers"}))
    assert "fsdp_units" in _identity(TrainingPlan(**BASE))


def test_untied_forward_gathers_the_tail_only_at_the_end() -> None:
    """Through the layers nothing of the root is gathered (`2W` while a layer runs, not `R + 2W`); at the logits the
    tail and its flat output, `2T`."""
    spec = _spec()
    _, _, tensors, s = _terms(spec, method="lora")
    plan = TrainingPlan(**{**BASE, "method": "lora"})
    inv, units = tensors.inventory, accelerate_units(spec)
    layer = layer_param_bytes(inv, spec.arch.num_layers, plan)
    tail = root_param_bytes(inv, plan) - embed_param_bytes(inv, plan, units)
    assert s.sharded.forward_layer == 2 * layer
    assert s.sharded.forward_logits == 2 * tail
    assert s.sharded.tail_gather == layer + 2 * tail
    assert s.sharded.root_regather == 0


def test_qlora_needs_less_under_accelerates_units_than_layers_then_model() -> None:
    """Under QLoRA the root (16-bit embeddings and lm_head) outweighs a 4-bit layer: the layers-then-model units hold
    it through every layer and re-gather it at backward's start; accelerate's never hold the embedding and the tail
    together."""
    spec = _spec()
    plan = TrainingPlan(**{**BASE, "method": "qlora", "gradient_checkpointing": False})
    layers = estimate(spec, plan.model_copy(update={"fsdp_units": "layers"}))
    units = estimate(spec, plan)
    assert units.peak_allocated_bytes < layers.peak_allocated_bytes
    r = root_param_bytes(_terms(spec, method="qlora")[2].inventory, plan)
    assert layers.peak_allocated_bytes - units.peak_allocated_bytes <= 2 * r


def test_full_fine_tuning_reduce_scatters_the_tail_at_backwards_start() -> None:
    spec = _spec()
    _, _, _, s = _terms(spec, method="full")
    gathered, reduce_scatter = s.sharded.tail_reduce_scatter
    assert reduce_scatter > 0 and gathered > 0
    moments = backward_moments(s, persistent_terms(s))
    assert any(m.get("reduce_scatter_bytes") == reduce_scatter for m in moments)
    # the embedding's gradient is reduce-scattered at the end, beside every shard
    assert s.sharded.reduce_scatter_root > 0
    lora = _terms(spec, method="lora")[3]
    assert lora.sharded.tail_reduce_scatter[1] == 0  # lm_head is frozen under LoRA: nothing to reduce-scatter


def test_a_tied_tail_is_the_whole_root_gathered_throughout() -> None:
    """Tied embeddings (Qwen2.5-0.5B): the tail unit holds the embedding, so the root is gathered from the forward's
    start as in the layers-then-model layout, but never re-gathered."""
    spec = _spec("Qwen/Qwen2.5-0.5B")
    assert accelerate_units(spec).tied
    _, _, _, units = _terms(spec, method="lora")
    _, _, _, layers = _terms(spec, method="lora", fsdp_units="layers")
    assert units.sharded.root_regather == 0 < layers.sharded.root_regather
    assert units.sharded.forward_layer == layers.sharded.forward_layer
    assert units.sharded.tail_gather == 0
    assert len(forward_moments(units, persistent_terms(units))) == len(
        forward_moments(layers, persistent_terms(layers))
    )
