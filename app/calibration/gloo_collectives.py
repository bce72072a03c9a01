"""FSDP2's collectives on gloo ranks with no FSDP2 storage held by gloo, so a rank's peak does not follow gloo's threads.

gloo runs a collective on a worker thread that keeps the work, and with it every tensor the work was given, after
the work has completed: torch 2.13's `ProcessGroupGloo::runLoop` marks the work done inside `execute()` and drops
its reference only after taking the queue's lock again (`workInProgress_[workerIndex].reset()`). A storage FSDP2
frees right after the call then lives on until the worker gets that far, and the tracker, whose weakrefs fire when
the last reference goes, counts it there: sometimes past the next allocations. Two plans read two peaks between runs
of one command (mistral LoRA fsdp x2, 2 layers: 11,024,896 or 12,288,000 B, the larger in 3 of 8 runs beside a busy
process; a tied llama full fsdp offload x2: 8,395,776 or 8,794,112 B, 1 in 6). gloo's `reduce_scatter_single` also
allocates a copy of its input inside the call and frees it on the worker (mixtral full fsdp offload x2: 17,168,384
or 19,764,224 B).

NCCL does neither: it gathers into FSDP2's output and reduce-scatters from its input in place, and FSDP2's own
references decide when they are freed. `nccl_like_collectives` routes FSDP2's all-gather and reduce-scatter through
staging buffers made with the tracker's dispatch mode off (harness memory, never counted, since nothing tracked reads
them): the shard is copied in, gloo gathers (all-gathers) or sums (all-reduces) the staging buffers, and the result
is copied into FSDP2's output. The same values as gloo's own calls; FSDP2's storages are the only ones counted, freed
when FSDP2 drops them. With it the two plans above read 11,024,896 B in 8 of 8 runs beside a busy process and
8,395,776 B in 6 of 6. Used for FSDP2 under accelerate's units (plan.fsdp_units accelerate); the matrices measured
before it (fsdp_units layers) ran gloo's own calls and are kept as measured.
Sources: torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (`DefaultAllGather.__call__` and
`DefaultReduceScatter.__call__`, the calls `foreach_all_gather` and `foreach_reduce` make: an all-gather input that
is this rank's slice of the output, a reduce-scatter input of (world size x shard) elements whose rank-th chunk is
this rank's shard), torch/csrc/distributed/c10d/ProcessGroupGloo.cpp (`runLoop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _all_gather(output_tensor: Any, input_tensor: Any, group: Any) -> None:
    """`output_tensor` = every rank's `input_tensor`, rank order, through untracked staging buffers."""
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        staged = torch.empty_like(output_tensor)
        dist.all_gather_into_tensor(staged, input_tensor.clone(), group=group)
        output_tensor.copy_(staged)


def _reduce_scatter(output_tensor: Any, input_tensor: Any, group: Any, op: Any) -> None:
    """`output_tensor` = this rank's chunk of every rank's `input_tensor` reduced by `op`, through an untracked copy."""
    import torch.distributed as dist
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        staged = input_tensor.clone()
        dist.all_reduce(staged, op=op, group=group)
        chunks = staged.view(dist.get_world_size(group), -1)
        output_tensor.copy_(chunks[dist.get_rank(group)].view_as(output_tensor))


@contextmanager
def nccl_like_collectives() -> Iterator[None]:
    """FSDP2's `DefaultAllGather` and `DefaultReduceScatter` through untracked staging buffers, in this rank's
    process, while the block runs (a finished handle returned for an asynchronous call)."""
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives

    from app.calibration.zero3_offload import DoneWork

    gather_cls: Any = collectives.DefaultAllGather
    scatter_cls: Any = collectives.DefaultReduceScatter
    saved = gather_cls.__dict__["__call__"], scatter_cls.__dict__["__call__"]

    def gather(self: Any, output_tensor: Any, input_tensor: Any, group: Any, async_op: bool = False) -> Any:
        _all_gather(output_tensor, input_tensor, group)
        return DoneWork() if async_op else None

    def scatter(self: Any, output_tensor: Any, input_tensor: Any, group: Any, op: Any, async_op: bool = False) -> Any:
        _reduce_scatter(output_tensor, input_tensor, group, op)
        return DoneWork() if async_op else None

    gather_cls.__call__, scatter_cls.__call__ = gather, scatter
    try:
        yield
    finally:
        gather_cls.__call__, scatter_cls.__call__ = saved
