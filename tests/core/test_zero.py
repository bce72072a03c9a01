"""DeepSpeed ZeRO-2/3 per GPU (app/core/zero.py): its formulas, and the estimate against CPU-rank measurements."""

from __future__ import annotations

from typing import Any

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.zero import REDUCE_BUCKET_ELEMENTS, zero2_partition, zero_terms
from app.inventory.cache import cached_spec

# calibration/cpu-matrix-zero.toml's llama: 4,212,992 parameters, untied
LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 2048,
}
PROBE = {"quant": "none", "dtype": "bf16", "device": "cpu", "gpus": 2, "seq_len": 64, "optimizer": "adamw"}
PROBE |= {"gradient_checkpointing": False, "rank": 16, "targets": "all-linear", "dropout": 0.0}


def tiny() -> ModelSpec:
    return cached_spec(LLAMA, model_id="llama", source="file", cache_dir=None)


def test_zero2_partitions_the_flat_buffer_padded_to_twice_the_world() -> None:
    assert zero2_partition(4_212_992, 2) == 2_106_496
    assert zero2_partition(5, 2) == 4  # 5 elements padded to 8 = 2 x 2 x 2, then split in 2
    assert zero2_partition(9, 4) == 4  # padded to 16


@pytest.mark.parametrize(("dtype", "bucket"), [("bf16", 1_000_000_000), ("fp32", 2_000_000_000)])
def test_the_gradient_bucket_is_deepspeeds_default_whatever_the_model(dtype: str, bucket: int) -> None:
    for sharding in ("zero2", "zero3"):
        plan = TrainingPlan(**{**PROBE, "method": "full", "dtype": dtype, "sharding": sharding})
        terms = zero_terms(tiny(), plan, ())
        assert terms is not None and terms.bucket == bucket == REDUCE_BUCKET_ELEMENTS * (2 if dtype == "bf16" else 4)


def test_zero3_keeps_the_bucket_from_the_load_on_and_zero2_only_in_backward() -> None:
    for sharding, at_load in (("zero2", False), ("zero3", True)):
        est = estimate(tiny(), TrainingPlan(**{**PROBE, "method": "full", "sharding": sharding}))
        load = next(p.bytes for p in est.phases if p.name == "load")
        assert (load > 1_000_000_000) is at_load, sharding
        assert est.peak_phase == "backward"


# Measured on 2 CPU ranks (DeepSpeed 0.19.8, torch 2.13; the worst rank's peak; tracker dumps of each phase's
# storages by allocation site): the probe runs the core's ZeRO moments were read from, seq 64, no checkpointing.
MEASURED = [
    ("zero2", "full", {"load": 25_278_976, "forward": 38_153_216, "backward": 1_042_134_016}),
    ("zero2", "lora", {"load": 10_300_928, "forward": 15_070_208, "backward": 1_013_867_520}),
    ("zero3", "full", {"load": 1_017_902_592, "forward": 1_051_723_776, "backward": 1_053_711_360}),
]


@pytest.mark.parametrize(("sharding", "method", "phases"), MEASURED)
def test_each_phase_of_the_probe_runs_within_half_a_percent_net_of_the_bucket(
    sharding: str, method: str, phases: dict[str, int]
) -> None:
    """Net of the 1e9-byte bucket, so the bucket cannot hide the rest: every phase within 0.5 %."""
    est = estimate(tiny(), TrainingPlan(**{**PROBE, "method": method, "sharding": sharding}))
    bucket = 1_000_000_000
    for phase in est.phases:
        if phase.name not in phases:
            continue
        measured = phases[phase.name]
        net = measured - bucket if measured > bucket else measured
        assert abs(phase.bytes - measured) <= 0.005 * net, (phase.name, phase.bytes, measured)


def test_deepspeed_casts_lora_adapters_to_bf16_so_zero2_keeps_them_at_half_peft_fp32_bytes() -> None:
    lora: dict[str, Any] = {**PROBE, "method": "lora"}
    one = {t.term: t.bytes for t in estimate(tiny(), TrainingPlan(**{**lora, "gpus": 1})).breakdown}
    zero = {t.term: t.bytes for t in estimate(tiny(), TrainingPlan(**{**lora, "sharding": "zero2"})).breakdown}
    assert zero["lora_adapter_bytes"] * 2 == pytest.approx(one["lora_adapter_bytes"], rel=0.01)


def test_plans_zero_py_does_not_model_keep_the_first_principles_terms() -> None:
    for fields in (
        {"offload": True, "method": "qlora", "quant": "nf4"},
        {"method": "qlora", "quant": "nf4"},
        {"autocast": True},
    ):
        plan = TrainingPlan(**{**PROBE, "method": "full", "sharding": "zero3", "device": "cuda", **fields})
        assert zero_terms(tiny(), plan, ()) is None


def test_zero3_per_gpu_bytes_fall_as_gpus_are_added() -> None:
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    peaks = [
        estimate(spec, TrainingPlan(method="full", optimizer="adamw", sharding="zero3", gpus=n)).peak_allocated_bytes
        for n in (2, 4, 8, 16)
    ]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4


def test_a_7b_zero3_forward_keeps_only_the_reuse_window_gathered() -> None:
    """stage3_max_reuse_distance (1e9 elements): the last 5e8 elements stay gathered, not the whole 6.7e9."""
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    plan = TrainingPlan(method="full", optimizer="adamw", sharding="zero3", gpus=8)
    terms = zero_terms(spec, plan, ())
    assert terms is not None
    assert terms.gathered == 1_000_000_000  # 5e8 bf16 elements
    assert terms.prefetch == rounded(100_000_000)  # stage3_prefetch_bucket_size 5e7 elements
