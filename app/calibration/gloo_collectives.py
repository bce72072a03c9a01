"""FSDP2's reduce-scatter on gloo ranks without gloo's staging copy, so a rank's peak does not follow gloo's threads.

gloo's `reduce_scatter_single` allocates a copy the size of its input inside the call (the tracker sees a storage of
that size made in `distributed_c10d.reduce_scatter_single`), and gloo's worker thread releases it: sometimes before
the call returns, sometimes after the next layer's all-gather has begun. The same plan then reads two peaks a
whole reduce-scatter input apart (mixtral full, fsdp with offload, x2: 17,168,384 or 19,764,224 B in three runs of
one command). NCCL reduce-scatters from the input into the output without a copy. `in_place_reduce_scatters`
routes FSDP2's reduce-scatter through an in-place all-reduce of the input (gloo reduces in its own buffers, not torch
storages) and a copy of this rank's chunk into the output: the same sums, the input and the output the only storages,
as on a CUDA rank. Used for FSDP2 under accelerate's units (plan.fsdp_units accelerate); the matrices measured
before it (fsdp_units layers) ran gloo's own call and are kept as measured.
Sources: torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (`DefaultReduceScatter.__call__`,
`foreach_reduce`: the input is (world size x shard) elements, this rank's shard its rank-th chunk, never read after
the call), torch/distributed/distributed_c10d.py (`reduce_scatter_single`, `all_reduce`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def in_place_reduce_scatters() -> Iterator[None]:
    """FSDP2's `DefaultReduceScatter.__call__` as an in-place all-reduce and a chunk copy, in this rank's process,
    while the block runs (a finished handle returned for an asynchronous call)."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives

    from app.calibration.zero3_offload import DoneWork

    cls: Any = collectives.DefaultReduceScatter
    saved = cls.__dict__["__call__"]

    def in_place(self: Any, output_tensor: Any, input_tensor: Any, group: Any, op: Any, async_op: bool = False) -> Any:
        dist.all_reduce(input_tensor, op=op, group=group)
        chunks = input_tensor.view(dist.get_world_size(group), -1)
        output_tensor.copy_(chunks[dist.get_rank(group)].view_as(output_tensor))
        return DoneWork() if async_op else None

    cls.__call__ = in_place
    try:
        yield
    finally:
        cls.__call__ = saved
