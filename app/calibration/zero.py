"""run_zero: a zero2/zero3 plan's steps on N CPU ranks, each driving a DeepSpeed engine under its own tracker.

DeepSpeed is an optional extra (`pip install 'gpuplan[deepspeed]'`): its CPU accelerator runs ZeRO over
torch.distributed's gloo backend. Each rank builds the same random-weight model (build.py), joins the gloo group,
and, inside its LiveTensorTracker (the model's own tensors counted first, as for DDP), calls
`deepspeed.initialize(model, optimizer=<the plan's torch optimizer>, config=deepspeed_config(plan))`, so the flat
partitions, the fp32 masters and the gradient buffers DeepSpeed makes count from the load on. A step is
`engine(...)`, `engine.backward(loss)`, `engine.step()` per micro-batch (the engine steps the optimizer at the
accumulation boundary and zeroes the gradients itself). The measurement is the worst rank's (distributed.assemble).

The optimizer is the plan's torch one (`zero_allow_untested_optimizer`), as transformers' Trainer passes its own
optimizer when the DeepSpeed config has no `optimizer` section (transformers integrations/deepspeed.py
`deepspeed_optim_sched`); DeepSpeed's own (DeepSpeedCPUAdam, FusedAdam) would JIT-build C++ ops. With offload the config
sets `offload_optimizer` on the CPU and `zero_force_ds_cpu_optimizer` false (ZeRO-3: `offload_param` on the CPU
too), and the host tensors are counted by placement (app/calibration/zero_offload.py, zero3_offload.py).

No op is built. DeepSpeed's TorchBackend loads its `deepspeed_shm_comm` op (about 8 minutes of g++ on a 2-core
machine) whenever `deepspeed.ops.__compatible_ops__` says it can be built (deepspeed/comm/torch.py `build_shm_op`,
0.19.8); that op serves only `inference_all_reduce` (tensor-parallel inference, deepspeed/module_inject), never
ZeRO's reduce-scatter, all-reduce and all-gather, which go to torch.distributed. The dict is computed once and
kept ("edits to it persist": deepspeed/ops/__init__.py), so `skip_shm_op` marks the op not compatible first and
ZeRO runs over plain gloo.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from app.calibration.build import CPU_OPTIMIZERS
from app.calibration.measurement import Measurement, Phase
from app.core.plan import TrainingPlan
from app.errors import CalibrationError, MissingExtra

ZERO = ("zero2", "zero3")
DEEPSPEED_VERSION = "0.19.8"  # the version the zero points were measured with (pyproject's `deepspeed` extra)
# DeepSpeed's ZeRO defaults, passed explicitly so a run says what it ran with (deepspeed/runtime/zero/config.py,
# DeepSpeedZeroConfig, 0.19.8): contiguous_gradients True; reduce_bucket_size 5e8 and allgather_bucket_size 5e8
# elements; overlap_comm None, which its validator `overlap_comm_valid` makes True for stage 3 only;
# stage3_prefetch_bucket_size 5e7 elements; stage3_param_persistence_threshold 1e5 elements.
ZERO_DEFAULTS: dict[str, Any] = {
    "contiguous_gradients": True,
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
}


def require_deepspeed() -> None:
    """MissingExtra (exit 2) unless DeepSpeed can be imported, saying what to install."""
    if importlib.util.find_spec("deepspeed") is None:
        raise MissingExtra(
            "zero2/zero3 runs drive a DeepSpeed engine, and deepspeed is not installed: "
            f"pip install 'gpuplan[deepspeed]' (deepspeed=={DEEPSPEED_VERSION}, into the same environment as torch), "
            "or measure ddp, fsdp or fsdp_grad_op"
        )


def check_zero_plan(plan: TrainingPlan) -> None:
    """Refuse zero plans the CPU ranks cannot run, saying what to change."""
    if plan.gpus < 2:
        raise CalibrationError("a ZeRO run shards over at least 2 ranks: use gpus >= 2")
    if plan.device != "cpu":
        raise CalibrationError("the multi-rank harness runs CPU ranks over gloo: use device cpu")
    if plan.offload and plan.method == "qlora" and plan.sharding == "zero3":
        raise CalibrationError("QLoRA with ZeRO-Offload is run under zero2 only: use zero2, or turn offload off")
    if plan.autocast:
        raise CalibrationError("the ZeRO runs cover bf16, fp16 and fp32 weights without autocast: turn autocast off")
    if plan.optimizer not in CPU_OPTIMIZERS:
        raise CalibrationError("the ZeRO runs step torch's AdamW or SGD, or transformers' Adafactor: use one of them")


def zero_buckets(plan: TrainingPlan, hidden_size: int) -> dict[str, Any]:
    """The plan's bucket settings as DeepSpeed reads them: its defaults, or the `"auto"` values filled as
    transformers fills them (app/core/zero.py `bucket_sizes`); allgather_bucket_size keeps its default (transformers
    leaves it)."""
    if plan.zero_buckets == "deepspeed":
        return dict(ZERO_DEFAULTS)
    if hidden_size <= 0:
        raise CalibrationError("zero_buckets auto is filled from the model's hidden size: pass it")
    from app.core.zero import auto_buckets

    auto = auto_buckets(hidden_size)
    return {
        **ZERO_DEFAULTS,
        "reduce_bucket_size": auto.reduce,
        "stage3_prefetch_bucket_size": auto.prefetch,
        "stage3_param_persistence_threshold": auto.persistence,
    }


def deepspeed_config(plan: TrainingPlan, hidden_size: int = 0) -> dict[str, Any]:
    """The DeepSpeed config of a plan: its ZeRO stage with the plan's bucket sizes, bf16 when the plan trains in
    bf16, its micro-batch and accumulation, and the client optimizer allowed (no `optimizer` section). With offload,
    ZeRO-Offload's optimizer on the CPU: `offload_optimizer` unpinned (zero3: `offload_param` too, unpinned), and
    `zero_force_ds_cpu_optimizer` false, without which DeepSpeed refuses a client optimizer under offload
    (runtime/engine.py, ZeRORuntimeException near line 2342; app/calibration/zero_offload.py says why the host
    optimizer changes no device bytes)."""
    zero = {"stage": 3 if plan.sharding == "zero3" else 2, **zero_buckets(plan, hidden_size)}
    offload: dict[str, Any] = {}
    if plan.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        offload["zero_force_ds_cpu_optimizer"] = False
    if plan.offload and plan.sharding == "zero3":  # the parameters too (app/calibration/zero3_offload.py)
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": plan.batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": plan.dtype == "bf16"},
        "fp16": {"enabled": plan.dtype == "fp16"},
        "zero_allow_untested_optimizer": True,
        **offload,
        "steps_per_print": 1_000_000,
    }


def run_zero(
    config: dict[str, Any],
    plan: TrainingPlan,
    *,
    layers: int | None,
    steps: int,
    seed: int,
    fp32_matmuls: bool,
    timeout_s: float,
) -> Measurement:
    """Measure a zero2/zero3 `plan` on plan.gpus CPU ranks; the measurement's peak and phases are the worst rank's."""
    from app.calibration.distributed import assemble
    from app.calibration.harness import check_plan
    from app.calibration.ranks import run_ranks

    require_deepspeed()
    check_zero_plan(plan)
    check_plan(plan.model_copy(update={"gpus": 1, "sharding": "none", "offload": False}), steps)
    job = {
        "config": config,
        "plan": plan.model_dump(mode="json"),
        "layers": layers,
        "steps": steps,
        "seed": seed,
        "fp32_matmuls": fp32_matmuls,
    }
    return assemble(run_ranks(zero_rank_main, plan.gpus, job, timeout_s=timeout_s), plan)


def skip_shm_op() -> None:
    """Mark DeepSpeed's `deepspeed_shm_comm` op not buildable, so its TorchBackend uses gloo without building it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def zero_rank_main(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    """One rank: build the model, join the gloo group, run the engine's steps tracked; return its measurement."""
    import os

    from app.calibration.distributed import run_rank

    os.environ["DS_ACCELERATOR"] = "cpu"  # deepspeed/accelerator/real_accelerator.py: no probing for a GPU
    return run_rank(rank, world, job, _measure_rank, prepare=_quiet_deepspeed)


def _quiet_deepspeed() -> None:
    skip_shm_op()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def _measure_rank(model: Any, cfg: Any, plan: TrainingPlan, job: dict[str, Any], started: float) -> Measurement:
    from app.calibration.distributed import rank_measurement
    from app.calibration.harness import environment

    phases, peak, host = engine_steps(model, cfg, plan, int(job["steps"]), int(job["seed"]))
    del model
    env = environment("cpu", matmul_compute="fp32" if job["fp32_matmuls"] else "native")
    return rank_measurement(
        cfg, plan, job, started, phases, peak, env=env.model_copy(update={"deepspeed": _deepspeed_version()}), **host
    )


def _deepspeed_version() -> str:
    from importlib import metadata

    return metadata.version("deepspeed")


def offload_placed(plan: TrainingPlan, tracker: Any) -> AbstractContextManager[None]:
    """ZeRO-Offload's host tensors placed on the tracker when the plan offloads (app/calibration/zero_offload.py;
    zero3: zero3_offload.py)."""
    if not plan.offload:
        return nullcontext()
    if plan.sharding == "zero3":
        from app.calibration.zero3_offload import placed_zero3_offload

        return placed_zero3_offload(tracker)
    from app.calibration.zero_offload import placed_zero_offload

    return placed_zero_offload(tracker)


@contextmanager
def cpu_fp16(plan: TrainingPlan) -> Iterator[None]:
    """An fp16 plan's engine on a CPU without oneDNN's fp16 kernels: DeepSpeed's CPU accelerator reports fp16 only
    where `torch.ops.mkldnn._is_mkldnn_fp16_supported()` (avx512_fp16 / AMX-FP16: accelerator/cpu_accelerator.py
    `is_fp16_supported`), and the engine refuses fp16 otherwise (runtime/engine.py `_do_sanity_check`, the one
    reader under ZeRO-2, at initialize). torch runs every fp16 op on any x86 CPU with its own kernels (slower), with
    the same outputs, which are all the tracker counts (a kernel's own workspace it never sees), so the check is
    answered yes while the engine is made. Held: a shipped cpu-matrix-zero-fp16 point, measured where oneDNN had fp16,
    re-measured this way to the same bytes (calibration/cpu-matrix-zero-offload2.toml)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if plan.dtype != "fp16" or accelerator.is_fp16_supported():
        yield
        return
    accelerator.is_fp16_supported = lambda: True  # the instance's, this rank's process only
    try:
        yield
    finally:
        del accelerator.is_fp16_supported


def engine_steps(
    model: Any, cfg: Any, plan: TrainingPlan, steps: int, seed: int
) -> tuple[list[Phase], int, dict[str, int]]:
    """The engine's steps under the probe: deepspeed.initialize inside the tracker (marked `load`), then per
    micro-batch forward (the loss only kept), `engine.backward`, `engine.step` (the optimizer at the boundary).
    Returns the phases, the device peak and, with offload, the host and all-storage peaks (empty without)."""
    import deepspeed
    import torch

    from app.calibration.build import build_optimizer
    from app.calibration.harness import StepLabels, failures, tracked

    tracker, probe = tracked(model, plan)
    labels = StepLabels(plan.grad_accum_steps)
    generator = torch.Generator().manual_seed(seed)
    assert tracker is not None  # device cpu: check_zero_plan
    with tracker, offload_placed(plan, tracker):
        with failures("load"), cpu_fp16(plan):
            engine, *_ = deepspeed.initialize(
                model=model,
                optimizer=build_optimizer(model, plan),
                config=deepspeed_config(plan, int(cfg.hidden_size)),
            )
        probe.mark("load")
        ids = torch.randint(int(cfg.vocab_size), (plan.batch_size, plan.seq_len), generator=generator)
        for _ in range(steps * plan.grad_accum_steps):
            last = labels.micro % plan.grad_accum_steps == plan.grad_accum_steps - 1
            phase = labels.forward()
            with failures(phase):
                loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
                probe.mark(phase)
            phase = labels.backward()
            with failures(phase):
                engine.backward(loss)
                del loss
                probe.mark(phase)
            with failures("optimizer"):
                engine.step()
            if last:
                probe.mark(labels.optimizer())
        engine.destroy()
        del engine, ids
    host = {"host_peak_bytes": tracker.host_peak_bytes, "all_storages_peak_bytes": tracker.all_peak_bytes}
    return probe.phases, probe.peak_allocated, host if plan.offload else {}
