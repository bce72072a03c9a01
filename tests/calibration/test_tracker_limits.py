"""What LiveTensorTracker cannot see, pinned against the CPU allocator as the profiler records it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from app.calibration.tracker import LiveTensorTracker


def allocator_peak(prof: profile) -> int:
    """Highest net bytes the CPU allocator handed out during a profile (every c10 allocation, op outputs or not)."""
    assert prof.profiler is not None
    results = prof.profiler.kineto_results
    assert results is not None
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak


def test_a_kernels_own_workspace_is_invisible() -> None:
    # CPU flash attention allocates per-thread q·k and accumulation buffers with at::empty inside the kernel
    # and frees them before returning; the mode is popped while the op runs, so only its outputs surface.
    q, k, v = (torch.randn(1, 4, 256, 64) for _ in range(3))
    tracker = LiveTensorTracker(adopt_inputs=False, granularity=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tracker:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    output_bytes = 1 * 4 * 256 * 64 * 4
    logsumexp_bytes = 1 * 4 * 256 * 4
    assert tracker.peak_bytes == output_bytes + logsumexp_bytes  # exactly the op's two outputs
    assert tracker.current_bytes == output_bytes
    assert allocator_peak(prof) > tracker.peak_bytes  # the allocator also handed out the workspace
    del out


def test_everything_an_op_returns_is_seen() -> None:
    # the counter-case: ops with no workspace match the allocator to the byte
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    tracker = LiveTensorTracker(adopt_inputs=False, granularity=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tracker:
        c = torch.relu(a @ b)
    assert tracker.peak_bytes == allocator_peak(prof) == 2 * 64 * 48 * 4
    del c


def test_a_python_number_wrapped_inside_an_op_is_invisible() -> None:
    # `x + 1` wraps 1 in 0-dim tensors inside the op (8 bytes as a double, 4 once cast to float, ...)
    a = torch.randn(64, 48)
    tracker = LiveTensorTracker(adopt_inputs=False, granularity=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tracker:
        c = torch.add(a, 1)
    assert tracker.peak_bytes == 64 * 48 * 4
    assert 64 * 48 * 4 < allocator_peak(prof) <= 64 * 48 * 4 + 64
    del c


def test_a_tensor_never_registered_nor_used_is_not_counted() -> None:
    untouched = torch.empty(1000)
    with LiveTensorTracker() as tracker:
        new = torch.empty(10)
    assert tracker.current_bytes == 512  # `untouched` occupies 4000 bytes the tracker knows nothing about
    del untouched, new
