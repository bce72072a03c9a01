"""docs/accuracy-multi.md from the shipped multi-rank runs: `python -m app.calibration.multi_report [--write PATH]`.

Every shipped run of calibration/cpu-matrix-multi.toml, cpu-validation-multi.toml, cpu-matrix-multi-offload.toml,
cpu-matrix-multi-qlora.toml and cpu-matrix-multi-mp.toml is re-estimated now and reported by split: the matrix's tune points (in-sample),
its holdout points (split by hash; the few looked at while the terms were fitted are named), the validation matrix
(measured once, after the terms were fixed), the offload and the QLoRA matrices (in-sample as a whole: their points
drove the offload terms and the root's re-gather), and the MixedPrecisionPolicy matrix by split.
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
    "cpu-matrix-multi-mp",
)
# FSDP2's MixedPrecisionPolicy (calibration/cpu-matrix-multi-mp.toml): measured after its terms were written from
# three probe runs (not shipped), so its tune and holdout splits are reported apart; its one holdout point whose
# phases were looked at (+10.34 % in the first comparison: the LoRA branch's fp32 intermediates, step.py
# mlp_grad_bytes and mlp.py recompute_tail_in_down) counts in-sample
MIXED_PRECISION = "cpu-matrix-multi-mp"
MIXED_PRECISION_SEEN = frozenset({"mistral-7a6b40cc"})
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
    "gpuplan accuracy: multi-GPU (DDP, FSDP2, FSDP2 offload, QLoRA under FSDP2, FSDP2 MixedPrecisionPolicy) measured on "
    "torch.distributed CPU ranks"
)
INTRO = """Every row is a real training step (2 optimizer steps) on N torch.distributed CPU ranks over gloo on one
machine (`app/calibration/distributed.py`: spawned processes, loopback, a bounded time that kills every rank),
each rank running the same plan under its own live-tensor tracker. The measured peak is the **worst rank's**
(the rank peaks column lists every rank's), held against `estimate()` for the same config and plan (gpus = N),
which gives the per-GPU peak. DDP is `DistributedDataParallel` with torch's defaults; fsdp is FSDP2
`fully_shard` on every decoder layer and on the root, as accelerate wraps it, resharding after forward;
fsdp_grad_op the same with `reshard_after_forward=False`; `+ offload` adds FSDP2's `CPUOffloadPolicy`, counted by
placement (below); `+ mp` is FSDP2's MixedPrecisionPolicy over fp32 shards (below). Parameters stay in the plan dtype
elsewhere. Error = (estimated - measured) / measured."""
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

## FSDP2 MixedPrecisionPolicy

`calibration/cpu-matrix-multi-mp.toml` runs the plan field `fsdp_mixed_precision`: the model built in fp32 and
`fully_shard(..., mp_policy=MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16 or fp32, output_dtype=bf16))`
on every decoder layer and the root, no autocast region (`distributed.py` `mixed_precision_policy`). That is the
policy accelerate 1.15 builds for `mixed_precision="bf16"` under FSDP2 (`FullyShardedDataParallelPlugin.
set_mixed_precision`: param, reduce and output dtype all bf16, `cast_forward_inputs` left True; `reduce_dtype=fp32` is
the plan's `fsdp_reduce_dtype`), after `fsdp2_prepare_model` has upcast every trainable parameter to fp32
(`utils/fsdp_utils.py`). accelerate also wraps the forward in `torch.autocast` (`Accelerator.prepare_model`,
`native_amp`): over weights gathered in bf16 its matmuls cast nothing, and its fp32 ops are not in these runs. 15
points: llama, mistral, mixtral; full and LoRA; reshard on and off; reduce in bf16 and fp32; 2 and 4 ranks. What
is alive at the peaks (per-storage dumps of probe runs): the shards, their fp32 gradients and the fp32 AdamW states;
the root's and a layer's gathers in bf16 (the all-gather output and the per-parameter copy-out,
`sharding:in_param_dtype`), the shard's bf16 cast copy before each all-gather (freed once copied in); a layer's
unsharded gradients in bf16, its reduce-scatter input and output in the reduce dtype, the previous layer's input
kept until the next reduce-scatter (`reduce_scatter_kept_bytes`), and at backward's end the root's bf16 gradients,
its reduce-scatter input and output beside the last layer's kept input (`root_reduce_scatter_bytes`); LoRA adapters
gathered in bf16, so PEFT's fp32 cast of each adapted input and the fp32 gradients of its branch are gone
(`step:gathered_lora_branch`, `mlp_grad_bytes`). The terms were written from three probe runs (not shipped), then
the matrix measured; its first comparison was within the bounds but for one holdout point (mistral LoRA fsdp x4 with
checkpointing and dropout, +10.34 %: the recompute's fp32 cast before down's dropout and the fp32 gradient of the
MLP intermediate, both PEFT's fp32 adapters' and absent here), now +2.09 % and counted in-sample. The earlier probes
of this layout (llama cut to 2 layers, fsdp, 2 ranks, seq 64, no checkpointing, reduce fp32), once against the
nearest plan (`autocast`, +22.08 % and +59.80 %), are now estimated at +0.03 % (full, 30,499,840 bytes) and +0.80 %
(LoRA, 14,352,384 bytes). One point (mistral full fsdp x2, reduce fp32, no checkpointing) measured 40,040,960 bytes in
the matrix and 38,430,720 in a rerun (estimate 38,560,768: -3.70 % and +0.34 %): the CPU ranks' backward peaks are not
byte-exact from run to run. Not run: fp16 (no fp16 GEMM worth running on these CPUs), the policy with CPU offload, and
QLoRA (refused with the policy: PEFT's FSDP+QLoRA recipe keeps the packed weights in their storage dtype, which
accelerate does not upcast); their terms are first-principles in the output (`evidence`).

## Not measured here, and why

- **ZeRO-2/3 (DeepSpeed)**: tried with DeepSpeed 0.19.8 (pip, then uninstalled: it is no dependency): its CPU
  accelerator picks gloo, and once it has JIT-built its `deepspeed_shm_comm` op (about 8 minutes of g++ on the
  shared 2-core machine) a tiny llama's ZeRO-2 and ZeRO-3 steps (`deepspeed.initialize`, bf16, torch AdamW with
  `zero_allow_untested_optimizer`) ran on 2 CPU ranks. The harness does not drive a DeepSpeed engine yet (its step
  is `engine.backward` / `engine.step`), so no ZeRO point is measured: `master_weight_bytes`,
  ZeRO-2's sharded states and `zero3_gathered_bytes` stay first-principles, and `gpuplan calibrate --sharding
  zero2|zero3` says so.
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
    for source, label in LATER.items():  # every point of it was looked at while its terms were fixed: in-sample
        later = [r for r in records if r.source == source]
        out.append((f"{source} ({label}; all looked at while its terms were fixed: in-sample)", later))
    mixed = [r for r in records if r.source == MIXED_PRECISION]
    seen_mp = [r for r in mixed if r.split == "tune" or _point_id(r) in MIXED_PRECISION_SEEN]
    label = f"{MIXED_PRECISION} (FSDP2 MixedPrecisionPolicy, bf16 over fp32 shards)"
    out.append((f"{label} tune (in-sample)", seen_mp))
    out.append((f"{label} holdout, not fitted on", [r for r in mixed if r not in seen_mp]))
    for sharding in ("ddp", "fsdp", "fsdp_grad_op"):
        out.append((f"sharding {sharding}", [r for r in records if r.plan.get("sharding") == sharding]))
    out.append(("offload (fsdp, fsdp_grad_op)", [r for r in records if r.plan.get("offload")]))
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
