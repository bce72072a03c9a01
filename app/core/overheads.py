"""The terms outside the live tensors (CUDA only): cuBLAS workspace, allocator cache, CUDA context, paged states."""

from __future__ import annotations

import math
from functools import lru_cache

from app.core.plan import TrainingPlan
from app.core.result import Term
from app.core.units import MIB

# cuBLAS workspace torch allocates through the caching allocator on Hopper (CUBLAS_WORKSPACE_CONFIG :4096:8)
CUBLAS_WORKSPACE_BYTES = 32 * MIB
# CUDA context, kernel images and library handles: outside the allocator, seen by nvidia-smi
CUDA_CONTEXT_BYTES = 512 * MIB
# Caching-allocator blocks kept reserved beyond the live peak (fragmentation); first-principles share
ALLOCATOR_FRAGMENTATION = 0.05
SEGMENT = 2 * MIB


def overheads(plan: TrainingPlan, allocated: int, paged: int) -> list[Term]:
    """Terms outside the live tensors (CUDA only): cuBLAS workspace, allocator cache, context and paged states."""
    if plan.device != "cuda":
        return []
    terms = [cublas_workspace_term(), allocator_cache_term(allocated), cuda_context_term()]
    return terms + ([paged_optimizer_state_term(paged)] if paged else [])


@lru_cache(maxsize=1)  # a constant (Terms are frozen): built once, shared by every estimate
def cublas_workspace_term() -> Term:
    """32 MiB cuBLAS workspace through the caching allocator (CUDA only)."""
    note = "cuBLAS workspace, allocated through the caching allocator"
    return Term(term="cublas_workspace_bytes", bytes=CUBLAS_WORKSPACE_BYTES, category="overhead", note=note)


def allocator_cache_term(allocated: int) -> Term:
    """Reserved beyond allocated: 5 % of allocated in 2 MiB segments (first-principles until GPU calibration
    measures `max_memory_reserved`)."""
    frag = math.ceil((allocated + CUBLAS_WORKSPACE_BYTES) * ALLOCATOR_FRAGMENTATION / SEGMENT) * SEGMENT
    note = f"caching-allocator fragmentation ({ALLOCATOR_FRAGMENTATION:.0%} of allocated, 2 MiB segments)"
    return Term(term="allocator_cache_bytes", bytes=frag, category="overhead", counted="reserved", note=note)


@lru_cache(maxsize=1)
def cuda_context_term() -> Term:
    """512 MiB context, kernels and handles outside the allocator (nvidia-smi only)."""
    note = "CUDA context, kernels and library handles (outside the allocator)"
    return Term(term="cuda_context_bytes", bytes=CUDA_CONTEXT_BYTES, category="overhead", counted="device", note=note)


def paged_optimizer_state_term(paged: int) -> Term:
    """Paged optimizers page tensors ≥ 1e5 elements into unified memory: outside `max_memory_allocated`, evictable,
    counted in device bytes. Source: bitsandbytes paged optimizers (cudaMallocManaged)."""
    return Term(
        term="paged_optimizer_state_bytes",
        bytes=paged,
        category="optimizer",
        counted="device",
        evictable=True,
        note="paged optimizer states in unified memory; evicted to host RAM under pressure",
    )
