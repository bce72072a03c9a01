"""Real gloo ranks under accelerate's `mixed_precision: bf16` over FSDP1's MixedPrecision: a world-size-2 cut of
calibration/cpu-matrix-multi-mp-autocast.toml.

The rank wraps the model's forward in torch.autocast("cpu", bfloat16) and convert_outputs_to_fp32 as accelerate's
prepare_model does, then FSDP1 with MixedPrecision over fp32 weights; LoRA runs there only under that autocast (without
it PEFT's forward fails: the harness refuses it). estimate() for the same plan must hold the worst rank within ±5 %.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.calibration.compare import compare_to, spec_for
from app.calibration.distributed import autocast_forward, check_distributed_plan, run_distributed
from app.calibration.matrix import load_spec
from app.core.plan import TrainingPlan
from app.errors import CalibrationError
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = load_spec(ROOT / "calibration" / "cpu-matrix-multi-mp-autocast.toml").families
LORA = {
    "device": "cpu",
    "optimizer": "adamw",
    "dtype": "bf16",
    "gpus": 2,
    "seq_len": 64,
    "method": "lora",
    "rank": 8,
    "sharding": "fsdp",
    "fsdp_version": 1,
    "fsdp_mixed_precision": True,
    "autocast": True,
}


def test_lora_under_fsdp1_mixed_precision_runs_under_autocast_within_5_percent(
    request: pytest.FixtureRequest, machine: MachineProbe
) -> None:
    config = {**FAMILIES["llama"].config, "num_hidden_layers": 2}
    plan = TrainingPlan(**LORA)
    started = time.perf_counter()
    measurement = run_distributed(config, plan, steps=2, fp32_matmuls=machine.fp32_matmuls, timeout_s=240)
    comparison, _ = compare_to(measurement, spec_for(measurement, "llama"))
    report(
        request.config,
        f"FSDP1 MixedPrecision + autocast llama lora x2: error {comparison.error_pct:+.2f} % "
        f"in {time.perf_counter() - started:.0f} s",
    )
    assert abs(comparison.error_pct) <= 5.0
    assert measurement.peak_allocated_bytes == max(r.peak_allocated_bytes for r in measurement.ranks)


def test_the_harness_refuses_what_the_stack_cannot_run() -> None:
    with pytest.raises(CalibrationError, match="or autocast"):
        check_distributed_plan(TrainingPlan(**{**LORA, "autocast": False}))
    grad_op = {**LORA, "sharding": "fsdp_grad_op", "gradient_checkpointing": True, "dropout": 0.05}
    with pytest.raises(CalibrationError, match="CheckpointError"):
        check_distributed_plan(TrainingPlan(**grad_op))
    check_distributed_plan(TrainingPlan(**{**grad_op, "dropout": 0.0}))


def test_the_forward_runs_under_autocast_and_returns_fp32_as_accelerate_wraps_it() -> None:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.linear(x)
            return {"inner": out, "dtype_was_bf16": torch.tensor(out.dtype == torch.bfloat16)}

    model = Tiny()
    autocast_forward(model, TrainingPlan(**LORA))
    out = model(torch.ones(2, 8))
    assert bool(out["dtype_was_bf16"]) and out["inner"].dtype == torch.float32  # convert_outputs_to_fp32
    assert model._original_forward is not None
