"""The recipe terms: gradient accumulation, a loop that keeps the logits, reentrant checkpointing."""

from __future__ import annotations

import pytest

from app.core.activations import fused_cross_entropy_bytes
from app.core.adapters import lora_key
from app.core.estimate import estimate
from app.core.layer_walk import device_checkpoint_inputs
from app.core.plan import TrainingPlan
from app.core.result import Estimate
from app.core.tensors import base_key, plan_tensors
from tests.configs import spec


def _term(est: Estimate, name: str) -> int:
    term = est.term(name)
    return term.bytes if term is not None else 0


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_accumulation_keeps_every_gradient_from_the_second_micro_batch(method: str) -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    one = estimate(model, TrainingPlan(method=method, optimizer="adamw"))
    many = estimate(model, TrainingPlan(method=method, optimizer="adamw", grad_accum_steps=4))
    before = {p.name: p.bytes for p in one.phases}
    after = {p.name: p.bytes for p in many.phases}
    plan = many.plan
    every_gradient = plan_tensors(model, base_key(plan), lora_key(plan)).inventory.grads.total
    # forward of micro-batch 2 = the first's + every gradient; backward grows too; load and the step do not change
    assert after["forward"] - before["forward"] == every_gradient > 0
    assert after["backward"] > before["backward"]
    assert after["load"] == before["load"] and after["optimizer"] == before["optimizer"]
    # the count beyond 1 does not matter: gradients are summed in place
    assert estimate(model, TrainingPlan(method=method, optimizer="adamw", grad_accum_steps=64)).phases == many.phases


def test_kept_logits_are_the_logits_in_their_dtype_through_every_training_phase() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    for method, width in (("lora", 2), ("qlora", 4)):  # QLoRA's lm_head is fp32 after prepare_model_for_kbit
        plan = TrainingPlan(method=method, seq_len=512, batch_size=2)
        base, kept = estimate(model, plan), estimate(model, plan.model_copy(update={"keep_logits": True}))
        logits = 2 * 512 * model.arch.vocab_size * width
        assert _term(kept, "kept_logits_bytes") == logits
        before = {p.name: p.bytes for p in base.phases}
        after = {p.name: p.bytes for p in kept.phases}
        assert after["load"] == before["load"]
        assert all(after[n] == before[n] + logits for n in ("forward", "backward", "optimizer"))


def test_reentrant_needs_checkpointing_and_is_estimated_like_non_reentrant() -> None:
    """Measured on the CPU tracker (cpu-matrix-trainer): reentrant checkpointing's peak is the non-reentrant model's
    within the bounds, so one model serves both; the field is kept so that recipes say what they run."""
    with pytest.raises(ValueError, match="turn gradient_checkpointing on"):
        TrainingPlan(reentrant=True, gradient_checkpointing=False)
    model = spec("meta-llama/Llama-2-7b-hf")
    a, b = estimate(model, TrainingPlan()), estimate(model, TrainingPlan(reentrant=True))
    assert a.peak_allocated_bytes == b.peak_allocated_bytes


def test_checkpoint_every_keeps_the_unchecked_layers_saved_sets() -> None:
    """every_n_layers n: ⌈L/n⌉ layers keep their input, the rest their whole saved set; n=1 is every layer and
    n >= L leaves only layer 0 checkpointed (measured within 0.2 % on the CPU tracker, full/LoRA/QLoRA)."""
    model = spec("meta-llama/Llama-2-7b-hf")  # 32 layers
    acts = {n: _term(estimate(model, TrainingPlan(checkpoint_every=n)), "activation_bytes") for n in (1, 2, 4, 32)}
    assert acts[1] < acts[2] < acts[4] < acts[32]
    full = _term(estimate(model, TrainingPlan(gradient_checkpointing=False)), "activation_bytes")
    assert acts[32] < full  # layer 0 is still checkpointed
    with pytest.raises(ValueError, match="turn gradient_checkpointing on"):
        TrainingPlan(checkpoint_every=2, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="every-layer"):
        TrainingPlan(checkpoint_every=2, checkpointing="sqrt-n")


def test_checkpoint_offload_moves_the_checkpointed_inputs_to_host_memory_measured_by_placement() -> None:
    """save_on_cpu packs every checkpointed input into a host copy; the device keeps layer 0's (held by the forward
    and, with a frozen embedding, by its leaf's AccumulateGrad) and the running layer's (forward) or its copy back
    (backward): 2 inputs with LoRA, at layer 0's backward 1 with full fine-tuning (the tracker, by placement)."""
    with pytest.raises(ValueError, match="turn gradient_checkpointing on"):
        TrainingPlan(checkpoint_offload=True, gradient_checkpointing=False)
    model = spec("meta-llama/Llama-2-7b-hf")
    layer_input = 4096 * model.arch.hidden_size * 2  # one bf16 hidden state
    layers = model.arch.num_layers
    plan = TrainingPlan(method="lora", seq_len=4096)
    kept, offloaded = estimate(model, plan), estimate(model, plan.model_copy(update={"checkpoint_offload": True}))
    assert _term(kept, "activation_bytes") - _term(offloaded, "activation_bytes") == (layers - 2) * layer_input
    assert offloaded.offloaded_bytes == layers * layer_input and kept.offloaded_bytes == 0  # every input packed
    assert any("pinned host RAM (checkpoint_offload; measured on CPU by placement" in n for n in offloaded.notes)
    term = offloaded.term("activation_bytes")
    assert term is not None and term.evidence == "measured-cpu"
    assert offloaded.peak_allocated_bytes < kept.peak_allocated_bytes
    full = TrainingPlan(method="full", checkpoint_offload=True)  # its embedding output is no leaf: 1 at the end
    assert device_checkpoint_inputs(full, layers) == (2, 1) and device_checkpoint_inputs(plan, layers) == (layers, 1)
    assert device_checkpoint_inputs(offloaded.plan, layers) == (2, 2)


def test_fused_cross_entropy_holds_one_chunk_of_logits_and_grad_input() -> None:
    """Liger's chunk rule by hand for Llama 3.1 8B at T = 8192: ⌈128256/4096⌉ = 32, ⌈8192/32⌉ = 256 rows."""
    model = spec("meta-llama/Llama-3.1-8B")
    plan = TrainingPlan(method="lora", seq_len=8192, fused_cross_entropy=True, keep_logits=True)
    est = estimate(model, plan)
    t, v, h = 8192, model.arch.vocab_size, model.arch.hidden_size
    assert (v, h) == (128256, 4096)
    forward = t * h * 2 + t * 4 + t + 256 * (v + h) * 2
    assert fused_cross_entropy_bytes(model, plan) == (forward, t * h * 2)
    assert {p.name: p.bytes for p in est.phases}["forward"] >= forward
    # full fine-tuning adds lm_head's weight gradient, made in the forward
    full = plan.model_copy(update={"method": "full", "optimizer": "adamw", "quant": "none"})
    assert fused_cross_entropy_bytes(model, full)[0] == forward + v * h * 2
    assert _term(est, "kept_logits_bytes") == 0  # the fused loss returns no logits
    plain = estimate(model, plan.model_copy(update={"fused_cross_entropy": False, "keep_logits": False}))
    assert est.peak_allocated_bytes < plain.peak_allocated_bytes - 8 * t * v  # the whole-sequence logits are gone
    term = est.term("logits_peak_bytes")
    assert term is None or term.evidence == "first-principles"


def test_packed_rows_make_every_sdpa_layer_keep_a_mask_and_flash_attention_none() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    base = TrainingPlan(method="lora", gradient_checkpointing=False, seq_len=1024, batch_size=2)
    square = 2 * 1024 * 1024
    for attn, extra in (("sdpa", square + model.arch.num_layers * square * 2), ("flash_attention_2", 0)):
        plain = estimate(model, base.model_copy(update={"attn": attn}))
        packed = estimate(model, base.model_copy(update={"attn": attn, "packing": True}))
        # sdpa: the bool block mask once and, per layer, torch's bf16 additive mask (Llama 2 7B has no grouped KV)
        assert _term(packed, "activation_bytes") - _term(plain, "activation_bytes") == extra, attn
    term = estimate(model, base.model_copy(update={"packing": True})).term("activation_bytes")
    assert term is not None and term.evidence == "first-principles"


def test_checkpoint_every_treats_each_layer_kind_by_its_own_layers() -> None:
    """Llama 4 Maverick interleaves dense and MoE layers (MoE at 1, 3, …): every_n_layers=2 checkpoints only the
    dense ones, so the MoE layers keep their own (larger) saved sets and are never recomputed; DeepSeek-V3's dense
    layers 0-2 come first."""
    from app.core.activations import checkpointed_by_kind, kind_layers, layer_stack

    for model_id, dense, moe in (
        ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", tuple(range(0, 48, 2)), tuple(range(1, 48, 2))),
        ("deepseek-ai/DeepSeek-V3", (0, 1, 2), tuple(range(3, 61))),
    ):
        model = spec(model_id)
        plan = TrainingPlan(method="lora", checkpoint_every=2, seq_len=512, targets="o_proj")
        tensors = plan_tensors(model, base_key(plan), lora_key(plan))
        stack = layer_stack(model, plan, tensors.by_leaf)
        assert kind_layers(stack) == (dense, moe), model_id
        checked = checkpointed_by_kind(stack, plan)
        assert checked == (sum(1 for i in dense if i % 2 == 0), sum(1 for i in moe if i % 2 == 0)), model_id
    # Maverick: no MoE layer is checkpointed; with every layer checkpointed the MoE kind's recompute counts again
    maverick = spec("meta-llama/Llama-4-Maverick-17B-128E-Instruct")
    lora = TrainingPlan(method="lora", seq_len=512, targets="o_proj")
    every2 = estimate(maverick, lora.model_copy(update={"checkpoint_every": 2}))
    assert every2.peak_allocated_bytes > estimate(maverick, lora).peak_allocated_bytes
