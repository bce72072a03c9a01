"""HostPlacement: FSDP2 CPU offload counted by placement, the storages a CUDA rank keeps in host RAM named by identity.

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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from app.calibration.tracker import LiveTensorTracker


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
