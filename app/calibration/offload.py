"""Offload counted by placement: the storages a CUDA run keeps in host RAM named by identity (FSDP2's CPU offload,
HostPlacement; offloaded checkpointing, host_saved_checkpoints).

On a CPU-only machine the offloaded tensors and the "device" ones are all CPU tensors, so the live-tensor tracker
cannot tell them apart by device. It can by identity: FSDP2's `CPUOffloadPolicy` puts exactly these on the host
(torch 2.13, torch/distributed/fsdp/_fully_shard/):

- the sharded parameters: `FSDPParam._init_sharded_param` copies each padded shard `.cpu()` before it becomes
  `sharded_param._local_tensor` (_fsdp_param.py), so every parameter the module holds between steps, frozen or
  trainable, is a host shard;
- their sharded gradients: `foreach_reduce` reduce-scatters on the device, then copies each shard's gradient
  `.to("cpu")` and assigns it to `sharded_param.grad` (_fsdp_collectives.py); the device output is dropped;
- the optimizer: it steps the host parameters with their host gradients, so its states and every temporary of
  `optimizer.step()` are host RAM.

What stays on the device: the all-gather inputs and outputs, the unsharded parameters a layer runs with, the
unsharded gradients and the reduce-scatter input and output, activations, logits and buffers.

How the run counts it (what differs from a CUDA run, and by how much):

- the shards are marked host once wrapped, and each sharded gradient when FSDP2 calls the parameter's
  post-accumulate-grad hooks (right after assigning it). On CPU that gradient is a view of the reduce-scatter
  output (`.to("cpu")` of a CPU tensor copies nothing), so the output's storage moves to the host at that moment,
  where a CUDA run frees its device output and keeps a host copy: the same device bytes from then on;
- the all-gather inputs: a CUDA rank copies each host shard to the device (`.to(device, non_blocking=True)` in
  `FSDPParam.all_gather_inputs`) before the all-gather, a CPU rank copies nothing. `copy_shards_to_device`
  makes that copy a real one (a clone), so the shard's device copy is counted as a CUDA rank holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from app.calibration.tracker import LiveTensorTracker
    from app.core.plan import TrainingPlan


class HostPlacement:
    """`place` for harness.run_steps: marks the sharded parameters as host RAM and, through a hook, each sharded
    gradient as FSDP2 assigns it; keeps the tracker to read its host and all-storage peaks afterwards."""

    def __init__(self) -> None:
        self.tracker: LiveTensorTracker | None = None

    def __call__(self, model: Any, tracker: LiveTensorTracker) -> None:
        self.tracker = tracker
        params = list(model.parameters())  # FSDP2's sharded DTensor parameters: their local shards
        tracker.mark_host(*params)
        for param in params:
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(self._grad_to_host)
        tracker.reset_peak()  # the load phase's peak is the device's: the shards were counted before they were placed

    def _grad_to_host(self, param: torch.Tensor) -> None:
        if self.tracker is not None and param.grad is not None:
            self.tracker.mark_host(param.grad)

    @property
    def host_peak_bytes(self) -> int | None:
        return None if self.tracker is None else self.tracker.host_peak_bytes

    @property
    def all_storages_peak_bytes(self) -> int | None:
        return None if self.tracker is None else self.tracker.all_peak_bytes


def copy_shards_to_device() -> None:
    """Make FSDP2's host-to-device copy of each offloaded shard before its all-gather a real copy on CPU ranks, as
    on CUDA (`FSDPParam.all_gather_inputs`: `self._sharded_param_data.to(self.device, non_blocking=True)`, which
    is the tensor itself when the device is the CPU). Patches the property in this rank's process only."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam

    original: Any = FSDPParam.all_gather_inputs
    if getattr(original.fget, "_gpuplan_copies", False):
        return

    def all_gather_inputs(self: Any) -> list[Any]:
        inputs = original.fget(self)
        if not self.offload_to_cpu:
            return list(inputs)
        shard = self._sharded_param_data.untyped_storage().data_ptr()
        return [t.clone() if t.untyped_storage().data_ptr() == shard else t for t in inputs]

    all_gather_inputs._gpuplan_copies = True  # type: ignore[attr-defined]
    FSDPParam.all_gather_inputs = property(all_gather_inputs)  # type: ignore[method-assign, assignment]


@contextmanager
def host_saved_checkpoints(plan: TrainingPlan, tracker: LiveTensorTracker | None) -> Iterator[None]:
    """checkpoint_offload counted by placement. transformers 5 (5.24, modeling_utils
    `_activation_checkpointing_enable`) with `offload=True` wraps every checkpoint in
    `torch.autograd.graph.save_on_cpu(pin_memory=True, device_type=...)`, so what the checkpoint saves under the
    outer hooks (its inputs: non-reentrant `_NoopSaveInputs`, reentrant `ctx.save_for_backward`) is packed into a
    host tensor and, at the recompute, copied back to the device. torch 2.13 torch/autograd/graph.py `save_on_cpu`:
    pack `torch.empty(tensor.size(), dtype, layout, pin_memory=...)` + `copy_` (a host copy; the device tensor is
    freed once nothing else holds it), unpack `tensor.to(device, non_blocking=pin_memory)` (a new device tensor).
    On CPU the host copy is a CPU tensor like the device ones and the unpack copies nothing, so while the run lasts
    transformers' `save_on_cpu` is replaced by hooks that do what a CUDA run does, placed: the pack's copy is
    allocated inside `tracker.host_allocations()` (host RAM, never device bytes), the unpack clones it (the device
    copy a CUDA `.to(device)` makes). Without checkpoint_offload, or without a tracker (cuda), nothing changes."""
    if not plan.checkpoint_offload or tracker is None:
        yield
        return
    import importlib

    modeling_utils: Any = importlib.import_module("transformers.modeling_utils")  # its save_on_cpu is a global
    original = modeling_utils.save_on_cpu
    modeling_utils.save_on_cpu = _placed_save_on_cpu(tracker)
    try:
        yield
    finally:
        modeling_utils.save_on_cpu = original


def _placed_save_on_cpu(tracker: LiveTensorTracker) -> Callable[..., Any]:
    """save_on_cpu's signature, its hooks placed on the tracker (`host_saved_checkpoints`)."""
    import torch

    def pack(tensor: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
        with tracker.host_allocations():
            packed = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout)
            packed.copy_(tensor)
        return tensor.device, packed

    def unpack(packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
        return packed[1].clone()  # CUDA: `.to(device)` of the host copy is a new device tensor

    def save_on_cpu(pin_memory: bool = False, device_type: str = "cuda") -> Any:
        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)

    return save_on_cpu
