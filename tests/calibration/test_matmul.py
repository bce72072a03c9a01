"""fp32 compute for 16-bit CPU matmuls: same outputs as the native kernels, and the same measured bytes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from app.calibration.budget import covering_core, point_work
from app.calibration.harness import run_measurement
from app.calibration.matmul import fp32_compute_matmuls, slow_16bit_matmuls
from app.calibration.matrix import Point, expand, load_spec
from tests.calibration.conftest import MachineProbe, report

SPEC = Path(__file__).resolve().parents[2] / "calibration" / "cpu-matrix.toml"


def _ops(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(48, 32, generator=g).to(dtype), torch.randn(32, 16, generator=g).to(dtype)
    bias = torch.randn(16, generator=g).to(dtype)
    x, y = torch.randn(3, 48, 32, generator=g).to(dtype), torch.randn(3, 32, 8, generator=g).to(dtype)
    z = torch.randn(3, 48, 8, generator=g).to(dtype)
    return [
        a @ b,
        torch.addmm(bias, a, b, beta=0.5, alpha=2.0),
        torch.bmm(x, y),
        torch.baddbmm(z, x, y, beta=0.25),
        torch.nn.functional.linear(x, b.t(), bias),
        a.t() @ a,  # a transposed (non-contiguous) input
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_outputs_match_the_native_kernels_in_dtype_shape_and_layout(dtype: torch.dtype) -> None:
    native = _ops(dtype)
    with fp32_compute_matmuls():
        ours = _ops(dtype)
    for want, got in zip(native, ours, strict=True):
        assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride())
        assert got.untyped_storage().nbytes() == want.untyped_storage().nbytes()
        tolerance = 0.0 if dtype == torch.float32 else 2**-6 * float(want.abs().max())
        assert float((got.float() - want.float()).abs().max()) <= tolerance


def test_gradients_flow_through_the_override_and_the_native_kernel_comes_back() -> None:
    weight = torch.randn(16, 32, dtype=torch.bfloat16, requires_grad=True)
    inputs = torch.randn(4, 10, 32, dtype=torch.bfloat16)
    with fp32_compute_matmuls():
        assert "app/calibration/matmul.py" in torch._C._dispatch_dump("aten::mm")
        torch.nn.functional.linear(inputs, weight).float().square().sum().backward()
    ours = weight.grad
    weight.grad = None
    torch.nn.functional.linear(inputs, weight).float().square().sum().backward()
    assert ours is not None and weight.grad is not None
    assert ours.dtype == torch.bfloat16 and ours.shape == weight.shape
    assert torch.allclose(ours.float(), weight.grad.float(), rtol=2e-2, atol=1e-2)
    kernel = torch._C._dispatch_dump("aten::mm")
    assert "registered at" in kernel and "app/calibration/matmul.py" not in kernel


def test_disabled_is_a_no_op() -> None:
    with fp32_compute_matmuls(enabled=False):
        assert "matmul.py" not in torch._C._dispatch_dump("aten::mm")


def test_the_probe_times_both_dtypes() -> None:
    slow, bf16, fp32 = slow_16bit_matmuls(n=64)
    assert bf16 > 0 and fp32 > 0
    assert slow == (bf16 > 4.0 * fp32)


@functools.cache
def _both_ways_points() -> list[Point]:
    """The cheapest dense covering-core point of each method, and the cheapest adapted MoE point."""
    core = covering_core(expand(load_spec(SPEC))[:48])
    dense = [p for p in core if p.family != "mixtral"]
    picks = [min((p for p in dense if p.plan.method == m), key=point_work) for m in ("qlora", "lora", "full")]
    moe = [p for p in core if p.family == "mixtral" and p.plan.method != "full"]
    return [*picks, min(moe, key=point_work)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("index", range(4))
def test_native_bf16_and_fp32_compute_measure_identical_bytes(
    index: int, machine: MachineProbe, request: pytest.FixtureRequest
) -> None:
    point = _both_ways_points()[index]
    native = run_measurement(point.config, point.plan, steps=2)
    ours = run_measurement(point.config, point.plan, steps=2, fp32_matmuls=True)
    report(
        request.config,
        f"  both ways {point.id}: native bf16 {native.duration_s:.1f} s, fp32 compute {ours.duration_s:.1f} s, "
        f"peak {native.peak_allocated_bytes:,} B both" * (native.phases == ours.phases),
    )
    assert ours.env.matmul_compute == "fp32" and native.env.matmul_compute == "native"
    assert ours.phases == native.phases
    assert ours.peak_allocated_bytes == native.peak_allocated_bytes


@pytest.mark.slow
def test_the_cli_measures_the_same_bytes_with_either_matmul_mode(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.configs import TINY_LLAMA

    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY_LLAMA, "vocab_size": 128}))
    runs = {}
    for mode in ("native", "fp32"):
        argv = [sys.executable, "-m", "app.cli", "calibrate", str(config), "--device", "cpu", "--optimizer", "adamw"]
        argv += ["--seq-len", "32", "--method", "lora", "--matmuls", mode, "--no-store", "--json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stderr
        runs[mode] = json.loads(done.stdout)
    assert runs["fp32"]["env"]["matmul_compute"] == "fp32" and runs["native"]["env"]["matmul_compute"] == "native"
    assert runs["fp32"]["measured_peak_bytes"] == runs["native"]["measured_peak_bytes"] > 0
    assert runs["fp32"]["phases"] == runs["native"]["phases"]
