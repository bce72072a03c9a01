"""run_distributed: a plan's training steps on N torch.distributed CPU ranks (gloo), each rank's peak tracked.

Every rank builds the same random-weight model (build.py), wraps it as the plan's sharding says and runs the
same steps as the single-device harness (harness.run_steps) under its own LiveTensorTracker. The measurement's
peak and phases are the worst rank's; every rank's peak and phases are kept in `Measurement.ranks`.

- ddp: `torch.nn.parallel.DistributedDataParallel` with its defaults (bucket_cap_mb 25, first bucket 1 MiB,
  gradient_as_bucket_view False), built inside the tracker, so its buckets and its start-up broadcast of the
  parameters count (torch/nn/parallel/distributed.py `_sync_module_states`, `_DEFAULT_FIRST_BUCKET_BYTES`).
- fsdp / fsdp_grad_op: FSDP2 `torch.distributed.fsdp.fully_shard` on every decoder layer (the model's
  `_no_split_modules` classes, as accelerate's `fsdp2_prepare_model` wraps them) and then on the root, with
  reshard_after_forward True (fsdp) or False (fsdp_grad_op); parameters stay in the plan dtype (the model is
  built in it; `mp_policy=MixedPrecisionPolicy()`), or with plan.fsdp_mixed_precision the model is built in fp32
  and `mp_policy` is the 16-bit policy accelerate builds (`mixed_precision_policy`), with no autocast region.
  Wrapped before tracking: the baseline is each rank's shard, as a run that loads shards (or from the meta
  device) starts.
- offload: FSDP2's `CPUOffloadPolicy(pin_memory=False)`. On a CPU-only machine the offloaded shards, gradients
  and optimizer states and the device copies are all CPU tensors, so the tracker counts them by placement, as a
  CUDA rank holds them (app/calibration/offload.py): the storages FSDP2 keeps on the host are named by identity
  and counted apart; the measured peak is the device's, the host's and both together's peaks are kept too.
- QLoRA under fsdp / fsdp_grad_op: PEFT's FSDP+QLoRA recipe, `bnb_4bit_quant_storage` = the compute dtype
  (build.py), so FSDP2 shards the packed weights like any parameter; it runs, with offload too
  (calibration/cpu-matrix-multi-qlora.toml, docs/accuracy-multi.md). reshard_after_forward is passed explicitly,
  to the root too, as accelerate passes it: the root is resharded after forward and re-gathered at backward's start
  (app/core/sharding.py root_regather_bytes), which torch's default (None) would skip.
- fsdp_version 1: FSDP1 `FullyShardedDataParallel` as accelerate's prepare_model wraps it (app/calibration/
  fsdp1.py: a unit per decoder layer and the root, PEFT's per-adapter units under LoRA, BACKWARD_PRE), wrapped
  before tracking as FSDP2 is; full and LoRA (calibration/cpu-matrix-multi-fsdp1.toml), not QLoRA or offload;
  with plan.fsdp_mixed_precision the model built in fp32 and FSDP1's `MixedPrecision` as accelerate builds it
  (fsdp1.py `fsdp1_mixed_precision`; calibration/cpu-matrix-multi-fsdp1-mp.toml), full fine-tuning only (LoRA
  fails in PEFT's forward: `check_distributed_plan`).
- fsdp_mixed_precision with autocast (accelerate's `mixed_precision: bf16` under FSDP1): the forward wrapped in
  torch.autocast and convert_outputs_to_fp32 before the policy's sharding, as prepare_model does
  (`autocast_forward`; calibration/cpu-matrix-multi-mp-autocast.toml), full and LoRA, FSDP1 and FSDP2.
ZeRO-2/3 run a DeepSpeed engine in each rank (app/calibration/zero.py, the `deepspeed` extra). Sources: torch/nn/parallel/distributed.py,
torch/distributed/fsdp/_fully_shard/ (torch 2.13), accelerate/utils/fsdp_utils.py (fsdp2_prepare_model).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from app.calibration.measurement import Loop, Measurement, Phase, RankPeak
from app.core.adapters import fsdp1_qlora_refusal
from app.core.plan import TrainingPlan
from app.core.step import fsdp1_adapter_recompute_fails
from app.errors import CalibrationError

DEFAULT_TIMEOUT_S = 600.0
# seconds a collective may wait for the other ranks before gloo gives up (the parent's timeout kills first)
COLLECTIVE_TIMEOUT_S = 300
DISTRIBUTED = ("ddp", "fsdp", "fsdp_grad_op")


def measure(
    config: dict[str, Any],
    plan: TrainingPlan,
    *,
    layers: int | None = None,
    steps: int = 2,
    seed: int = 0,
    fp32_matmuls: bool = False,
    loop: Loop = "plain",
) -> Measurement:
    """One process (harness.run_measurement) for a one-device plan, CPU ranks (run_distributed) for ddp/fsdp; the
    ranks run the plain loop only. A plan of another stack than the installed one runs in that stack's virtualenv
    (app/calibration/stacks.py)."""
    from app.calibration.stacks import installed_stack, measure_on_stack

    if plan.stack != installed_stack():
        job = {"config": config, "layers": layers, "steps": steps, "seed": seed, "fp32_matmuls": fp32_matmuls}
        return measure_on_stack(job | {"loop": loop}, plan)
    if plan.gpus > 1 or plan.sharding != "none":
        if loop != "plain":
            raise CalibrationError("the CPU ranks run the plain loop: use loop plain with --gpus N")
        if plan.sharding == "none":  # layers split across GPUs: virtual GPUs in this process (layer_split.py)
            from app.calibration.layer_split import run_layer_split

            return run_layer_split(config, plan, layers=layers, steps=steps, seed=seed, fp32_matmuls=fp32_matmuls)
        if plan.sharding in ("zero2", "zero3"):
            from app.calibration.zero import run_zero

            return run_zero(
                config,
                plan,
                layers=layers,
                steps=steps,
                seed=seed,
                fp32_matmuls=fp32_matmuls,
                timeout_s=DEFAULT_TIMEOUT_S,
            )
        return run_distributed(config, plan, layers=layers, steps=steps, seed=seed, fp32_matmuls=fp32_matmuls)
    from app.calibration.harness import run_measurement

    return run_measurement(config, plan, layers=layers, steps=steps, seed=seed, fp32_matmuls=fp32_matmuls, loop=loop)


def with_reshard(plan: TrainingPlan, reshard_after_forward: str) -> TrainingPlan:
    """`--reshard-after-forward off` on an fsdp plan is sharding fsdp_grad_op (FSDP2 reshard_after_forward=False)."""
    if reshard_after_forward == "on":
        return plan
    if plan.sharding not in ("fsdp", "fsdp_grad_op"):
        raise CalibrationError("--reshard-after-forward applies to sharding fsdp only")
    return plan.model_copy(update={"sharding": "fsdp_grad_op"})


def check_distributed_plan(plan: TrainingPlan) -> None:
    """Refuse plans the multi-rank CPU harness cannot run (ddp/fsdp here, zero2/zero3 in zero.py), saying what to
    change."""
    if plan.sharding == "none":  # layers split across GPUs: virtual GPUs in one process (layer_split.py)
        from app.calibration.layer_split import check_layer_split

        check_layer_split(plan)
        return
    if plan.sharding in ("zero2", "zero3"):  # a DeepSpeed engine per rank (app/calibration/zero.py)
        from app.calibration.zero import check_zero_plan

        check_zero_plan(plan)
        return
    if plan.sharding not in DISTRIBUTED or plan.gpus < 2:
        raise CalibrationError("the multi-rank harness runs ddp, fsdp or fsdp_grad_op on at least 2 ranks (gpus >= 2)")
    if plan.device != "cpu":
        raise CalibrationError("the multi-rank harness runs CPU ranks over gloo: use device cpu")
    if (refusal := fsdp1_qlora_refusal(plan)) is not None:  # the first backward fails (the core's refusal)
        raise CalibrationError(refusal.detail)
    if fsdp1_adapter_recompute_fails(plan):
        raise CalibrationError(
            "LoRA under FSDP1's MixedPrecision with autocast, SHARD_GRAD_OP, checkpointing and dropout fails in the "
            "first backward (CheckpointError: the recompute makes dropout's mask in bf16 where the forward made it in "
            "fp32, lora_A's unit being still gathered): use sharding fsdp, dropout 0, or no checkpointing"
        )
    if plan.fsdp_version == 1 and plan.fsdp_mixed_precision and plan.uses_lora and not plan.autocast:
        raise CalibrationError(
            "LoRA under FSDP1's MixedPrecision fails in the first forward (\"expected m1 and m2 to have the same "
            "dtype, but got: float != c10::BFloat16\"): PEFT casts lora_A's input to lora_A.weight.dtype, read outside "
            "the adapter's own FSDP1 unit (PEFT's fsdp_auto_wrap_policy), where it is the fp32 shard, and FSDP1 "
            "gathers the weight in the param dtype and casts no non-root unit's inputs (MixedPrecision "
            "cast_forward_inputs False); use fsdp_version 2, method full, or autocast (accelerate's own layout: "
            "its autocast casts both to the param dtype)"
        )


def run_distributed(
    config: dict[str, Any],
    plan: TrainingPlan,
    *,
    layers: int | None = None,
    steps: int = 2,
    seed: int = 0,
    fp32_matmuls: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Measurement:
    """Measure `plan` on plan.gpus CPU ranks; the measurement's peak and phases are the worst rank's."""
    from app.calibration.harness import check_plan
    from app.calibration.ranks import run_ranks

    check_distributed_plan(plan)
    check_plan(plan.model_copy(update={"gpus": 1, "sharding": "none", "offload": False}), steps)
    job = {
        "config": config,
        "plan": plan.model_dump(mode="json"),
        "layers": layers,
        "steps": steps,
        "seed": seed,
        "fp32_matmuls": fp32_matmuls,
    }
    results = run_ranks(rank_main, plan.gpus, job, timeout_s=timeout_s)
    return assemble(results, plan)


def assemble(results: list[dict[str, Any]], plan: TrainingPlan) -> Measurement:
    """One Measurement from the ranks' own: the worst rank's peak and phases, every rank's kept."""
    ranks = tuple(
        RankPeak(
            rank=n,
            peak_allocated_bytes=r["peak"],
            phases=[Phase(**p) for p in r["phases"]],
            host_peak_bytes=r["measurement"].get("host_peak_bytes"),
            all_storages_peak_bytes=r["measurement"].get("all_storages_peak_bytes"),
        )
        for n, r in enumerate(results)
    )
    worst = max(ranks, key=lambda r: r.peak_allocated_bytes)
    base = Measurement.model_validate(results[worst.rank]["measurement"])
    duration = max(float(r["measurement"]["duration_s"]) for r in results)
    return base.model_copy(
        update={"plan": plan.model_dump(mode="json"), "ranks": ranks, "worst_rank": worst.rank, "duration_s": duration}
    )


def rank_main(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any]:
    """One rank: build the model, join the gloo group, wrap and measure; return the rank's measurement.

    The model is built before the group exists: transformers' save_pretrained (the QLoRA round trip through
    safetensors) writes its files on the main process only once torch.distributed is initialized.
    """
    return run_rank(rank, world, job, _measure_rank)


MeasureRank = Callable[[Any, Any, TrainingPlan, dict[str, Any], float], Measurement]


def run_rank(
    rank: int, world: int, job: dict[str, Any], measure: MeasureRank, prepare: Callable[[], None] | None = None
) -> dict[str, Any]:
    """A rank's life: one thread, the model built from the job, the gloo group joined, `measure(model, cfg, plan, job,
    started)`, the group left; its measurement as JSON. `prepare` runs first, quietly (DeepSpeed's set-up)."""
    import time

    import torch
    import torch.distributed as dist

    from app.calibration.build import build_config, build_model, quiet
    from app.calibration.matmul import fp32_compute_matmuls

    torch.set_num_threads(1)
    plan = TrainingPlan.model_validate(job["plan"])
    started = time.perf_counter()
    with quiet(), fp32_compute_matmuls(bool(job["fp32_matmuls"])):
        if prepare is not None:
            prepare()
        cfg = build_config(job["config"], job["layers"])
        torch.manual_seed(int(job["seed"]))
        model = build_model(cfg, plan)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        try:
            measurement = measure(model, cfg, plan, job, started)
        finally:
            dist.destroy_process_group()
    return {
        "peak": measurement.peak_allocated_bytes,
        "phases": [p.model_dump(mode="json") for p in measurement.phases],
        "measurement": measurement.model_dump(mode="json"),
    }


def rank_measurement(
    cfg: Any, plan: TrainingPlan, job: dict[str, Any], started: float, phases: list[Phase], peak: int, **extra: Any
) -> Measurement:
    """The Measurement of one rank's run (`extra`: env, host peaks) from its job, config and tracked steps."""
    import time
    from datetime import UTC, datetime

    from app.calibration.harness import environment

    fields: dict[str, Any] = {
        "env": environment("cpu", matmul_compute="fp32" if job["fp32_matmuls"] else "native"),
        **extra,
    }
    return Measurement(
        model_type=str(cfg.model_type),
        config=cfg.to_diff_dict(),
        plan=plan.model_dump(mode="json"),
        layers=int(cfg.num_hidden_layers),
        steps=int(job["steps"]),
        device="cpu",
        peak_allocated_bytes=peak,
        peak_reserved_bytes=None,
        phases=phases,
        duration_s=time.perf_counter() - started,
        created_at=datetime.now(UTC),
        **fields,
    )


def _measure_rank(model: Any, cfg: Any, plan: TrainingPlan, job: dict[str, Any], started: float) -> Measurement:
    from app.calibration.gloo_collectives import nccl_like_collectives
    from app.calibration.harness import run_steps
    from app.calibration.offload import HostPlacement, copy_shards_to_device

    if plan.sharding != "ddp":
        if plan.autocast and plan.fsdp_mixed_precision:
            autocast_forward(model, plan)
        model = shard_fsdp1(model, plan) if plan.fsdp_version == 1 else shard_fsdp2(model, plan)
        gc.collect()  # the unsharded originals go before tracking starts
    wrap = wrap_ddp if plan.sharding == "ddp" else None
    place = HostPlacement() if plan.offload else None
    if plan.offload:
        copy_shards_to_device()
    with ExitStack() as stack:
        if plan.sharding != "ddp" and plan.fsdp_version == 2 and plan.fsdp_units == "accelerate":
            stack.enter_context(nccl_like_collectives())
        phases, peak, _ = run_steps(
            model, int(cfg.vocab_size), plan, int(job["steps"]), int(job["seed"]), wrap=wrap, place=place
        )
    del model
    return rank_measurement(
        cfg,
        plan,
        job,
        started,
        phases,
        peak,
        host_peak_bytes=None if place is None else place.host_peak_bytes,
        all_storages_peak_bytes=None if place is None else place.all_storages_peak_bytes,
    )


def wrap_ddp(model: Any) -> Any:
    """DistributedDataParallel with torch's defaults (25 MiB buckets, gradient_as_bucket_view False)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def autocast_forward(model: Any, plan: TrainingPlan) -> None:
    """accelerate's `mixed_precision: bf16/fp16` over an FSDP policy: `Accelerator.prepare_model` (native_amp) wraps
    the model's forward in `torch.autocast(device, dtype)` (cache_enabled left to torch: on) and its outputs in
    `convert_outputs_to_fp32`, before FSDP1 wraps the model, so the region runs inside the root unit's forward, its
    pre-forward unshard outside. accelerate 1.16 does this under FSDP1 only: its FSDP2 path (`_prepare_fsdp2`, since
    1.8) never calls prepare_model, so FSDP2 runs the policy alone; accelerate up to 1.7 called fsdp2_prepare_model
    from prepare_model, after the same wrap, as a loop under `accelerator.autocast()` adds it. Source: accelerate
    1.16 accelerator.py (prepare_model, _prepare_fsdp2), utils/modeling.py (get_mixed_precision_context_manager),
    utils/operations.py (convert_outputs_to_fp32)."""
    from types import MethodType

    import torch
    from accelerate.utils import convert_outputs_to_fp32

    from app.calibration.build import torch_dtype

    region = torch.autocast(device_type=plan.device, dtype=torch_dtype(plan))
    model._original_forward = model.forward
    model.forward = MethodType(convert_outputs_to_fp32(region(model.forward.__func__)), model)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers FSDP wraps one by one: modules of the classes in the model's `_no_split_modules`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    found = [m for m in inner.modules() if type(m).__name__ in names]
    if not found:
        raise CalibrationError(f"{type(inner).__name__} names no decoder layer class in _no_split_modules to shard")
    return found


def mixed_precision_policy(plan: TrainingPlan) -> Any:
    """The `mp_policy` accelerate's fsdp2_prepare_model passes to fully_shard: with plan.fsdp_mixed_precision the one
    `FullyShardedDataParallelPlugin.set_mixed_precision` builds for mixed_precision bf16/fp16 (param_dtype =
    reduce_dtype = that dtype, cast_forward_inputs left True; up to accelerate 1.15 output_dtype too, kept for
    fsdp_units layers, which is how 1.13 wrapped), reduce_dtype fp32 when the plan says so; else
    `MixedPrecisionPolicy()` (every dtype None: parameters stay in their own dtype), as accelerate passes when it
    has no policy. output_dtype casts a unit's outputs, already in param_dtype, so it moves no bytes. Source:
    accelerate 1.16 and 1.13 utils/dataclasses.py (set_mixed_precision), utils/fsdp_utils.py (fsdp2_prepare_model:
    `fsdp2_plugin.mixed_precision_policy or MixedPrecisionPolicy()`)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from app.calibration.build import torch_dtype

    if not plan.fsdp_mixed_precision:
        return MixedPrecisionPolicy()
    dtype = torch_dtype(plan)
    reduce = torch.float32 if plan.fsdp_reduce_dtype == "fp32" else dtype
    output = dtype if plan.fsdp_units == "layers" else None
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=reduce, output_dtype=output)


def shard_fsdp1(model: Any, plan: TrainingPlan) -> Any:
    """FSDP1 as accelerate wraps it (app/calibration/fsdp1.py): one unit per decoder layer class, the root."""
    from app.calibration.fsdp1 import shard_fsdp1 as wrap

    return wrap(model, plan, {type(layer) for layer in decoder_layers(model)})


def shard_fsdp2(model: Any, plan: TrainingPlan) -> Any:
    """fully_shard every decoder layer, then the rest as plan.fsdp_units says (`shard_accelerate_units`, or the whole
    model with the explicit reshard_after_forward)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": mixed_precision_policy(plan),
        "reshard_after_forward": plan.sharding == "fsdp",
        # pinned memory needs an accelerator; pin_memory only changes how the host copies are made, not their bytes
        "offload_policy": CPUOffloadPolicy(pin_memory=False) if plan.offload else OffloadPolicy(),
    }
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    if plan.fsdp_units == "accelerate":
        shard_accelerate_units(model, kwargs)
    else:
        fully_shard(model, **kwargs)
    return model


def shard_accelerate_units(model: Any, kwargs: dict[str, Any]) -> None:
    """accelerate 1.14+'s units after the layers: the input embedding its own unit (unless tied to lm_head), a tail
    unit of [final norm, lm_head] (the input embedding first when tied) with reshard_after_forward False, then the
    root without the argument: torch's default (None) keeps the root gathered after forward. The final norm is the
    last child of the base model whose class name says Norm (accelerate's `_find_final_norm`, looked up through
    `base_model_prefix`: on a PeftModel that finds the wrapped CausalLM, whose children hold no norm, so the norm
    stays in the root). Source: accelerate 1.16 utils/fsdp_utils.py (fsdp2_prepare_model, `_find_final_norm`)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    embed = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    weight = getattr(embed, "weight", None)
    tied = weight is not None and weight is getattr(head, "weight", None)
    if not tied and embed is not None and not isinstance(embed, FSDPModule):
        fully_shard(embed, **kwargs)
    norm = final_norm(model)
    ordered = (norm, embed, head) if tied else (norm, head)
    tail = [m for m in ordered if m is not None and not isinstance(m, FSDPModule)]
    if tail:
        fully_shard(tail, **{**kwargs, "reshard_after_forward": False})
    if not isinstance(model, FSDPModule):
        fully_shard(model, **{k: v for k, v in kwargs.items() if k != "reshard_after_forward"})


def final_norm(model: Any) -> Any:
    """accelerate 1.16's `_find_final_norm`: the last direct child of `getattr(model, model.base_model_prefix)` whose
    class name contains "Norm", or None."""
    import torch

    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else model
    if not isinstance(base, torch.nn.Module):
        return None
    found = None
    for _, module in base.named_children():
        if "Norm" in type(module).__name__:
            found = module
    return found
