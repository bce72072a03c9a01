"""Every breakdown term says what backs it: the CPU tracker, CPU ranks, or first principles."""

from __future__ import annotations

from typing import Any

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan

LLAMA = "meta-llama/Llama-2-7b-hf"


def _evidence(**fields: Any) -> dict[str, str]:
    spec = load_spec(LLAMA)
    assert spec is not None
    return {t.term: t.evidence for t in estimate(spec, TrainingPlan(**fields)).breakdown}


def test_one_gpu_terms_are_measured_by_the_cpu_tracker_and_cuda_overheads_are_not() -> None:
    ev = _evidence(method="lora", optimizer="adamw")
    assert ev["base_weight_bytes"] == ev["activation_bytes"] == "measured-cpu"
    assert ev["cuda_context_bytes"] == ev["allocator_cache_bytes"] == ev["cublas_workspace_bytes"] == "first-principles"


@pytest.mark.parametrize("sharding", ["ddp", "fsdp", "fsdp_grad_op"])
def test_ddp_and_fsdp2_terms_are_measured_on_cpu_ranks(sharding: str) -> None:
    for method in ("full", "lora"):
        ev = _evidence(method=method, optimizer="adamw", sharding=sharding, gpus=4, seq_len=4096)
        assert ev["base_weight_bytes"] == "measured-cpu-ranks"
        assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator")))
    ev = _evidence(method="lora", optimizer="adamw", sharding=sharding, gpus=4, seq_len=4096)
    assert ev.get("ddp_bucket_bytes", ev.get("allgather_buffer_bytes")) == "measured-cpu-ranks"


@pytest.mark.parametrize(
    "fields",
    [
        {"sharding": "zero3", "gpus": 8, "offload": True, "dtype": "fp16"},  # ZeRO-3 offload: bf16, fp32 run
        {"sharding": "zero2", "gpus": 8, "offload": True, "method": "qlora", "dtype": "fp16"},
        {"sharding": "zero3", "gpus": 8, "optimizer": "adamw_8bit"},
        {"sharding": "zero2", "gpus": 8, "dtype": "fp16", "autocast": True},
        {"sharding": "none", "gpus": 2, "method": "qlora"},  # 16/32-bit splits are measured (test_layer_split.py)
        {"sharding": "none", "gpus": 2, "dtype": "fp16"},
    ],
)
def test_zero_offload_zero_plans_not_run_and_layer_splitting_are_first_principles(fields: dict[str, Any]) -> None:
    ev = _evidence(**{"method": "full", "optimizer": "adamw", **fields})
    assert ev["cuda_context_bytes"] == "first-principles"
    assert "measured-cpu-ranks" not in set(ev.values())


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"grad_accum_steps": 4},
        {"dtype": "fp32"},
        {"zero_buckets": "auto"},
        {"optimizer": "sgd"},
        {"optimizer": "adafactor"},
    ],
)
@pytest.mark.parametrize("sharding", ["zero2", "zero3"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_zero_terms_the_cpu_ranks_ran_are_measured(sharding: str, method: str, extra: dict[str, Any]) -> None:
    """calibration/cpu-matrix-zero*.toml: DeepSpeed engines, bf16 and fp32, torch AdamW, full and LoRA, with and
    without accumulation, at DeepSpeed's bucket sizes and the configs' auto."""
    ev = _evidence(**{"method": method, "optimizer": "adamw", "sharding": sharding, "gpus": 8, **extra})
    assert ev["master_weight_bytes"] == ev["base_weight_bytes"] == "measured-cpu-ranks"
    assert ev.get("optimizer_state_bytes", "measured-cpu-ranks") == "measured-cpu-ranks"  # SGD keeps none
    assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator")))
    assert ev["cuda_context_bytes"] == "first-principles"


@pytest.mark.parametrize(
    ("method", "dtype"),
    [(m, d) for m in ("full", "lora") for d in ("bf16", "fp16", "fp32")] + [("qlora", "bf16")],
)
def test_zero2_offload_terms_are_measured_on_cpu_ranks_by_placement(method: str, dtype: str) -> None:
    """calibration/cpu-matrix-zero-offload.toml and cpu-matrix-zero-offload2.toml (fp16, QLoRA): ZeRO-2's
    offload_optimizer, the host tensors counted by placement."""
    ev = _evidence(method=method, optimizer="adamw", sharding="zero2", gpus=8, offload=True, dtype=dtype)
    assert ev["base_weight_bytes"] == "measured-cpu-ranks"
    assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator")))
    assert ev["cuda_context_bytes"] == "first-principles"


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("sharding", ["fsdp", "fsdp_grad_op"])
def test_qlora_under_fsdp2_is_measured_on_cpu_ranks(sharding: str, offload: bool) -> None:
    """calibration/results/cpu-matrix-multi-qlora.store.jsonl: PEFT's FSDP+QLoRA recipe on CPU ranks, in bounds."""
    ev = _evidence(method="qlora", optimizer="adamw", sharding=sharding, gpus=8, offload=offload)
    assert ev["base_weight_bytes"] == ev["allgather_buffer_bytes"] == ev["activation_bytes"] == "measured-cpu-ranks"
    assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator")))
    assert ev["cuda_context_bytes"] == "first-principles"


@pytest.mark.parametrize("sharding", ["fsdp", "fsdp_grad_op"])
def test_fsdp2_offload_terms_are_measured_on_cpu_ranks_by_placement(sharding: str) -> None:
    ev = _evidence(method="full", optimizer="adamw", sharding=sharding, gpus=8, offload=True)
    assert ev["allgather_buffer_bytes"] == ev["activation_bytes"] == "measured-cpu-ranks"
    assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator")))


@pytest.mark.parametrize(
    "fields",
    [{"checkpoint_every": 2}, {"checkpoint_offload": True}, {"checkpoint_every": 2, "checkpoint_offload": True}],
)
def test_every_n_and_offloaded_checkpointing_are_measured_by_the_cpu_tracker(fields: dict[str, Any]) -> None:
    """calibration/cpu-matrix-trainer-every2.toml and cpu-matrix-trainer-offload.toml (by placement), shipped."""
    for method, seq_len in (("qlora", 4096), ("lora", 4096), ("full", 65536)):  # full: past its optimizer peak
        ev = _evidence(method=method, optimizer="adamw", seq_len=seq_len, **fields)
        assert ev["activation_bytes"] == "measured-cpu", (method, fields)
        assert ev.get("layer_transient_bytes", "measured-cpu") == "measured-cpu"


@pytest.mark.parametrize(
    "fields",
    [
        {"sharding": "ddp"},
        {"sharding": "fsdp"},
        {"sharding": "fsdp", "fsdp_version": 1},
        {"sharding": "fsdp_grad_op", "offload": True},
    ],
)
def test_accumulation_under_ddp_and_fsdp_is_measured_on_cpu_ranks(fields: dict[str, Any]) -> None:
    """calibration/cpu-matrix-multi-accum.toml: the Trainer's accumulation (no sync before a window's last
    micro-batch) on DDP, FSDP1 and FSDP2 ranks, the accumulated unsharded gradients counted."""
    ev = _evidence(method="full", optimizer="adamw", gpus=8, grad_accum_steps=4, **fields)
    assert ev["gradient_bytes"] == "measured-cpu-ranks"


@pytest.mark.parametrize("sharding", ["zero2", "zero3"])
def test_qlora_under_zero_is_measured_and_carries_no_probe_note(sharding: str) -> None:
    """calibration/cpu-matrix-zero-qlora.toml (ZeRO-2) and cpu-matrix-zero3-qlora.toml (ZeRO-3) run QLoRA under ZeRO:
    its terms carry CPU-rank evidence, and the margin note the ZeRO-3 probe once asked for is gone; with ZeRO-2's
    offload_optimizer too (cpu-matrix-zero-offload2.toml), not with ZeRO-3's offload (not run)."""
    model = load_spec(LLAMA)
    assert model is not None
    plan = TrainingPlan(method="qlora", optimizer="adamw", sharding=sharding, gpus=8)
    assert not any("QLoRA under DeepSpeed" in n for n in estimate(model, plan).notes)
    ev = _evidence(method="qlora", optimizer="adamw", sharding=sharding, gpus=8)
    assert ev["base_weight_bytes"] == ev["lora_adapter_bytes"] == ev["master_weight_bytes"] == "measured-cpu-ranks"
    offload = _evidence(method="qlora", optimizer="adamw", sharding=sharding, gpus=8, offload=True)
    assert offload["lora_adapter_bytes"] == ("measured-cpu-ranks" if sharding == "zero2" else "first-principles")
