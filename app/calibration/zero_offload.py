"""ZeRO-Offload counted by placement: what DeepSpeed's ZeRO-2 `offload_optimizer` keeps on its host device, named
by how DeepSpeed allocates it (placed_zero_offload).

On CPU ranks DeepSpeed's offload device and its accelerator are both the CPU (deepspeed/accelerator/cpu_accelerator.py
`current_device_name` is `'cpu'`), so the live-tensor tracker cannot tell them apart by device. It can by the
argument DeepSpeed passes: with `offload_optimizer.device cpu`, `DeepSpeedZeroOptimizer.__init__` sets
`self.device = 'cpu'` (deepspeed 0.19.8 runtime/zero/stage_1_and_2.py, beside `self.cpu_offload = True`) and makes
every host tensor with `device=self.device`, every device one with `get_accelerator().current_device_name()`. Under
`placed_zero_offload` the optimizer's `device` reads as OFFLOAD_DEVICE, a `str` equal to `'cpu'` that is known by
identity, and a torch function mode counts whatever a call passed it makes as host RAM (entered again in each
gradient hook's `process_gradients`: a function mode does not reach the hooks autograd runs in backward, where a small
bucket flushes and accumulation makes its host buffers). In a CUDA run these are host:

- the fp32 partitions (`single_partition_of_fp32_groups`: the master weights, `4 × P/n` bytes for P trainable
  parameters over n ranks, `.to(device=self.device, dtype=fp32)` of the bit16 partition's clone) and their
  gradients (`.grad`, another `4 × P/n`, `initialize_optimizer_states`), which the reduced gradients are copied into
  (`async_inplace_copy_grad_to_fp32_buffer_from_gpu`);
- the host bit16 buffers (`param_buffer_of_bit16_for_cpu_offload_groups`, `2 × P/n` in bf16: `torch.full` on the
  fp32 partition's device, the one host allocation not made with `device=self.device`, placed by its call site),
  through which the stepped partition is copied back (`bit16_partition_buffer.data.copy_(fp32_partition.data)`);
- `temp_grad_buffer_for_cpu_offload` (the largest parameter's numel in the model dtype) and, with accumulation,
  `accumulated_grads_in_cpu` (one host buffer per parameter in the partition: `async_accumulate_grad_in_cpu_via_gpu`);
- the optimizer's states and every temporary of its step: it steps the host fp32 partitions with their host
  gradients (`_optimizer_step`, run inside `tracker.host_allocations()`).

What stays on the device: the flat bit16 weights (all of them: ZeRO-2 partitions no weights), the gradients as
backward makes them and the reduce buckets (`ipg_buckets`) they are averaged in, the fp32 casts of a bf16
gradient's partition slice before its copy to the host, `temp_grad_buffer_for_gpu_offload` (the largest
parameter, model dtype), the gradient norms, activations and logits. The copy from the host bit16 buffer back into
the device partition (`bit16_partitions[partition_id].data.copy_(..., non_blocking=True)`) writes into an existing
device tensor and allocates nothing, on CUDA as here.

What differs from a CUDA run, and by how much:

- the fp32 partition of an fp32 model: `.clone().to(device='cpu', dtype=fp32)` copies to the host on CUDA and is
  the clone itself on CPU; the mode makes that `.to` a real host copy, so the device clone is freed as on CUDA;
- the host optimizer: transformers passes the Trainer's torch optimizer when the DeepSpeed config has no `optimizer`
  section (integrations/deepspeed.py `deepspeed_optim_sched`, which sets `zero_allow_untested_optimizer`), and
  DeepSpeed refuses a client optimizer under ZeRO-Offload (runtime/engine.py, ZeRORuntimeException near line 2342)
  unless the config sets `zero_force_ds_cpu_optimizer: false`, as these runs do. DeepSpeedCPUAdam (a C++ op this
  harness does not build) would replace torch's AdamW on the host; the step runs entirely on host memory either
  way, so which host optimizer runs changes host bytes only, never device bytes. The low-precision-master
  validators (stage_1_and_2.py `_enforce_cpu_offload`) fire only for fp16/bf16 master weights, not the default fp32;
- `pin_memory: false`: pinned host buffers (`get_accelerator().pin_memory`) are host RAM either way: every call
  site pins a tensor already on the host (the fp32 partition, its gradient, the host bit16 buffer,
  `temp_grad_buffer_for_cpu_offload`, the accumulation buffers) and CUDA's is a page-locked host copy of it
  (accelerator/abstract_accelerator.py `_torch_pin_memory`: `tensor.pin_memory()`), so pinning moves no device
  bytes; on the CPU accelerator it is a no-op (cpu_accelerator.py `pin_memory`).

ZeRO-3's offload (`offload_optimizer` with `offload_param`, as the plan's `offload` means for zero3: app/core/
estimate.py `resident_bytes` moves zero3 weights to the host too) is placed by app/calibration/zero3_offload.py
(stage 3 names its host device with DeepSpeed's own enum; `Init.remote_device` reads as OFFLOAD_DEVICE there).

fp16 and QLoRA run through the same placement (calibration/cpu-matrix-zero-offload2.toml), as nothing either changes
is made on another device (deepspeed 0.19.8 runtime/zero/stage_1_and_2.py):

- fp16: the masters stay fp32 (`_enforce_cpu_offload`, the validator of fp16/bf16 masters, never fires), the
  dynamic loss scaler scales the scalar loss (base_optimizer.py `scale_if_loss`), the overflow check reduces each
  gradient to two device scalars before its host copy (`update_offload_overflow_tracker`: runtime/utils.py
  `has_inf_or_nan`, amax/amin), `has_overflow` all-reduces a one-byte flag of `local_overflow`, and the unscale runs
  in place on the host fp32 gradient (`unscale_and_clip_grads`); a step skipped on overflow skips the host step
  only. On a CPU without oneDNN's fp16 kernels the engine's fp16 check is answered yes (app/calibration/zero.py
  `cpu_fp16`): torch's own fp16 kernels make the same outputs, which are all the tracker counts;
- QLoRA: DeepSpeed flattens and partitions the trainable parameters only (`is_optimized_parameter`: the LoRA
  adapters), so the fp32 partitions, their gradients, the host bit16 buffer and the states are the adapters'; the
  frozen bitsandbytes Params4bit and their quant states stay where the engine put them (device bytes, as without
  offload), after its cast of the fp32-upcast modules to the model dtype (engine.py `_cast_module_mixed_precision`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.calibration.tracker import LiveTensorTracker


class HostDevice(str):
    """DeepSpeed's offload device string, known by identity (equal to `'cpu'`, so DeepSpeed and torch read it as
    the CPU)."""

    __slots__ = ()


OFFLOAD_DEVICE = HostDevice("cpu")


def passes_offload_device(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Whether a torch call was given DeepSpeed's offload device (`device=self.device` or `.to(self.device)`)."""
    return any(a is OFFLOAD_DEVICE for a in args) or any(v is OFFLOAD_DEVICE for v in (kwargs or {}).values())


def _host_function_mode(tracker: LiveTensorTracker, init_code: Any) -> Any:
    """A torch function mode that runs, inside `tracker.host_allocations()`, every call given OFFLOAD_DEVICE, and
    the host bit16 buffer's `torch.full` in DeepSpeedZeroOptimizer.__init__ (code object `init_code`)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class HostFactories(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if passes_offload_device(args, kwargs):
                with tracker.host_allocations():
                    out = func(*args, **kwargs)
                    if func is torch.Tensor.to and _same_storage(out, args[0]):
                        out = out.clone()  # CUDA: `.to('cpu')` of a device tensor is a new host tensor
                return out
            if func is torch.full and sys._getframe(1).f_code is init_code:
                with tracker.host_allocations():  # stage_1_and_2.py: temp_buffer_bit16, on the fp32 partition's device
                    return func(*args, **kwargs)
            return func(*args, **kwargs)

    return HostFactories()


def _same_storage(a: Any, b: Any) -> bool:
    import torch

    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


@contextmanager
def placed_zero_offload(tracker: LiveTensorTracker) -> Iterator[None]:
    """ZeRO-2's offload_optimizer counted by placement while the block runs (the module docstring says what and
    why): the optimizer's `device` reads as OFFLOAD_DEVICE when it offloads, calls given it allocate host RAM (in
    its gradient hooks too), and its host optimizer step runs inside `tracker.host_allocations()`. Patches the class in this rank's process only
    and restores it after."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    cls: Any = DeepSpeedZeroOptimizer
    step, hook = cls._optimizer_step, cls.process_gradients
    init_code = cls.__init__.__code__

    def get_device(self: Any) -> Any:
        value = self.__dict__.get("_gpuplan_device")
        return OFFLOAD_DEVICE if getattr(self, "cpu_offload", False) and value == "cpu" else value

    def set_device(self: Any, value: Any) -> None:
        self.__dict__["_gpuplan_device"] = value

    def host_step(self: Any, group_no: int) -> Any:
        with tracker.host_allocations():  # the torch optimizer steps the host fp32 partition: states, temporaries
            return step(self, group_no)

    def placed_hook(self: Any, param: Any, i: int) -> Any:
        with _host_function_mode(tracker, init_code):  # a function mode does not reach autograd's hooks: enter it
            return hook(self, param, i)

    cls.device = property(get_device, set_device)
    cls._optimizer_step, cls.process_gradients = host_step, placed_hook
    try:
        with _host_function_mode(tracker, init_code):
            yield
    finally:
        del cls.device
        cls._optimizer_step, cls.process_gradients = step, hook
