"""Measured step times: the harness records them, records carry them with the time model, the store keeps them."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.calibration.compare import compare, spec_for, to_record
from app.calibration.harness import run_measurement
from app.calibration.measurement import Measurement, median_step_s
from app.calibration.timing import record_timing
from app.core.plan import TrainingPlan
from app.core.throughput import step_time, token_flops
from app.core.tiers import find_tier
from app.http.timing import timed_run
from app.store import Store
from app.store.models import run_fingerprint
from tests.calibration.test_harness import TINY, cpu_plan

FINGERPRINTED = {
    *("created_at", "model_id", "model_type", "device", "device_name", "layers", "plan", "config"),
    *("measured_peak_bytes", "measured_reserved_bytes", "phases", "env"),
}  # what identified a run before step times were recorded
H200_BYTES = 150_754_820_096  # total memory torch reports on an H200 (143,771 MiB)


@pytest.fixture(scope="module")
def measured() -> Measurement:
    """A real CPU harness run of three steps, two micro-batches each."""
    return run_measurement(TINY, cpu_plan(method="lora", batch_size=2, grad_accum_steps=2), steps=3)


def test_the_harness_records_every_step_time(measured: Measurement) -> None:
    times = measured.step_times_s
    assert len(times) == 3 and all(t > 0 for t in times)
    assert measured.step_s is not None and measured.step_s > 0
    assert measured.step_s == statistics.median(times[1:])  # the first step pays for warm-up
    assert measured.tokens_per_step == 2 * 32 * 2  # batch x seq x accumulation
    assert measured.tokens_per_s == pytest.approx(128 / measured.step_s)
    # the steps are timed inside the run: together they are less than its whole wall time
    assert sum(times) < measured.duration_s


def test_the_trainer_loop_is_timed_by_the_same_probe() -> None:
    run = run_measurement(TINY, cpu_plan(method="lora"), steps=3, loop="trainer")
    assert len(run.step_times_s) == 3 and all(t > 0 for t in run.step_times_s)
    assert run.step_s == statistics.median(run.step_times_s[1:]) and run.tokens_per_step == 32


def test_the_step_time_is_the_median_after_the_first() -> None:
    assert median_step_s([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert median_step_s([4.0]) == 4.0
    assert median_step_s([]) is None


def test_measurements_written_before_step_times_still_load(measured: Measurement) -> None:
    old = json.loads(measured.model_dump_json())
    for key in ("step_times_s", "step_s", "tokens_per_step"):
        del old[key]
    loaded = Measurement.model_validate(old)
    assert (loaded.step_times_s, loaded.step_s, loaded.tokens_per_step, loaded.tokens_per_s) == ((), None, None, None)


def on_h200(measured: Measurement, step_s: float, name: str = "NVIDIA H200", memory: int = H200_BYTES) -> Measurement:
    """The run as if measured on an H200 (device, plan and environment relabelled), with an explicit step time."""
    plan: dict[str, Any] = {**measured.plan, "device": "cuda"}
    env = measured.env.model_copy(update={"device_name": name, "total_memory_bytes": memory})
    return measured.model_copy(
        update={"device": "cuda", "plan": plan, "env": env, "step_s": step_s, "step_times_s": (step_s, step_s)}
    )


def test_a_record_carries_the_time_model_of_its_own_plan_on_its_tier(measured: Measurement) -> None:
    spec = spec_for(measured, "llama")
    plan = TrainingPlan.model_validate({**measured.plan, "device": "cuda"})
    h200 = find_tier("H200")
    assert h200 is not None
    flops = token_flops(spec, plan).total * 128
    peak = 989.4e12  # H200 dense BF16 (NVIDIA datasheet: 1,979 TFLOPS with sparsity)
    step_s = flops / (0.25 * peak)  # a run at exactly 25 % MFU
    run = on_h200(measured, step_s)
    record = to_record(run, compare(run, "llama"), model_id="llama", source="test")

    timing = record.timing
    assert timing is not None and timing.gpu == "H200"
    model = step_time(spec, plan, h200, 1)
    assert model is not None
    assert timing.estimated_step_s == pytest.approx(128 / model.tokens_per_s)  # 2 micro-batches of the model's step
    assert timing.estimated_step_s == pytest.approx(2 * model.step_s)
    assert (timing.flops_per_step, timing.peak_flops) == (pytest.approx(flops), peak)
    timed = timed_run(record)
    assert timed is not None
    assert timed.mfu == pytest.approx(0.25)
    assert timed.error == pytest.approx((2 * model.step_s - step_s) / step_s)
    assert (timed.seq_len, timed.hidden_size, timed.checkpointing) == (32, TINY["hidden_size"], True)


@pytest.mark.parametrize(
    ("name", "memory"), [("AMD Radeon Graphics", H200_BYTES), ("NVIDIA H200", 80 * 2**30), ("NVIDIA H100 PCIe", None)]
)
def test_a_device_that_is_no_tier_keeps_its_times_without_a_model(
    measured: Measurement, name: str, memory: int | None
) -> None:
    run = on_h200(measured, 0.5, name, memory or H200_BYTES)
    if memory is None:
        run = run.model_copy(update={"env": run.env.model_copy(update={"total_memory_bytes": None})})
    record = to_record(run, compare(run, "llama"), model_id="llama", source="test")
    assert record.timing is not None and record.timing.step_s == 0.5
    assert (record.timing.gpu, record.timing.estimated_step_s) == (None, None)
    assert timed_run(record) is None


def test_cpu_records_carry_their_times_but_no_tier(measured: Measurement) -> None:
    record = to_record(measured, compare(measured, "llama"), model_id="llama", source="test")
    assert record.timing is not None and record.timing.step_s == measured.step_s
    assert record.timing.step_times_s == list(measured.step_times_s)
    assert record.timing.gpu is None


def test_the_store_keeps_step_times_and_finds_them_by_method(measured: Measurement, tmp_path: Path) -> None:
    run = on_h200(measured, 0.2)
    record = to_record(run, compare(run, "llama"), model_id="llama", source="test").model_copy(
        update={"verified": True}
    )
    untimed = record.model_copy(update={"timing": None, "created_at": record.created_at.replace(year=2024)})
    with Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}") as store:
        store.add_many([record, untimed])
        assert store.timed_runs("full") == []
        (found,) = store.timed_runs("lora")
        again = store.timed_runs("lora", cached_only=True)  # kept: no second query
    assert found.timing == record.timing and again == [found]
    # the measured times are part of the run's identity; a run without them keeps its old fingerprint
    assert record.fingerprint() != record.model_copy(update={"timing": None}).fingerprint()
    identity = {
        **json.loads(untimed.model_dump_json(include=FINGERPRINTED)),
        "created_at": untimed.created_at.isoformat(),
    }
    assert untimed.fingerprint() == run_fingerprint(identity)


def test_re_estimating_recomputes_the_model_and_keeps_the_measured_times(measured: Measurement) -> None:
    run = on_h200(measured, 0.3)
    record = to_record(run, compare(run, "llama"), model_id="llama", source="test")
    assert record.timing is not None
    stale = record.model_copy(update={"timing": record.timing.model_copy(update={"estimated_step_s": 99.0})})
    fresh = record_timing(stale, spec_for(run, "llama"))
    assert fresh is not None
    assert fresh.estimated_step_s == pytest.approx(record.timing.estimated_step_s or math.nan)
    assert (fresh.step_s, fresh.step_times_s) == (0.3, [0.3, 0.3])


TINY_SPEC = """
points = 1
holdout = 0.5
steps = 2

[defaults]
device = "cpu"
optimizer = "adamw"
dtype = "bf16"

[axes]
method = ["lora"]
seq_len = [32]
batch_size = [1]
rank = [8]

[families.llama]
config = { model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4, vocab_size = 128 }
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_gpu_script_records_step_times_run_on_the_cpu(tmp_path: Path) -> None:
    """calibration/gpu.sh as the lent GPU runs it, on the CPU: every report line carries the measured times."""
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(TINY_SPEC)
    out.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(out), "SPEC": str(spec), "DEVICE": "cpu", "LIMIT": "1", "PYTHON": sys.executable}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        ["bash", "calibration/gpu.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=230
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (line,) = (out / "gpu-h200.jsonl").read_text().splitlines()
    run = Measurement.model_validate(json.loads(line)["measurement"])
    assert len(run.step_times_s) == 2 and run.step_s is not None and run.step_s > 0
    assert run.step_s == run.step_times_s[1] and run.tokens_per_step == 32
