"""docs/accuracy-multi.md from the shipped multi-rank runs: `python -m app.calibration.multi_report [--write PATH]`.

Every shipped run of calibration/cpu-matrix-multi.toml and cpu-validation-multi.toml is re-estimated now and
reported by split: the matrix's tune points (in-sample), its holdout points (split by hash; the few looked at
while the terms were fitted are named), and the validation matrix (measured once, after the terms were fixed).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from app.calibration.report import _stats_line, accuracy_markdown
from app.store.models import AccuracyStats, MeasurementRecord
from app.store.seed import BUNDLED_RESULTS

SOURCES = ("cpu-matrix-multi", "cpu-validation-multi")
# holdout points of cpu-matrix-multi whose phases were looked at while app/core/sharding.py was fitted (the first
# four measured, and the LoRA DDP point that showed the start-up broadcast of adapters): in-sample in effect
SEEN_WHILE_FITTING = frozenset(
    {"llama-a872c4fb", "mistral-8defd24c", "mixtral-caa4d5dd", "llama-105f4663", "llama-b2811673"}
)
TITLE = "gpuplan accuracy: multi-GPU (DDP, FSDP2) measured on torch.distributed CPU ranks"
INTRO = """Every row is a real training step (2 optimizer steps) on N torch.distributed CPU ranks over gloo on one
machine (`app/calibration/distributed.py`: spawned processes, loopback, a bounded time that kills every rank),
each rank running the same plan under its own live-tensor tracker. The measured peak is the **worst rank's**
(the rank peaks column lists every rank's), held against `estimate()` for the same config and plan (gpus = N),
which gives the per-GPU peak. DDP is `DistributedDataParallel` with torch's defaults; fsdp is FSDP2
`fully_shard` on every decoder layer and on the root, as accelerate wraps it, resharding after forward;
fsdp_grad_op the same with `reshard_after_forward=False`. Parameters stay in the plan dtype (no
MixedPrecisionPolicy). Error = (estimated - measured) / measured."""
NOT_MEASURED = """## Not measured here, and why

- **CPU offload** (`--offload`, FSDP2 `CPUOffloadPolicy`): FSDP2 runs it on CPU ranks, but on a CPU-only
  machine the offloaded shards, their gradients and the optimizer states are CPU tensors exactly like the
  "device" copies the gathers make, so the live-tensor tracker cannot tell host RAM from device memory by
  placement. The only attribution would be by hand (naming each storage), which no run could check, so the
  harness refuses offload and it is excluded from the bounds: its per-GPU terms (`resident_bytes` with offload)
  stay first-principles.
- **ZeRO-2/3 (DeepSpeed)**: tried with DeepSpeed 0.19.8 (pip, then uninstalled: it is no dependency): its CPU
  accelerator picks gloo, and once it has JIT-built its `deepspeed_shm_comm` op (about 8 minutes of g++ on the
  shared 2-core machine) a tiny llama's ZeRO-2 and ZeRO-3 steps (`deepspeed.initialize`, bf16, torch AdamW with
  `zero_allow_untested_optimizer`) ran on 2 CPU ranks. The harness does not drive a DeepSpeed engine yet (its step
  is `engine.backward` / `engine.step`), so no ZeRO point is measured: `master_weight_bytes`,
  ZeRO-2's sharded states and `zero3_gathered_bytes` stay first-principles, and `gpuplan calibrate --sharding
  zero2|zero3` says so.
- **QLoRA under FSDP**: PEFT's FSDP+QLoRA recipe needs `bnb_4bit_quant_storage` equal to the compute dtype so
  FSDP can flatten the packed weights with the rest (FSDP1, `use_orig_params`); the CPU harness runs QLoRA under
  DDP only and refuses it under FSDP.
- **Layers split across GPUs** (`--sharding none --gpus N`) and FSDP1 are not run.
"""


def load_records(sources: Sequence[str] = SOURCES) -> list[MeasurementRecord]:
    """The shipped multi-rank runs, each re-estimated by the current estimator."""
    from app.calibration.commands import re_estimate
    from app.store.db import read_jsonl

    records = []
    for source in sources:
        records += [re_estimate(r) for r in read_jsonl(BUNDLED_RESULTS / f"{source}.store.jsonl")]
    return records


def groups(records: Sequence[MeasurementRecord]) -> list[tuple[str, list[MeasurementRecord]]]:
    """(label, records): in-sample, held out, and the validation matrix; then by sharding."""
    matrix = [r for r in records if r.source == SOURCES[0]]
    tune = [r for r in matrix if r.split == "tune"]
    seen = [r for r in matrix if r.split == "holdout" and _point_id(r) in SEEN_WHILE_FITTING]
    held = [r for r in matrix if r.split == "holdout" and _point_id(r) not in SEEN_WHILE_FITTING]
    out = [
        ("cpu-matrix-multi tune (in-sample)", tune + seen),
        ("cpu-matrix-multi holdout, not fitted on", held),
        (
            "cpu-validation-multi (held out: measured once, after the fit)",
            [r for r in records if r.source == SOURCES[1]],
        ),
    ]
    for sharding in ("ddp", "fsdp", "fsdp_grad_op"):
        out.append((f"sharding {sharding}", [r for r in records if r.plan.get("sharding") == sharding]))
    for gpus in (2, 4):
        out.append((f"{gpus} ranks", [r for r in records if int(r.plan.get("gpus", 1)) == gpus]))
    return out


def _point_id(record: MeasurementRecord) -> str:
    """The matrix point's id (family + plan hash), as calibrate-matrix names it."""
    import hashlib

    from app.calibration.matrix import _identity
    from app.core.plan import TrainingPlan

    plan = TrainingPlan.model_validate(record.plan)
    return record.model_id + "-" + hashlib.sha256(_identity(plan).encode()).hexdigest()[:8]


def multi_accuracy_markdown(records: Sequence[MeasurementRecord]) -> str:
    """The page: summary by split and layout, what is not measured, then every point."""
    lines = [
        f"# {TITLE}",
        "",
        INTRO.replace("\n", " "),
        "",
        "## Summary",
        "",
        "| points | n | median abs error | p90 abs error | max abs error | median signed error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, group in groups(records):
        lines.append(_stats_line(label, AccuracyStats.from_errors([r.error_pct for r in group]) if group else None))
    worst = max(records, key=lambda r: abs(r.error_pct))
    lines += [
        "",
        f"Worst point: {worst.model_id} {worst.plan['method']} {worst.plan['sharding']} x{worst.plan['gpus']}"
        f" ({worst.error_pct:+.2f} %); median |error| of all {len(records)} points "
        f"{statistics.median(abs(r.error_pct) for r in records):.2f} %.",
        "",
        NOT_MEASURED,
    ]
    points = accuracy_markdown(records, title="x", intro="x").split("## Points\n", 1)[1]
    return "\n".join(lines) + "\n## Points\n" + points


def main(argv: Sequence[str]) -> int:
    text = multi_accuracy_markdown(load_records())
    if argv[:1] == ["--write"] and len(argv) == 2:
        Path(argv[1]).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
