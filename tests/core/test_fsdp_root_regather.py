"""FSDP2's root re-gathered at backward's start (reshard after forward on): its flat output beside its copy-out."""

from __future__ import annotations

from typing import Any

import pytest

from app.catalog import load_spec
from app.core.estimate import _prepared, backward_moments, persistent_terms
from app.core.plan import TrainingPlan
from app.core.sharding import root_param_bytes, root_regather_bytes
from app.core.spec import ModelSpec

LLAMA = "meta-llama/Llama-2-7b-hf"
# the layers-then-model units (accelerate <= 1.13): accelerate 1.14+'s tail is never resharded (test_fsdp2_units.py)
QLORA = {
    "method": "qlora",
    "optimizer": "adamw",
    "gpus": 2,
    "seq_len": 256,
    "gradient_checkpointing": False,
    "fsdp_units": "layers",
}


def _spec() -> ModelSpec:
    spec = load_spec(LLAMA)
    assert spec is not None
    return spec


def _terms(**fields: Any) -> Any:
    return _prepared(_spec(), TrainingPlan(**{**QLORA, **fields}))


def test_only_resharded_fsdp_on_several_gpus_regathers_the_root() -> None:
    _, _, tensors, _ = _terms(sharding="fsdp")
    inv = tensors.inventory
    root = root_param_bytes(inv)
    assert root > 0
    assert root_regather_bytes(inv, TrainingPlan(**{**QLORA, "sharding": "fsdp"})) == 2 * root
    for fields in ({"sharding": "fsdp_grad_op"}, {"sharding": "ddp"}, {"sharding": "fsdp", "gpus": 1}):
        assert root_regather_bytes(inv, TrainingPlan(**{**QLORA, **fields})) == 0, fields


def test_qlora_backward_under_fsdp_peaks_at_the_root_regather() -> None:
    """Under QLoRA the fp32 root outweighs a 4-bit layer: the backward's start (2R, every activation, the loss's
    saved log_softmax) is the backward's largest moment, above the loss's own (R + W_l beside 12·T·V)."""
    _, _, _, s = _terms(sharding="fsdp")
    held = persistent_terms(s)
    moments = backward_moments(s, held)
    start = max(moments, key=lambda m: sum(m.values()))
    assert start["allgather_buffer_bytes"] == s.sharded.root_regather
    assert start["activation_bytes"] == s.activations
    assert start["logits_peak_bytes"] == s.loss_saved == 256 * 32000 * 4


@pytest.mark.parametrize("sharding", ["fsdp_grad_op", "ddp"])
def test_no_regather_moment_without_reshard_after_forward(sharding: str) -> None:
    _, _, _, s = _terms(sharding=sharding)
    moments = backward_moments(s, persistent_terms(s))
    assert s.sharded.root_regather == 0
    assert all(m.get("logits_peak_bytes") != s.loss_saved for m in moments)
