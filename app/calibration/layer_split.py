"""Layers split across GPUs (sharding none, gpus > 1), measured in one CPU process by placement on virtual GPUs.

What a run with `device_map="auto"` on n GPUs holds where (transformers 5.24, accelerate 1.16):

- the map: transformers/integrations/accelerate.py `_get_device_map` ("auto", "balanced", "balanced_low_0": all
  but "sequential") calls its own `get_balanced_memory` (per_gpu = the model's bytes // n plus 1.25 x the
  largest of the biggest no-split module (a decoder layer) and the biggest leaf module (often the embedding or
  lm_head); the last GPU keeps its whole memory) and `infer_auto_device_map`, which walks the root's children in
  order (embed_tokens, the layers, norm, rotary_emb, lm_head), fills GPU 0 up to per_gpu minus the largest
  layer it reserves on the main device (`main_devices = [gpus[0], "cpu"]`), then GPU 1 up to per_gpu, ..., and the
  last GPU takes the rest. Sizes are the loaded model's (`compute_module_sizes`: parameters and buffers, in the
  load dtype); PEFT's adapters come after the map. So GPU 0 holds the embeddings and fewer layers, the last GPU
  the final norm, lm_head and the layers left;
- the hooks: accelerate/big_modeling.py `dispatch_model` -> hooks.py `attach_align_device_hook_on_blocks` puts an
  `AlignDevicesHook` on every block of the map (its `pre_forward` sends the block's args and kwargs to its
  device, `send_to_device` -> `tensor.to(device)`: a new storage there when the tensor is elsewhere; the output
  stays on the block's device) and on the root with `io_same_device` (its `post_forward` sends the output, loss
  and logits, back to the input's device, GPU 0). `add_hook_to_module` replaces the instance's `forward`, so the
  move runs outside transformers' checkpoint (modeling_layers.py `GradientCheckpointingLayer` checkpoints the
  class's forward): a layer's checkpointed input is the copy on its own GPU;
- the loss: transformers/loss/loss_utils.py `ForCausalLMLoss` upcasts the logits and computes the loss on
  lm_head's GPU (`shift_labels.to(logits.device)`); backward runs each op where its forward ran, and a `.to`'s
  backward (ToCopyBackward) makes the gradient a new storage on the source GPU; parameters, their gradients and
  the optimizer's states live on the block's GPU. The Trainer (trainer.py `is_model_parallel`: an
  `hf_device_map` with more than one device) neither moves the model nor wraps it, and puts the batch on GPU 0.

How the run counts it (`PlacedTracker`): every storage gets a virtual GPU. Parameters and buffers take their
block's (the map computed by transformers' own `_get_device_map` on the plan's meta-device model, every GPU
given 1 TB, so the balancing's per_gpu binds); an op's outputs take its inputs' GPU (a `_foreach_` op's i-th
output its first list's i-th tensor's); an op without a placed input (a factory) takes the GPU of the block that
runs, or outside any block the GPU of the next op that has one (the batch: GPU 0, where the embedding reads it;
an optimizer state's `step` scalar: its parameter's, from the `zeros_like` that follows); each block's inputs on
another GPU are copied there (`_VirtualCopy`, whose backward copies the gradient back, as ToCopyBackward does),
and the root's output back to GPU 0; the optimizer's states are placed by their parameter after each step too.
Where an op's inputs sit on several GPUs (only where the code relies on a `.to` that is a no-op on one CPU:
`shift_labels.to(logits.device)`, so the labels' copy, batch x seq x 8 bytes, is not made on lm_head's GPU), its
outputs take the largest input's GPU; `PlacedTracker.mixed` counts such ops.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_leaves

from app.calibration.measurement import Measurement, Phase, RankPeak
from app.calibration.tracker import LiveTensorTracker, module_tensors
from app.core.plan import TrainingPlan
from app.errors import CalibrationError

if TYPE_CHECKING:
    from app.calibration.harness import Probe

# what every virtual GPU is given, so get_balanced_memory's per_gpu binds and nothing is offloaded
VIRTUAL_GPU_BYTES = 10**12
MAIN_DEVICE = 0  # dispatch_model's main_device: the first GPU of the map; the batch is put there


class PlacedTracker(LiveTensorTracker):  # type: ignore[no-untyped-call]
    """A LiveTensorTracker that also counts every storage on one of `gpus` virtual GPUs: a current total, a peak and
    phase marks per GPU (`gpu_peaks`, `gpu_marks`). See the module docstring for how a storage's GPU is chosen."""

    def __init__(self, gpus: int) -> None:
        super().__init__("cpu")
        self.gpus = gpus
        self.placed: dict[int, int] = {}  # storage id -> GPU, for storages placed before they are counted
        self.mixed: Counter[str] = Counter()  # ops whose inputs sat on several GPUs
        self._gpu: dict[int, int] = {}
        self._pending: list[int] = []
        self._floating: list[int] = []
        self._forced: int | None = None
        self._scope: list[int] = []
        self._cur = [0] * gpus
        self._peaks = [0] * gpus
        self._phase_peaks = [0] * gpus
        self.gpu_marks: list[list[Phase]] = [[] for _ in range(gpus)]

    # ---- reading ----------------------------------------------------------------------------------------

    @property
    def gpu_bytes(self) -> list[int]:
        return list(self._cur)

    @property
    def gpu_peaks(self) -> list[int]:
        return list(self._peaks)

    def gpu_of(self, tensor: torch.Tensor) -> int | None:
        """The GPU this tensor's storage is counted on (None when it is not counted, or floats: `_place_floating`)."""
        return self._gpu.get(id(tensor.untyped_storage()))

    def settled_gpu(self, tensor: torch.Tensor) -> int | None:
        """gpu_of, a floating storage placed on GPU 0 first (what the loop makes is put there: the batch)."""
        with self._lock:
            if id(tensor.untyped_storage()) in self._floating:
                self._place_floating(MAIN_DEVICE)
        return self.gpu_of(tensor)

    def reset_peak(self) -> None:
        with self._lock:
            super().reset_peak()
            self._peaks = list(self._cur)
            self._phase_peaks = list(self._cur)

    def mark(self, label: str) -> Phase:
        with self._lock:
            self._place_floating(MAIN_DEVICE)
            phase = super().mark(label)
            for gpu in range(self.gpus):
                self.gpu_marks[gpu].append(
                    Phase(label=label, current_bytes=self._cur[gpu], peak_bytes=self._phase_peaks[gpu])
                )
            self._phase_peaks = list(self._cur)
        return phase

    # ---- placing ----------------------------------------------------------------------------------------

    @contextmanager
    def on_gpu(self, gpu: int) -> Iterator[None]:
        """Ops without a placed input run on `gpu` inside this block (a block's forward)."""
        self._scope.append(gpu)
        try:
            yield
        finally:
            self._scope.pop()

    @contextmanager
    def forced(self, gpu: int) -> Iterator[None]:
        """Every storage made inside this block is on `gpu` (the copy of a `.to(gpu)`)."""
        before, self._forced = self._forced, gpu
        try:
            yield
        finally:
            self._forced = before

    def place(self, tensor: torch.Tensor, gpu: int) -> None:
        """Count this tensor's storages on `gpu` from now on (an optimizer state by its parameter)."""
        with self._lock:
            for storage in self._storages(tensor):
                key = id(storage)
                old = self._gpu.get(key)
                entry = self._live.get(key)
                if old is None or old == gpu or entry is None:
                    continue
                self._cur[old] -= entry.counted
                self._gpu[key] = gpu
                self._bump(gpu, entry.counted)

    def track(self, *tensors: torch.Tensor) -> int:
        added = super().track(*tensors)
        self._resolve_pending(self._scope[-1] if self._scope else MAIN_DEVICE, {})
        return added

    # ---- the dispatch mode ------------------------------------------------------------------------------

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self._pending or self._floating:
            with self._lock:
                self._resolve_op(func, args, kwargs or {}, out)
        return out

    def _resolve_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Place the storages an op counted: forced, by index for a `_foreach_` op, else by its inputs (or its block's
        GPU; outside any block an input-less op's storages float until the next op with a GPU takes them)."""
        if self._forced is not None:
            self._resolve_pending(self._forced, {})
            return
        by_storage: dict[int, int] = {}
        foreach = func._schema.name.startswith("aten::_foreach_") and bool(args) and isinstance(args[0], list | tuple)
        if foreach:
            outputs = out if isinstance(out, list | tuple) else ()
            for result, source in zip(outputs, args[0], strict=False):
                gpu = self._gpu_of_leaf(source)
                if gpu is not None:
                    for storage in self._storages(result):
                        by_storage[id(storage)] = gpu
        gpu = self._input_gpu(func, args, kwargs, counted=not foreach)
        if gpu is not None:
            self._place_floating(gpu)
        self._resolve_pending(gpu, by_storage)

    def _input_gpu(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, counted: bool = True
    ) -> int | None:
        weights: Counter[int] = Counter()
        pending = set(self._pending)
        for leaf in tree_leaves((args, kwargs)):
            for storage in self._storages(leaf):
                key = id(storage)
                gpu = self.placed.get(key) if key in pending else self._gpu.get(key)
                if gpu is not None:
                    weights[gpu] += storage.nbytes() + 1
        if not weights:
            return self._scope[-1] if self._scope else None
        if len(weights) > 1 and counted:
            self.mixed[func._schema.name] += 1
        return weights.most_common(1)[0][0]

    def _gpu_of_leaf(self, leaf: object) -> int | None:
        for storage in self._storages(leaf):
            return self._gpu.get(id(storage), self.placed.get(id(storage)))
        return None

    def _resolve_pending(self, default: int | None, by_storage: dict[int, int]) -> None:
        pending, self._pending = self._pending, []
        for key in pending:
            entry = self._live.get(key)
            if entry is None or key in self._gpu:
                continue
            gpu = by_storage.get(key, self.placed.get(key, default))
            if gpu is None:
                self._floating.append(key)  # made outside any block from nothing placed: the batch, a `step` scalar
                continue
            self._gpu[key] = gpu
            self._bump(gpu, entry.counted)

    def _place_floating(self, gpu: int) -> None:
        floating, self._floating = self._floating, []
        for key in floating:
            entry = self._live.get(key)
            if entry is not None and key not in self._gpu:
                self._gpu[key] = gpu
                self._bump(gpu, entry.counted)

    # ---- the counters -----------------------------------------------------------------------------------

    def _bump(self, gpu: int, counted: int) -> None:
        self._cur[gpu] += counted
        self._peaks[gpu] = max(self._peaks[gpu], self._cur[gpu])
        self._phase_peaks[gpu] = max(self._phase_peaks[gpu], self._cur[gpu])

    def _add(self, storage: torch.UntypedStorage, *, adopted: bool = False, host: bool = False) -> None:
        super()._add(storage, adopted=adopted, host=host)
        self._gpu.pop(id(storage), None)  # a new storage at a freed one's id
        self._pending.append(id(storage))

    def _release(self, key: int, ref: Any) -> None:
        with self._lock:
            entry = self._live.get(key)
            if entry is not None and entry.ref is ref:
                gpu = self._gpu.pop(key, None)
                if gpu is not None:
                    self._cur[gpu] -= entry.counted
            super()._release(key, ref)

    def _resize(self, entry: Any, nbytes: int) -> None:
        before = entry.counted
        super()._resize(entry, nbytes)
        storage = entry.ref()
        gpu = None if storage is None else self._gpu.get(id(storage))
        if gpu is not None:
            self._bump(gpu, entry.counted - before)


class _VirtualCopy(torch.autograd.Function):
    """`tensor.to(other GPU)`: a new storage on `dst`; its backward copies the gradient back to `src` (ToCopyBackward)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, tracker: PlacedTracker, src: int, dst: int) -> torch.Tensor:
        ctx.tracker, ctx.src = tracker, src
        with tracker.forced(dst):
            return tensor.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        with ctx.tracker.forced(ctx.src):
            return grad.clone(), None, None, None


def virtual_to(obj: Any, gpu: int, tracker: PlacedTracker) -> Any:
    """accelerate's `send_to_device(obj, gpu)` on virtual GPUs: every tensor elsewhere copied to `gpu`."""
    from accelerate.utils.operations import recursively_apply

    def move(tensor: torch.Tensor) -> torch.Tensor:
        src = tracker.settled_gpu(tensor)
        if src is None or src == gpu:
            return tensor
        return _VirtualCopy.apply(tensor, tracker, src, gpu)  # type: ignore[no-untyped-call, no-any-return]

    return recursively_apply(move, obj)


def hook_block(module: Any, gpu: int, tracker: PlacedTracker, *, io_same_device: bool = False) -> None:
    """What `add_hook_to_module(module, AlignDevicesHook(gpu, io_same_device=...))` does, on virtual GPUs: the
    instance's forward replaced by one that sends the inputs to `gpu` and runs there (the root sends its output back
    to its input's GPU)."""
    old_forward = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        source = None
        if io_same_device:  # accelerate's find_device: the first tensor's
            first = next((t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)), None)
            source = None if first is None else tracker.settled_gpu(first)
        args, kwargs = virtual_to(args, gpu, tracker), virtual_to(kwargs, gpu, tracker)
        with tracker.on_gpu(gpu):
            output = old_forward(*args, **kwargs)
        return output if source is None else virtual_to(output, source, tracker)

    module.forward = forward


def layer_device_map(cfg: Any, plan: TrainingPlan) -> dict[str, int]:
    """The device map transformers computes for `device_map="auto"` on plan.gpus GPUs of VIRTUAL_GPU_BYTES, on the
    plan's model as it is loaded (meta device, load dtype, before PEFT): `_get_device_map(model, "auto", ...)`; 4-bit
    plans through bitsandbytes' quantizer, as from_pretrained runs it (`preprocess_model` swaps in Linear4bit, whose
    weights count half a byte an element, and `adjust_max_memory` takes 10 % off every budget)."""
    import logging

    from transformers.integrations.accelerate import _get_device_map

    from app.calibration.build import _lib, torch_dtype

    if plan.quant == "int8":
        raise CalibrationError("layers split across GPUs runs 16/32-bit and 4-bit weights: int8 is not measured")
    quiet_logger = logging.getLogger("accelerate.utils.modeling")  # "Device 0 is not available" on a CPU machine
    level = quiet_logger.level
    quiet_logger.setLevel(logging.ERROR)
    try:
        dtype = torch_dtype(plan, plan.weight_dtype)
        with torch.device("meta"):
            meta = _lib("transformers").AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        quantizer = None
        if plan.quantized:
            quantization = _lib("transformers").BitsAndBytesConfig(  # as build._load loads the plan
                load_in_4bit=True,
                bnb_4bit_quant_type=plan.quant,
                bnb_4bit_use_double_quant=plan.double_quant,
                bnb_4bit_compute_dtype=torch_dtype(plan),
            )
            quantizer = _lib("transformers.quantizers").AutoHfQuantizer.from_config(quantization, pre_quantized=False)
            quantizer.preprocess_model(model=meta, dtype=dtype, device_map="auto", checkpoint_files=None)
        memory = {gpu: VIRTUAL_GPU_BYTES for gpu in range(plan.gpus)}
        found = _get_device_map(meta, "auto", memory, quantizer)
    finally:
        quiet_logger.setLevel(level)
    return {name: int(gpu) for name, gpu in found.items()}


def place_model(model: Any, device_map: dict[str, int], tracker: PlacedTracker) -> None:
    """Each block's tensors on its GPU and its forward hooked; the root hooked on GPU 0 with io_same_device."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, gpu in device_map.items():
        block = base.get_submodule(name) if name else base
        for tensor in module_tensors(block):
            tracker.placed[id(tensor.untyped_storage())] = gpu
        hook_block(block, gpu, tracker)
    hook_block(base, MAIN_DEVICE, tracker, io_same_device=True)


def place_states(optimizer: Any, tracker: PlacedTracker) -> None:
    """Every optimizer state on its parameter's GPU (torch keeps a parameter's states on its device)."""
    for param, state in optimizer.state.items():
        gpu = tracker.gpu_of(param)
        if gpu is None:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.place(value, gpu)


def run_layer_split(
    config: dict[str, Any],
    plan: TrainingPlan,
    *,
    layers: int | None = None,
    steps: int = 2,
    seed: int = 0,
    fp32_matmuls: bool = False,
) -> Measurement:
    """Measure `plan` (sharding none, gpus > 1) in this process, each virtual GPU's peak and phases kept as a rank's;
    the measurement's peak and phases are the worst GPU's."""
    from app.calibration.build import build_config, build_model, quiet
    from app.calibration.harness import _threads, check_plan
    from app.calibration.matmul import fp32_compute_matmuls

    check_layer_split(plan)
    check_plan(plan.model_copy(update={"gpus": 1}), steps)
    started = time.perf_counter()
    with _threads("cpu"), quiet(), fp32_compute_matmuls(fp32_matmuls):
        cfg = build_config(config, layers)
        device_map = layer_device_map(cfg, plan)
        torch.manual_seed(seed)
        model = build_model(cfg, plan)
        tracker = PlacedTracker(plan.gpus)
        place_model(model, device_map, tracker)
        step_times = run_placed_steps(model, int(cfg.vocab_size), plan, steps, seed, tracker)
        del model
    return placed_measurement(cfg, plan, tracker, steps, fp32_matmuls, started, step_times)


def check_layer_split(plan: TrainingPlan) -> None:
    """Refuse what this harness does not run, saying why."""
    if plan.sharding != "none" or plan.gpus < 2:
        raise CalibrationError("layers split across GPUs is sharding none with gpus >= 2")
    if plan.device != "cpu":
        raise CalibrationError("layers split across GPUs is measured on virtual GPUs in one CPU process: device cpu")
    if plan.offload or plan.checkpoint_offload:
        raise CalibrationError("layers split across GPUs is measured without offload")


def run_placed_steps(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int, tracker: PlacedTracker
) -> list[float]:
    """harness.run_steps's loop under a PlacedTracker: the batch made on GPU 0, the states placed by parameter."""
    from app.calibration.build import build_optimizer
    from app.calibration.harness import Probe, StepLabels, _micro_batch, _optimizer_step, _step_clock

    step_times: list[float] = []
    clock = _step_clock.set(step_times)
    try:
        tracker.track_module(model)
        probe: Probe = Probe(tracker)
        labels = StepLabels(plan.grad_accum_steps)
        generator = torch.Generator().manual_seed(seed)
        with tracker:
            probe.mark("load")
            optimizer = build_optimizer(model, plan)
            optimizer.register_step_post_hook(lambda opt, *_: place_states(opt, tracker))
            ids = torch.randint(vocab_size, (plan.batch_size, plan.seq_len), generator=generator)
            held: list[Any] = [None]
            for _ in range(steps):
                for _micro in range(plan.grad_accum_steps):
                    _micro_batch(model, ids, probe, labels, held, plan)
                _optimizer_step(optimizer, probe, labels.optimizer())
            del optimizer, ids, held
    finally:
        _step_clock.reset(clock)
    return step_times


def placed_measurement(
    cfg: Any,
    plan: TrainingPlan,
    tracker: PlacedTracker,
    steps: int,
    fp32_matmuls: bool,
    started: float,
    step_times: list[float],
) -> Measurement:
    """Every virtual GPU as a rank (its peak and phases), the worst GPU's as the measurement's."""
    from app.calibration.harness import environment
    from app.calibration.measurement import median_step_s

    ranks = tuple(
        RankPeak(rank=gpu, peak_allocated_bytes=peak, phases=tracker.gpu_marks[gpu])
        for gpu, peak in enumerate(tracker.gpu_peaks)
    )
    worst = max(ranks, key=lambda r: r.peak_allocated_bytes)
    return Measurement(
        model_type=str(cfg.model_type),
        config=cfg.to_diff_dict(),
        plan=plan.model_dump(mode="json"),
        layers=int(cfg.num_hidden_layers),
        steps=steps,
        device="cpu",
        peak_allocated_bytes=worst.peak_allocated_bytes,
        peak_reserved_bytes=None,
        phases=worst.phases,
        env=environment("cpu", matmul_compute="fp32" if fp32_matmuls else "native"),
        duration_s=time.perf_counter() - started,
        created_at=datetime.now(UTC),
        ranks=ranks,
        worst_rank=worst.rank,
        step_times_s=tuple(step_times),
        step_s=median_step_s(step_times),
        tokens_per_step=plan.batch_size * plan.seq_len * plan.grad_accum_steps,
    )
