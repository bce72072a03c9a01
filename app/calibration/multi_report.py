"""docs/accuracy-multi.md from the shipped multi-rank runs: `python -m app.calibration.multi_report [--write PATH]`.

Every shipped run of calibration/cpu-matrix-multi.toml, cpu-validation-multi.toml, cpu-matrix-multi-offload.toml
cpu-matrix-multi-qlora.toml and the FSDP1 matrices (cpu-matrix-multi-fsdp1.toml, cpu-validation-multi-fsdp1.toml)
is re-estimated now and reported by split: the matrix's tune points (in-sample),
its holdout points (split by hash; the few looked at while the terms were fitted are named), the validation matrix
(measured once, after the terms were fixed), the offload and the QLoRA matrices (in-sample as a whole: their points
drove the offload terms and the root's re-gather).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from app.calibration.report import _stats_line, accuracy_markdown
from app.store.models import AccuracyStats, MeasurementRecord
from app.store.seed import BUNDLED_RESULTS

SOURCES = (
    "cpu-matrix-multi",
    "cpu-validation-multi",
    "cpu-matrix-multi-offload",
    "cpu-matrix-multi-qlora",
    "cpu-matrix-multi-fsdp1",
    "cpu-validation-multi-fsdp1",
)
# FSDP1's matrix (tune / holdout by hash) and its validation matrix (measured once, after app/core/fsdp1.py)
FSDP1_MATRIX, FSDP1_VALIDATION = SOURCES[4], SOURCES[5]
# the one holdout point of the FSDP1 matrix looked at while its LoRA terms were fixed (PEFT's adapter units)
FSDP1_SEEN = frozenset({"llama-73689e66"})
# the later matrices (CPU offload counted by placement; QLoRA under FSDP2), reported whole: their points drove the
# terms they check (the offload terms; sharding:root_regather_bytes, from the QLoRA points without checkpointing)
LATER = {
    "cpu-matrix-multi-offload": "FSDP2 CPU offload, counted by placement",
    "cpu-matrix-multi-qlora": "QLoRA under FSDP2, PEFT's recipe",
}
# holdout points of cpu-matrix-multi whose phases were looked at while app/core/sharding.py was fitted (the first
# four measured, and the LoRA DDP point that showed the start-up broadcast of adapters): in-sample in effect
SEEN_WHILE_FITTING = frozenset(
    {"llama-a872c4fb", "mistral-8defd24c", "mixtral-caa4d5dd", "llama-105f4663", "llama-b2811673"}
)
TITLE = (
    "gpuplan accuracy: multi-GPU (DDP, FSDP2, FSDP2 offload, QLoRA under FSDP2, FSDP1) measured on torch.distributed "
    "CPU ranks"
)
INTRO = """Every row is a real training step (2 optimizer steps) on N torch.distributed CPU ranks over gloo on one
machine (`app/calibration/distributed.py`: spawned processes, loopback, a bounded time that kills every rank),
each rank running the same plan under its own live-tensor tracker. The measured peak is the **worst rank's**
(the rank peaks column lists every rank's), held against `estimate()` for the same config and plan (gpus = N),
which gives the per-GPU peak. DDP is `DistributedDataParallel` with torch's defaults; fsdp is FSDP2
`fully_shard` on every decoder layer and on the root, as accelerate wraps it, resharding after forward;
fsdp_grad_op the same with `reshard_after_forward=False`; `+ offload` adds FSDP2's `CPUOffloadPolicy`, counted by
placement (below); `(FSDP1)` is FullyShardedDataParallel as accelerate wraps it (below). Parameters stay in the
plan dtype (no MixedPrecisionPolicy). Error = (estimated - measured) /
measured."""
NOT_MEASURED = """## CPU offload, counted by placement

`calibration/cpu-matrix-multi-offload.toml` runs FSDP2 with `CPUOffloadPolicy(pin_memory=False)` (full and
LoRA, reshard on and off). On a CPU-only machine the offloaded tensors and the device ones are all CPU tensors, so
the tracker counts them by placement, as a CUDA rank holds them (`app/calibration/offload.py`): the storages
FSDP2 keeps on the host there are named by identity (the sharded parameters once wrapped; each sharded gradient
when FSDP2 assigns it, through the parameter's post-accumulate-grad hook; everything `optimizer.step()`
allocates, since it steps host tensors) and counted apart. The measured peak is the device's; the host RAM's
peak (the sharding column's `(host ...)`) and every storage's together are kept in the record
(`env.host_peak_bytes`, `env.all_storages_peak_bytes`). FSDP2's host-to-device copy of each shard before its
all-gather, a no-op on CPU, is made a real copy so it counts as on CUDA. What a CPU rank still cannot show: the
timing of a CUDA rank's device-to-host gradient copies (counted when assigned), pinned-memory staging, and the
host RAM's own peak against the host's limits.

## QLoRA under FSDP2

`calibration/cpu-matrix-multi-qlora.toml` runs PEFT's FSDP+QLoRA recipe (`bnb_4bit_quant_storage` = the compute
dtype, bf16, so FSDP2 shards the packed 4-bit weights like any parameter) under `fully_shard`, reshard on and off,
with and without offload, on 2 and 4 ranks (9 points). Its first run (kept as
`calibration/results/cpu-matrix-multi-qlora.report.jsonl`) was -6.94 %, -7.19 % and -9.02 % without gradient
checkpointing (llama, mistral; fsdp): `reshard_after_forward` passed explicitly, as accelerate's
`fsdp2_prepare_model` passes it to the root too, reshards the root after forward (fully_shard leaves the root
gathered only when the argument is None), so the root's pre-backward at backward's start re-gathers it, and its
flat all-gather output sits beside its copy-out until the copy-out is done: `2R`, every activation and the loss's
saved log_softmax alive (`sharding:root_regather_bytes`). Under QLoRA the root (fp32 embeddings and lm_head) is
large against a 4-bit layer, so that moment is the backward's peak. Confirmed by one A/B run (mistral, fsdp, no
checkpointing, 2 ranks): the root left at the default (None) peaks at 17,446,400 bytes in backward, resharded at
19,838,976 (+2,392,576, forward unchanged). The shipped points are the matrix's second run, after the term was
written (so in-sample as a whole). The moment is no QLoRA one: wherever the root is large against a layer it
peaks. Two probe runs (llama cut to 2 layers with a 16,384-token vocabulary, LoRA, bf16, fsdp, no checkpointing,
2 ranks; not shipped as data) measured 50,447,872 bytes (39,988,224 with offload) against 50,421,504 (39,974,912)
estimated, -0.05 % (-0.03 %); without the moment -5.89 % (-7.39 %). No shipped point of the other matrices moves
(their roots are small against their layers). Three points measured 184,320 to 534,528 bytes more in the second run than in
the first (llama fsdp offload, llama fsdp with checkpointing, mistral fsdp): the CPU ranks' peaks are not
byte-exact from run to run there. bitsandbytes' quantization states are no parameters: FSDP2 neither shards nor
offloads them (`estimate:fsdp_quant_state_bytes`, measured).

## FSDP1

`calibration/cpu-matrix-multi-fsdp1.toml` (11 points) and `cpu-validation-multi-fsdp1.toml` (held out, measured
once after the terms were written) run the plan's `fsdp_version: 1`: `FullyShardedDataParallel` as accelerate's
`prepare_model` builds it (`app/calibration/fsdp1.py`): TRANSFORMER_BASED_WRAP on the decoder layer class (under
LoRA PEFT's `fsdp_auto_wrap_policy`, which transformers' Trainer installs: every lora_A / lora_B its own unit, one
dtype per FlatParameter), FULL_SHARD (fsdp) or SHARD_GRAD_OP (fsdp_grad_op), BACKWARD_PRE, forward_prefetch off,
limit_all_gathers, use_orig_params; sync_module_states off (torch refuses it for CPU parameters; it broadcasts at
wrap time, before tracking). What the ranks showed against FSDP2 (`app/core/fsdp1.py`): a gathered unit is its
padded FlatParameter alone (the parameters are views of it: no copy-out beside it, so FSDP1's forward holds
`R + W_l` where FSDP2's holds up to `R + 3W_l`); the root stays gathered from its forward to the end of backward
(no re-gather at backward's start); BACKWARD_PRE holds two layers in a layer's backward, but under LoRA the next
handle in backward order is an adapter's unit, so one; SHARD_GRAD_OP keeps every adapter unit gathered too; the
flat gradient of a layer is its pieces concatenated (`2·G_l`, as FSDP2's copy-in), reduce-scattered into a new
shard, the layer before the last peaking at that concatenation with the last layer's shard alive. Before those
terms the matrix's LoRA points were +12.43 % (llama, FULL_SHARD, checkpointing: the prefetch counted) and
-4.03 % (mistral, SHARD_GRAD_OP: the adapter units), and llama full FULL_SHARD x4 -3.01 % (the concatenation).
Not run: FSDP1's `CPUOffload` (the plan refuses fsdp_version 1 with offload), QLoRA under FSDP1, mixed precision.

## Not measured here, and why

- **MixedPrecisionPolicy** (`param_dtype=bf16, reduce_dtype=fp32` over fp32 shards) is not modelled: the plan
  has no field for it, and its nearest plan, `autocast` (fp32 weights, bf16 compute under torch.autocast), is
  another layout. Two probe runs (llama cut to 2 layers, fsdp, 2 ranks, seq 64, no checkpointing; the harness's
  `shard_fsdp2` given the policy and its autocast region turned off, not shipped as data) measured 30,499,840
  bytes (full) and 14,352,384 (LoRA), against which the autocast plan's estimate is +22.08 % and +59.80 %; the same
  full plan run as autocast over fp32 FSDP2 (no policy) measured 35,743,232, estimate +4.17 %. What it would take:
  a plan field for the policy; the root's and the layers' gathers (`R`, `W_l`) in the param dtype, beside the
  shard's cast copy-in; no autocast cache; the unsharded gradients in the param dtype and the reduce-scatter input
  in the reduce dtype; the sharded gradients, masters and states in fp32; and the harness passing
  `mp_policy` (accelerate's `fsdp2_prepare_model` does) with its matrix measured as the others.
- **ZeRO-2/3 (DeepSpeed)**: tried with DeepSpeed 0.19.8 (pip, then uninstalled: it is no dependency): its CPU
  accelerator picks gloo, and once it has JIT-built its `deepspeed_shm_comm` op (about 8 minutes of g++ on the
  shared 2-core machine) a tiny llama's ZeRO-2 and ZeRO-3 steps (`deepspeed.initialize`, bf16, torch AdamW with
  `zero_allow_untested_optimizer`) ran on 2 CPU ranks. The harness does not drive a DeepSpeed engine yet (its step
  is `engine.backward` / `engine.step`), so no ZeRO point is measured: `master_weight_bytes`,
  ZeRO-2's sharded states and `zero3_gathered_bytes` stay first-principles, and `gpuplan calibrate --sharding
  zero2|zero3` says so.
- **Layers split across GPUs** (`--sharding none --gpus N`) are not run; nor FSDP1's CPU offload or QLoRA (above).
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
    for source, label in LATER.items():  # every point of it was looked at while its terms were fixed: in-sample
        later = [r for r in records if r.source == source]
        out.append((f"{source} ({label}; all looked at while its terms were fixed: in-sample)", later))
    out += fsdp1_groups(records)
    fsdp2 = [r for r in records if r.plan.get("fsdp_version", 2) != 1]
    for sharding in ("ddp", "fsdp", "fsdp_grad_op"):
        out.append((f"sharding {sharding}", [r for r in fsdp2 if r.plan.get("sharding") == sharding]))
    out.append(("offload (fsdp, fsdp_grad_op)", [r for r in records if r.plan.get("offload")]))
    for gpus in (2, 4):
        out.append((f"{gpus} ranks", [r for r in records if int(r.plan.get("gpus", 1)) == gpus]))
    return out


def fsdp1_groups(records: Sequence[MeasurementRecord]) -> list[tuple[str, list[MeasurementRecord]]]:
    """FSDP1's matrix by split (the point looked at while its terms were fixed counted in-sample), its validation
    matrix, and every FSDP1 point."""
    matrix = [r for r in records if r.source == FSDP1_MATRIX]
    seen = [r for r in matrix if r.split == "tune" or _point_id(r) in FSDP1_SEEN]
    return [
        (f"{FSDP1_MATRIX} tune (in-sample)", seen),
        (f"{FSDP1_MATRIX} holdout, not fitted on", [r for r in matrix if r not in seen]),
        (
            f"{FSDP1_VALIDATION} (held out: measured once, after the FSDP1 terms)",
            [r for r in records if r.source == FSDP1_VALIDATION],
        ),
        ("FSDP1 (fsdp, fsdp_grad_op)", [r for r in records if r.plan.get("fsdp_version") == 1]),
    ]


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
