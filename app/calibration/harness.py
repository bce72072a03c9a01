"""run_measurement: run a real fine-tuning step of a plan on a random-weight model and measure its memory.

torch and the model libraries are imported inside the functions that need them.

cpu and cuda runs differ where the devices do: on cpu the tracker starts from the prepared model, so the
'load' phase has no loading transients (on cuda its peak includes quantizing and upcasting); on cpu AdamW's
per-parameter `step` scalars (512 bytes each once rounded) are device memory, on cuda they stay on the host.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from app.calibration.build import CPU_OPTIMIZERS, build_base, build_config, build_model, build_optimizer, quiet
from app.calibration.distributed import DISTRIBUTED
from app.calibration.measurement import Environment, Loop, Measurement, Phase, median_step_s
from app.core.plan import TrainingPlan
from app.errors import CalibrationError

if TYPE_CHECKING:
    import torch

    from app.calibration.tracker import LiveTensorTracker

CPU_THREADS = 2
progress = logging.getLogger("app.calibration.progress")  # each phase as it ends (app/calibration/progress.py)
# Where the Probe of the run in progress appends each optimizer step's wall time: set by run_measurement, so both
# loops (plain, Trainer) are timed by the probe that marks their phases without passing a list through them.
_step_clock: ContextVar[list[float] | None] = ContextVar("gpuplan_step_clock", default=None)
# Where `tracked` puts the tracker of a checkpoint_offload run, so run_measurement can read its host RAM peak
# (the saved inputs counted by placement: app/calibration/offload.py host_saved_checkpoints).
_placed: ContextVar[list[LiveTensorTracker] | None] = ContextVar("gpuplan_placed", default=None)


def run_measurement(
    config: dict[str, Any],
    plan: TrainingPlan,
    *,
    layers: int | None = None,
    steps: int = 2,
    seed: int = 0,
    fp32_matmuls: bool = False,
    loop: Loop = "plain",
) -> Measurement:
    """Run `steps` training steps of `plan` (plain PyTorch; `loop` trainer: transformers.Trainer, trainer_loop.py;
    sft: trl.SFTTrainer, sft_loop.py, which adds the LoRA itself) on the model `config` describes; measure memory.
    Each step: forward (loss only; torch.autocast over fp32 weights with plan.autocast), backward, optimizer step,
    zero_grad(set_to_none=True), in train mode, on batch_size x seq_len random token ids. On cpu LiveTensorTracker
    counts every live storage (rounded to 512 bytes, as on CUDA) from the loaded model on (checkpoint_offload's host
    copies apart: `host_peak_bytes`); on cuda the caching allocator's counters, from before loading on.
    `fp32_matmuls`: cpu 16-bit matmuls through fp32 (matmul.py: same bytes, ~100x faster where bf16 GEMM is slow).
    Raises CalibrationError, saying what to change, when the run cannot be carried out. Every loop honours
    grad_accum_steps; only the plain one keep_logits."""
    check_plan(plan, steps, loop)
    if fp32_matmuls and plan.device != "cpu":
        raise CalibrationError("fp32_matmuls replaces cpu kernels only: use it with device cpu")
    import torch

    from app.calibration.matmul import fp32_compute_matmuls

    started = time.perf_counter()
    step_times: list[float] = []
    placed: list[LiveTensorTracker] = []  # `tracked` puts a checkpoint_offload run's tracker here
    clock, placing = _step_clock.set(step_times), _placed.set(placed)
    with _threads(plan.device), quiet(), fp32_compute_matmuls(fp32_matmuls), _reset(clock, placing):
        cfg = build_config(config, layers)
        if plan.router_aux_loss:  # the MoE load-balancing loss: the CausalLM adds load_balancing_loss_func
            cfg.output_router_logits = True
        progress.info("building the %d-layer model (%s) on %s", cfg.num_hidden_layers, plan.method, plan.device)
        torch.manual_seed(seed)
        if plan.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = build_base(cfg, plan) if loop == "sft" else build_model(cfg, plan)  # SFTTrainer wraps it in LoRA
        run = {"plain": run_steps, "trainer": _trainer_steps, "sft": _sft_steps}[loop]
        phases, peak, reserved = run(model, int(cfg.vocab_size), plan, steps, seed)
        del model
    return Measurement(
        model_type=str(cfg.model_type),
        config=cfg.to_diff_dict(),
        plan=plan.model_dump(mode="json"),
        layers=int(cfg.num_hidden_layers),
        steps=steps,
        device=plan.device,
        peak_allocated_bytes=peak,
        peak_reserved_bytes=reserved,
        phases=phases,
        env=environment(plan.device, matmul_compute="fp32" if fp32_matmuls else "native", loop=loop),
        duration_s=time.perf_counter() - started,
        created_at=datetime.now(UTC),
        step_times_s=tuple(step_times),
        step_s=median_step_s(step_times),
        tokens_per_step=plan.batch_size * plan.seq_len * plan.grad_accum_steps,
        **_host_peaks(placed),
    )


def _host_peaks(placed: list[LiveTensorTracker]) -> dict[str, int | None]:
    """checkpoint_offload (counted by placement): the host RAM peak and every storage's; None without."""
    tracker = placed[0] if placed else None
    return {
        "host_peak_bytes": None if tracker is None else tracker.host_peak_bytes,
        "all_storages_peak_bytes": None if tracker is None else tracker.all_peak_bytes,
    }


@contextmanager
def _reset(clock: Any, placing: Any) -> Iterator[None]:
    try:
        yield
    finally:
        _step_clock.reset(clock)
        _placed.reset(placing)


def check_plan(plan: TrainingPlan, steps: int, loop: Loop = "plain") -> None:
    """Refuse plans this single-process harness cannot run, saying what to change."""
    if steps < 1:
        raise CalibrationError(f"steps must be at least 1 (got {steps}); use 2 so a step runs with optimizer state")
    if loop != "plain" and plan.keep_logits:
        raise CalibrationError(
            "transformers.Trainer and SFTTrainer drop the model's outputs before backward: keep_logits needs loop plain"
        )
    if (loop == "sft") != (plan.loop == "sft"):
        raise CalibrationError(
            f"loop {loop} with a plan of loop {plan.loop}: trl.SFTTrainer's fused LM head is the plan's loop sft, the "
            "plain and Trainer loops' full logits its loop trainer; run loop sft with loop sft plans only"
        )
    if loop == "sft" and plan.checkpoint_offload:
        raise CalibrationError(
            "checkpoint_offload is counted by placement through the plain and Trainer loops only: use loop trainer"
        )
    if plan.packing:
        raise CalibrationError("the harness's rows are single random sequences, not packed ones: turn packing off")
    if plan.fused_cross_entropy:
        raise CalibrationError(
            "fused_cross_entropy is Liger's Triton kernel, which the harness does not run: turn it off"
        )
    if plan.gpus != 1 or plan.sharding != "none" or plan.offload:
        raise CalibrationError("the harness measures one process on one device: use gpus 1, sharding none, no offload")
    if plan.gradient_checkpointing and plan.checkpointing != "every-layer":
        raise CalibrationError(
            "transformers checkpoints every layer; the harness cannot run sqrt-n: use checkpointing every-layer"
        )
    if plan.device == "cpu":
        if plan.optimizer not in CPU_OPTIMIZERS:
            raise CalibrationError(
                f"optimizer {plan.optimizer} needs bitsandbytes on cuda; the cpu reference supports "
                f"{', '.join(CPU_OPTIMIZERS)}"
            )
        if plan.attn == "flash_attention_2":
            raise CalibrationError("flash_attention_2 runs on cuda only: use attn sdpa or eager on cpu")
        return
    import torch

    if not torch.cuda.is_available():
        raise CalibrationError("device cuda was asked for but torch sees no GPU: use device cpu")


class StepLabels:
    """Names the marks by step, micro-batch and phase: micro-batch m < k of step s is `step<s>.micro<m>.forward`
    / `.backward`, the last is `step<s>.forward` / `.backward` (every gradient alive: the worst), then
    `step<s>.optimizer`."""

    def __init__(self, accumulation: int) -> None:
        self.accumulation = accumulation
        self.micro = 0  # micro-batches run so far

    def _prefix(self) -> str:
        step, micro = divmod(self.micro, self.accumulation)
        return f"step{step + 1}." if micro == self.accumulation - 1 else f"step{step + 1}.micro{micro + 1}."

    def forward(self) -> str:
        return self._prefix() + "forward"

    def backward(self) -> str:
        label = self._prefix() + "backward"
        self.micro += 1
        return label

    def optimizer(self) -> str:
        return f"step{self.micro // self.accumulation}.optimizer"


class Probe:
    """Reads memory at phase boundaries: a LiveTensorTracker on cpu, the caching allocator on cuda; and times each
    optimizer step, from the end of the one before ('load' for the first) to the end of its `.optimizer` phase."""

    def __init__(self, tracker: LiveTensorTracker | None) -> None:
        self.tracker = tracker
        self.phases: list[Phase] = []
        self.peak_reserved = 0
        clock = _step_clock.get()
        self.step_times: list[float] = clock if clock is not None else []
        self._step_start: float | None = None

    def mark(self, label: str) -> None:
        progress.info("%s done", label)
        boundary = label == "load" or label.endswith(".optimizer")
        if boundary:
            self._step_ended(label)
        if self.tracker is not None:
            self.phases.append(self.tracker.mark(label))
        else:
            self._read_allocator(label)
        if boundary:
            self._step_start = time.perf_counter()  # after this mark's own bookkeeping

    def _step_ended(self, label: str) -> None:
        """'load' starts the first step, each `.optimizer` mark ends one (and starts the next); on cuda the clock is
        read once every queued kernel has run (torch.cuda.synchronize)."""
        if self.tracker is None:
            import torch

            torch.cuda.synchronize()
        if label != "load" and self._step_start is not None:
            self.step_times.append(time.perf_counter() - self._step_start)

    def _read_allocator(self, label: str) -> None:
        import torch

        current, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        self.phases.append(Phase(label=label, current_bytes=current, peak_bytes=peak))
        self.peak_reserved = max(self.peak_reserved, torch.cuda.max_memory_reserved())
        torch.cuda.reset_peak_memory_stats()  # so the next phase's peak is its own

    @property
    def peak_allocated(self) -> int:
        if self.tracker is not None:
            return self.tracker.peak_bytes
        return max(phase.peak_bytes for phase in self.phases)


def _trainer_steps(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int
) -> tuple[list[Phase], int, int | None]:
    from app.calibration.trainer_loop import run_trainer_steps

    return run_trainer_steps(model, vocab_size, plan, steps, seed)


def _sft_steps(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int
) -> tuple[list[Phase], int, int | None]:
    from app.calibration.sft_loop import run_sft_steps

    return run_sft_steps(model, vocab_size, plan, steps, seed)


def tracked(model: Any, plan: TrainingPlan) -> tuple[LiveTensorTracker | None, Probe]:
    """The probe of a run: on cpu a LiveTensorTracker whose baseline is the model (parameters, buffers, quant
    states), on cuda none (the caching allocator's counters are read)."""
    tracker = None
    if plan.device == "cpu":
        from app.calibration.tracker import LiveTensorTracker

        tracker = LiveTensorTracker("cpu")
        tracker.track_module(model)
        placed = _placed.get()
        if plan.checkpoint_offload and placed is not None:
            placed.append(tracker)
    return tracker, Probe(tracker)


def run_steps(
    model: Any,
    vocab_size: int,
    plan: TrainingPlan,
    steps: int,
    seed: int,
    wrap: Callable[[Any], Any] | None = None,
    place: Callable[[Any, LiveTensorTracker], None] | None = None,
) -> tuple[list[Phase], int, int | None]:
    """The steps under the probe: (phases, peak allocated, peak reserved or None). `wrap` (DDP) runs inside the
    tracker, after the model's own tensors are counted, so what it allocates (its buckets) counts too. `place`
    (offload, app/calibration/offload.py) names the storages a CUDA run keeps in host RAM; with offload the
    optimizer step runs on the host, so what it allocates is host RAM too; checkpoint_offload's saved inputs are
    placed on the host as a CUDA run holds them (offload.host_saved_checkpoints)."""
    import torch

    from app.calibration.offload import host_saved_checkpoints

    tracker, probe = tracked(model, plan)
    labels = StepLabels(plan.grad_accum_steps)
    generator = torch.Generator().manual_seed(seed)
    with tracker if tracker is not None else nullcontext(), host_saved_checkpoints(plan, tracker):
        if wrap is not None:
            model = wrap(model)
        if place is not None and tracker is not None:
            place(model, tracker)
        probe.mark("load")
        optimizer = build_optimizer(model, plan)
        ids = torch.randint(vocab_size, (plan.batch_size, plan.seq_len), generator=generator).to(plan.device)
        held: list[Any] = [None]  # the model output a loop like `out = model(...); out.loss.backward()` holds
        for _ in range(steps):
            for micro in range(plan.grad_accum_steps):
                with gradient_sync(model, plan, last=micro == plan.grad_accum_steps - 1):
                    _micro_batch(model, ids, probe, labels, held, plan)
            _optimizer_step(optimizer, probe, labels.optimizer(), on_host=plan.offload)
        del optimizer, ids, held
    reserved = probe.peak_reserved if plan.device == "cuda" else None
    return probe.phases, probe.peak_allocated, reserved


@contextmanager
def gradient_sync(model: Any, plan: TrainingPlan, *, last: bool) -> Iterator[None]:
    """A micro-batch before the last of an accumulation window skips the gradient sync, as transformers' Trainer runs
    it (`accelerator.no_sync` unless accelerate's `sync_each_batch`): DDP's and FSDP1's `no_sync()`, FSDP2's
    `set_requires_gradient_sync(False)`, so each rank accumulates unsharded gradients and the last micro-batch
    reduces them. Nothing for one device, for the last micro-batch, and under DeepSpeed (its engine accumulates).
    Source: transformers 5.24 trainer.py (`_inner_training_loop`: `sync_context`), accelerate 1.15
    accelerator.py (`no_sync`: `model.set_requires_gradient_sync(False)` for FSDP2, else `model.no_sync`)."""
    if last or plan.gpus < 2 or plan.sharding not in DISTRIBUTED:
        yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2's FSDPModule
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    with model.no_sync():  # DistributedDataParallel, FullyShardedDataParallel
        yield


def batch_mask(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The all-ones attention_mask a tokenized batch carries, passed on transformers 4 only: there a batch without one
    (and without a cache) is taken for packed sequences, so every layer gets an explicit (B, 1, T, T) mask and SDPA
    repeats the kv heads (4.57.6 masking_utils._preprocess_mask_arguments: find_packed_sequence_indices, then
    allow_is_causal_skip=False). transformers 5 runs either batch causally; its shipped points were measured without."""
    from app.calibration.stacks import installed_stack

    if installed_stack() != "transformers-4":
        return {}
    import torch

    return {"attention_mask": torch.ones_like(ids)}


def _micro_batch(
    model: Any, ids: torch.Tensor, probe: Probe, labels: StepLabels, held: list[Any], plan: TrainingPlan
) -> None:
    """Forward and backward of one micro-batch (its gradients add to those before it). With keep_logits the output
    replaces the one in `held` once the forward returns, as `out = model(...)` rebinds a loop's variable: the
    previous output lives through this forward, this one through backward, the optimizer step and the next forward.
    """
    phase = labels.forward()
    with failures(phase), _autocast(plan):
        out = model(input_ids=ids, labels=ids, use_cache=False, **batch_mask(ids))
        # keep only the loss unless the plan says otherwise: holding the output keeps the logits through backward
        loss, held[0] = out.loss, (out if plan.keep_logits else None)
        del out
        probe.mark(phase)
    phase = labels.backward()
    with failures(phase):
        loss.backward()
        del loss
        probe.mark(phase)


def _optimizer_step(optimizer: torch.optim.Optimizer, probe: Probe, phase: str, on_host: bool = False) -> None:
    host = probe.tracker.host_allocations() if on_host and probe.tracker is not None else nullcontext()
    with failures(phase):
        with host:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        probe.mark(phase)


def _autocast(plan: TrainingPlan) -> Any:
    """The forward's autocast region (plan.autocast: 16-bit matmuls over fp32 weights, as `torch.autocast(device,
    dtype)` around the forward only; backward runs outside it, as torch's AMP recipe says), else none."""
    if not plan.autocast or plan.fsdp_mixed_precision:  # over an FSDP policy the rank wraps the forward itself
        return nullcontext()  # (distributed.autocast_forward, as accelerate's prepare_model)
    import torch

    from app.calibration.build import torch_dtype

    return torch.autocast(device_type=plan.device, dtype=torch_dtype(plan))


@contextmanager
def failures(phase: str) -> Iterator[None]:
    """A failed step as a CalibrationError naming its phase (out of device memory: what to lower)."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise CalibrationError(
            f"out of device memory in {phase}: the point does not fit; lower seq_len, batch_size or layers"
        ) from exc
    except Exception as exc:
        raise CalibrationError(f"the training step failed in {phase}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _threads(device: str) -> Iterator[None]:
    """At most CPU_THREADS intra-op threads for a cpu run, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(min(before, CPU_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def environment(device: str, matmul_compute: Literal["native", "fp32"] = "native", loop: Loop = "plain") -> Environment:
    """Versions of the libraries that shape memory, and the device's name and size."""
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        name, total = str(props.name), int(props.total_memory)
    else:
        name, total = _cpu_name(), None
    return Environment(
        torch=torch.__version__,
        transformers=_version("transformers") or "unknown",
        peft=_version("peft") or "unknown",
        bitsandbytes=_version("bitsandbytes"),
        python=platform.python_version(),
        device_name=name,
        total_memory_bytes=total,
        matmul_compute=matmul_compute,
        loop=loop,
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                for line in info:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine() or "cpu"
