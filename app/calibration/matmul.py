"""16-bit CPU matmuls computed through fp32, for machines whose CPU has no fast bf16/fp16 GEMM.

On a CPU without AVX-512-BF16/AMX, torch's CPU ``aten::mm`` on bf16/fp16 inputs falls back to a slow path
(a 512x512 bf16 matmul takes ~0.1-0.6 s against ~1 ms in fp32), so a real bf16 training step is ~100x slower
than on a CPU that has them. ``fp32_compute_matmuls()`` registers, for as long as it is active, CPU kernels for
the ``.default`` overloads of ``aten::mm``, ``aten::bmm``, ``aten::addmm`` and ``aten::baddbmm`` that upcast
16-bit inputs, call the op's own fp32 ``.out`` kernel (which stays registered: only ``.default`` is replaced)
and cast the result back to the input dtype. Other dtypes go straight to the ``.out`` kernel.

Why the measured bytes do not change. The LiveTensorTracker is a TorchDispatchMode: it sees an op's outputs,
and the mode is popped while the op's kernel runs, so the fp32 temporaries made inside these kernels are as
invisible to it as oneDNN's own packing buffers are in the bf16 kernel. The output has the same shape, dtype,
layout and storage size as the native kernel's (a fresh contiguous tensor), and autograd is above the CPU key,
so it saves exactly what it saves for the native op. Values differ from oneDNN's bf16 GEMM in the last bit at
most; memory does not depend on values (tests/calibration/test_matmul.py measures points both ways and
requires identical bytes).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# the ops whose CPU `.default` kernel is replaced while fp32_compute_matmuls() is active
_OPS = ("mm", "bmm", "addmm", "baddbmm")
# a 16-bit GEMM slower than this many times its fp32 twin is "slow" (fast CPUs: ~0.3-1x, AVX2-only: ~30-300x)
SLOW_RATIO = 4.0


def _upcast(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """fp32 copies of 16-bit tensor arguments, and the 16-bit dtype they had (None when there was none)."""
    import torch

    half = None
    out: list[Any] = []
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dtype in (torch.bfloat16, torch.float16):
            half = arg.dtype
            arg = arg.float()
        out.append(arg)
    return tuple(out), half


def _result_shape(name: str, args: tuple[Any, ...]) -> tuple[int, ...]:
    """The output shape of the native op (aten/src/ATen/native/LinearAlgebra.cpp's meta functions)."""
    if name == "mm":
        return (args[0].shape[0], args[1].shape[1])
    if name == "addmm":  # addmm(self, mat1, mat2): self broadcasts to (mat1 rows, mat2 columns)
        return (args[1].shape[0], args[2].shape[1])
    first, second = (args[0], args[1]) if name == "bmm" else (args[1], args[2])  # baddbmm(self, b1, b2)
    return (first.shape[0], first.shape[1], second.shape[2])


def _kernel(name: str) -> Any:
    import torch

    out_overload = getattr(torch.ops.aten, name).out

    def kernel(*args: Any, **kwargs: Any) -> Any:
        compute, half = _upcast(args)
        dtype = torch.float32 if half is not None else args[-1].dtype
        out = torch.empty(_result_shape(name, args), dtype=dtype, device=args[-1].device)
        out_overload(*compute, **kwargs, out=out)
        return out if half is None else out.to(half)

    return kernel


@contextmanager
def fp32_compute_matmuls(enabled: bool = True) -> Iterator[None]:
    """While active, CPU mm/bmm/addmm/baddbmm on 16-bit tensors compute in fp32 (outputs keep their dtype)."""
    if not enabled:
        yield
        return
    import torch

    library = torch.library.Library("aten", "IMPL")  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            # torch warns that a previously registered kernel is overridden: that is the point, and it is undone
            warnings.simplefilter("ignore")
            for name in _OPS:
                library.impl(name, _kernel(name), "CPU")  # type: ignore[no-untyped-call]
        yield
    finally:
        library._destroy()  # type: ignore[no-untyped-call]


def matmul_seconds(dtype: str, n: int = 256, repeats: int = 5) -> float:
    """Median wall time of one n x n CPU matmul in `dtype` ('bf16', 'fp16' or 'fp32'), on at most 2 threads."""
    import statistics

    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    try:
        a = torch.randn(n, n).to(torch_dtype)
        a @ a  # warm-up: oneDNN builds its kernel on the first call
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def slow_16bit_matmuls(n: int = 256) -> tuple[bool, float, float]:
    """Whether this CPU's bf16 GEMM is on the slow path: (slow, bf16 seconds, fp32 seconds) for one n^2 matmul."""
    bf16, fp32 = matmul_seconds("bf16", n), matmul_seconds("fp32", n)
    return bf16 > SLOW_RATIO * fp32, bf16, fp32
