"""ZeRO-2's load at the flattening (app/core/zero.py `flatten_originals_bytes`, `flatten_peak`): on a device with room
for the flat buffer the load holds the trainable parameters twice, which outgrows the step from fp32 on 3 ranks; it
is what max_memory_allocated reads (and the CPU ranks measure: calibration/cpu-matrix-zero-flatten.toml), never what
the fit verdicts judge, since a device without the room flattens through host memory."""

from __future__ import annotations

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import recommend
from app.core.plan import TrainingPlan
from app.core.quant import rounded
from tests.core.test_zero import tiny

FULL = {"method": "full", "sharding": "zero2", "zero_buckets": "auto", "device": "cpu", "seq_len": 64}


def test_the_load_holds_the_originals_beside_the_flat_buffer_where_it_outgrows_the_step() -> None:
    model = tiny()
    est = estimate(model, TrainingPlan(**FULL, dtype="fp32", optimizer="sgd", gpus=6))
    originals = sum(rounded(4 * p.numel) for g in model.groups for _ in range(g.count) for p in g.params)
    flat = est.term("base_weight_bytes")
    assert flat is not None and est.flatten_peak_bytes == flat.bytes + originals
    assert est.flatten_peak_bytes > est.peak_allocated_bytes
    assert est.room_peak_bytes == est.flatten_peak_bytes
    assert any("flat buffer" in note for note in est.notes)


def test_below_the_step_it_is_not_reported() -> None:
    for plan in (
        TrainingPlan(**FULL, dtype="fp32", optimizer="sgd", gpus=2),  # the states' halves outweigh it
        TrainingPlan(**FULL, dtype="bf16", optimizer="adamw", gpus=8),  # AdamW's states: the step still peaks
        TrainingPlan(**{**FULL, "sharding": "zero3"}, dtype="fp32", optimizer="sgd", gpus=6),  # ZeRO-3 partitions
        TrainingPlan(**FULL, dtype="fp32", optimizer="sgd", gpus=6, offload=True),  # its init counts the moment
    ):
        est = estimate(tiny(), plan)
        assert est.flatten_peak_bytes is None and est.room_peak_bytes == est.peak_allocated_bytes, plan
        assert not any("flat buffer" in note for note in est.notes)


def test_the_fit_verdicts_judge_the_steps_peak() -> None:
    """Llama-2-7B, bf16 full fine-tuning on 32 GPUs: the load's flattening (the 6.7 B parameters twice, 25 GiB) is
    above the step (18.6 GiB on the device); every tier is judged on the step's device bytes, so the 22.5 and 24 GB
    tiers between the two fit (their DeepSpeed flattens through host memory)."""
    model = load_spec("meta-llama/Llama-2-7b-hf")
    assert model is not None
    plan = TrainingPlan(method="full", sharding="zero2", gpus=32, seq_len=2048, gradient_checkpointing=True)
    est = estimate(model, plan)
    assert est.flatten_peak_bytes is not None and est.flatten_peak_bytes > est.device_bytes
    rec = recommend(model, est)
    assert all(fit.judged_bytes == est.device_bytes for fit in rec.tiers)
    assert any(fit.fits and fit.usable_bytes < est.flatten_peak_bytes for fit in rec.tiers)
