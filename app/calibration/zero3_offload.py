"""ZeRO-3's offload counted by placement: what DeepSpeed's stage 3 keeps in host RAM with `offload_param` and
`offload_optimizer` on the CPU (the plan's `offload` under zero3), named by how DeepSpeed allocates it
(placed_zero3_offload).

On CPU ranks DeepSpeed's offload device and its accelerator are both the CPU, so the live-tensor tracker cannot
tell them apart by device. It can by the argument DeepSpeed passes, as for ZeRO-2 (app/calibration/zero_offload.py):
`DeepSpeedZeroOptimizer_Stage3.__init__` names its host device with the enum member `OffloadDeviceEnum.cpu` itself
(`self.device`, deepspeed 0.19.8 runtime/zero/stage3.py; offload_config.py, a `str` Enum, one object), and `Init`
keeps the config's `offload_param.device` as its `remote_device` (partition_parameters.py), a plain `'cpu'` once
the config model has read it (runtime/config_utils.py `use_enum_values`), which under `placed_zero3_offload` reads
as OFFLOAD_DEVICE, known by identity; the accelerator's device is the string `'cpu'` (`current_device_name`) or
`torch.device('cpu')` (`local_device`). A torch function mode counts whatever a call given either makes as host
RAM. In a CUDA run these are host:

- every parameter's partition (`ds_tensor`): `_partition_param` makes it with `device=self.remote_device`, `⌈numel/n⌉`
  elements in the parameter's dtype, except a persistent one's (`ds_persist`: under the persistence threshold),
  made on the device; the trainable partitions are then copied into one flat host buffer per parameter group
  (`_create_param_groups_fp16_flat_cpu_memory`: `torch.empty` on the default device, the host; `_move_to_flat_buffer`
  frees the partitions it copied), the persistent trainable ones too;
- the gradient partitions' flat buffer (`grad_partitions_flat_buffer`, `device=self.device`, the model dtype);
- the fp32 partitions (`_create_fp32_partitions`: `.to('cpu', fp32)` of the host flat, cloned) and their
  gradients (`initialize_optimizer_states`: `torch.zeros(..., device=self.device)`);
- the optimizer's states and every temporary of its step (`_optimizer_step`).
The four methods named run inside `tracker.host_allocations()` (they allocate nothing on the device).

What stays on the device: the model as loaded (the engine moves a model not built under `zero.Init` to the device,
runtime/engine.py `_configure_distributed_model`, before partitioning it), the gathered parameters (the all-gather
output, `device=get_accelerator().current_device_name()`), the persistent frozen partitions, the reduce bucket
(`ipg_buckets`) and the reduce-scatter's output, activations and logits.

What differs from a CUDA run, and by how much:

- host to device: a gathered parameter's partition is copied to the device before its all-gather
  (`p.ds_tensor.to(get_accelerator().current_device_name())` in `_all_gather_coalesced`, `_all_gather_sequential`,
  `_allgather_param`), and each reduced gradient's host partition back to the device (`partition_grads`:
  `grad_buffer.to(grad_partition.device)`, for its fp64 norm and fp32 cast in `_offload_grad_partition_at_boundary`);
  a CPU rank copies nothing. The mode clones a `.to` given a device, of a host-placed tensor, outside the host
  scopes, that returns the tensor itself: a device copy, as on CUDA;
- `get_accelerator().on_accelerator(t)` reads False for a host-placed tensor, so an accumulating micro-batch takes
  the CUDA path (`partition_grads`: the host partition copied to the device, added to there, copied back);
- device to host: a `.to(host device)` of a device tensor that returns it is cloned on the host;
- the all-gathers run synchronously (`synchronous_all_gathers`). gloo's asynchronous work keeps a gather's input,
  the partition's device copy, alive for as long as its worker threads' timing says: about half a forward's
  copies at its last gathers, 0.8 MB of an 11 MB peak, moving by a parameter's bytes run to run on this shared
  machine; a CUDA rank's NCCL work drops its inputs once the gather is done. On CPU ranks every handle is waited
  for at once anyway (the accelerator is synchronized);
- which host optimizer runs (torch's, or DeepSpeedCPUAdam) changes host bytes only; `pin_memory: false` (pinned
  host buffers are host RAM either way; the flat parameter buffer is pinned on CUDA whatever the setting,
  `get_accelerator().pin_memory`, a no-op on the CPU).

The function mode is entered again in the gradient hooks (`reduce_ready_partitions_and_remove_grads`,
`independent_gradient_partition_epilogue`) and in each fetch (`PartitionedParameterCoordinator.fetch_sub_module`),
which autograd runs in backward, where a function mode does not reach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from app.calibration.zero_offload import OFFLOAD_DEVICE, _same_storage

if TYPE_CHECKING:
    from app.calibration.tracker import LiveTensorTracker


def host_device(value: Any) -> bool:
    """Whether `value` names DeepSpeed's host device: stage 3's `OffloadDeviceEnum.cpu` (the enum member, one object,
    known by its type without importing DeepSpeed; not a string equal to it) or OFFLOAD_DEVICE, which stands in for
    `Init.remote_device` (`placed_zero3_offload`)."""
    return value is OFFLOAD_DEVICE or (type(value).__name__ == "OffloadDeviceEnum" and value == "cpu")


def passes_host_device(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Whether a torch call was given DeepSpeed's host device (`device=self.remote_device`, `.to(self.device)`)."""
    return any(host_device(a) for a in args) or any(host_device(v) for v in (kwargs or {}).values())


def names_a_device(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Whether a `Tensor.to` call was given a device (a string or a torch.device; not only a dtype)."""
    import torch

    given = [*args[1:], (kwargs or {}).get("device")]
    return any(isinstance(a, (str, torch.device)) for a in given)


def zero3_host_mode(tracker: LiveTensorTracker) -> Any:
    """A torch function mode: calls given DeepSpeed's host device allocate host RAM (a no-op `.to` of a device
    tensor made a host copy); a `.to` given a device, of a host-placed tensor, outside the host scopes, that copies
    nothing on the CPU is made a device copy, as on CUDA."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Zero3HostMode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if passes_host_device(args, kwargs):
                with tracker.host_allocations():
                    out = func(*args, **kwargs)
                    if func is torch.Tensor.to and _same_storage(out, args[0]) and not tracker.is_host(args[0]):
                        out = out.clone()  # CUDA: `.to('cpu')` of a device tensor is a new host tensor
                return out
            out = func(*args, **kwargs)
            if (
                func is torch.Tensor.to
                and not tracker.placing_host
                and names_a_device(args, kwargs)
                and _same_storage(out, args[0])
                and tracker.is_host(args[0])
            ):
                out = out.clone()  # CUDA: `.to(device)` of a host partition is a new device tensor
            return out

    return Zero3HostMode()


def _in_host_scope(tracker: LiveTensorTracker, method: Callable[..., Any]) -> Callable[..., Any]:
    def placed(self: Any, *args: Any, **kwargs: Any) -> Any:
        with tracker.host_allocations():
            return method(self, *args, **kwargs)

    return placed


def _in_mode(tracker: LiveTensorTracker, method: Callable[..., Any]) -> Callable[..., Any]:
    def placed(self: Any, *args: Any, **kwargs: Any) -> Any:
        with zero3_host_mode(tracker):  # a function mode does not reach what autograd runs in backward: enter it
            return method(self, *args, **kwargs)

    return placed


# what runs entirely on the host with offload (the module docstring says why), and what autograd calls in backward
HOST_METHODS = (
    "_create_param_groups_fp16_flat_cpu_memory",
    "_create_fp32_partitions",
    "initialize_optimizer_states",
    "_optimizer_step",
)
HOOK_METHODS = ("reduce_ready_partitions_and_remove_grads", "independent_gradient_partition_epilogue")


@contextmanager
def _patched(
    cls: Any, names: tuple[str, ...], wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    saved = {name: cls.__dict__[name] for name in names}
    for name, method in saved.items():
        setattr(cls, name, wrap(method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(cls, name, method)


class DoneWork:
    """A finished collective's handle: what `synchronous_all_gathers` returns for an asynchronous call."""

    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


@contextmanager
def synchronous_all_gathers() -> Iterator[None]:
    """DeepSpeed's all-gathers run synchronously while the block runs, a finished handle returned for an asynchronous
    one (the module docstring says why). Patches deepspeed/comm/torch.py `TorchBackend.all_gather_into_tensor`, the
    one call ZeRO-3's gathers go through, in this rank's process only."""
    from deepspeed.comm.torch import TorchBackend

    backend: Any = TorchBackend
    gather = backend.__dict__["all_gather_into_tensor"]

    def synchronous(self: Any, output_tensor: Any, input_tensor: Any, group: Any = None, async_op: bool = False) -> Any:
        gather(self, output_tensor, input_tensor, group=group, async_op=False)
        return DoneWork() if async_op else None

    backend.all_gather_into_tensor = synchronous
    try:
        yield
    finally:
        backend.all_gather_into_tensor = gather


@contextmanager
def placed_zero3_offload(tracker: LiveTensorTracker) -> Iterator[None]:
    """ZeRO-3's offload_param and offload_optimizer counted by placement while the block runs (the module docstring
    says what and why). Patches the classes in this rank's process only and restores them after."""
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    from deepspeed.runtime.zero.partition_parameters import Init
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    on_accelerator = CPU_Accelerator.on_accelerator
    init: Any = Init

    def get_remote(self: Any) -> Any:
        value = self.__dict__.get("_gpuplan_remote_device")
        return OFFLOAD_DEVICE if isinstance(value, str) and value == "cpu" else value

    def set_remote(self: Any, value: Any) -> None:
        self.__dict__["_gpuplan_remote_device"] = value

    def placed_on_accelerator(self: Any, tensor: Any) -> bool:
        return on_accelerator(self, tensor) and not tracker.is_host(tensor)  # CUDA: a host tensor is not on it

    with ExitStack() as stack:
        stack.enter_context(_patched(DeepSpeedZeroOptimizer_Stage3, HOST_METHODS, lambda m: _in_host_scope(tracker, m)))
        stack.enter_context(_patched(DeepSpeedZeroOptimizer_Stage3, HOOK_METHODS, lambda m: _in_mode(tracker, m)))
        stack.enter_context(
            _patched(PartitionedParameterCoordinator, ("fetch_sub_module",), lambda m: _in_mode(tracker, m))
        )
        stack.enter_context(synchronous_all_gathers())
        CPU_Accelerator.on_accelerator = placed_on_accelerator
        init.remote_device = property(get_remote, set_remote)
        try:
            with zero3_host_mode(tracker):
                yield
        finally:
            CPU_Accelerator.on_accelerator = on_accelerator
            del init.remote_device
