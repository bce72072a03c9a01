"""LiveTensorTracker: counts the bytes of every live tensor storage on one device, as a caching allocator would.

This module imports torch when it is imported; the rest of the app imports it lazily (inside functions).

What it sees. Every aten op that runs while the mode is active passes through ``__torch_dispatch__``
(including the ops autograd runs in backward, and bitsandbytes ops registered with ``torch.library``).
Each storage found in an op's outputs is counted once, keyed by the identity of its ``UntypedStorage``
(PyTorch keeps one Python object per storage alive as long as the storage lives), so views and aliases are
not double counted. A weakref callback on that object takes the bytes off again the moment the storage is
freed. Sizes are rounded up to 512 bytes, as the CUDA caching allocator rounds its blocks.

What it cannot see (pinned in tests/calibration/test_tracker_limits.py against the CPU allocator as
torch.profiler(profile_memory=True) records it):

* temporaries a kernel allocates and frees inside one op: the mode is popped while the op runs, so only the
  op's outputs surface. Seen on CPU: flash-attention forward/backward workspaces, oneDNN's packing buffers
  in bf16 ``aten::mm``, 0-dim tensors wrapped around Python numbers. On a tiny llama step (hidden 64,
  2 layers, seq 256) the tracker's unrounded peak is 10-15 KB (0.4-0.5 % of it) under the allocator's for
  LoRA/QLoRA and 87 KB (6 %, a bf16 mm in backward) for full fine-tuning;
* memory outside torch storages: bitsandbytes' paged optimizer state (``cget_managed_ptr``, CUDA managed
  memory), oneDNN/MKL caches, Python objects, and the caching allocator's slack (reserved, not allocated);
* storages made before tracking that are neither registered (``track``/``track_module``) nor read by an op.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from app.calibration.measurement import Phase

# The CUDA caching allocator hands out blocks in multiples of 512 bytes (c10/cuda/CUDACachingAllocator.cpp,
# kMinBlockSize); counting every storage the same way makes the CPU reference comparable to a GPU run.
ALLOCATION_GRANULARITY = 512

# Ops whose output storage is new although it is also their input: `torch.tensor(...)` builds the tensor
# below the dispatcher and only then "lifts" it through the mode.
_FRESH_OPS = frozenset({"aten::lift_fresh"})

# Attributes of bitsandbytes' QuantState that hold tensors; state2 is the nested (double-quant) state.
_QUANT_STATE_TENSORS = ("absmax", "code", "offset")


def rounded_bytes(nbytes: int, granularity: int = ALLOCATION_GRANULARITY) -> int:
    """Bytes an allocator with this granularity reserves for a storage of nbytes (0 stays 0)."""
    return -(-nbytes // granularity) * granularity


@dataclass
class _Entry:
    ref: weakref.ReferenceType[torch.UntypedStorage]
    nbytes: int
    counted: int
    host: bool = False  # counted as host RAM (placement: see LiveTensorTracker.mark_host), not device memory


# TorchDispatchMode is untyped, hence the no-untyped-call ignores on it and its super() calls.
class LiveTensorTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """A dispatch mode that keeps a running total, a peak and phase marks of live storage bytes on one device.

    ``adopt_inputs``: a storage this tracker has not seen that an op reads (a tensor made before tracking
    started) is counted from then on, as the memory it really occupies. Set False to count only what is
    registered or allocated while tracking.

    Placement. On a CPU-only machine host RAM and "device" memory are one address space, so a run that offloads
    (FSDP2's CPUOffloadPolicy) makes CPU tensors for both. The caller names the storages a CUDA run would keep
    on the host (``mark_host``, or everything allocated inside ``host_allocations()``); those count in
    ``host_bytes`` instead of ``current_bytes``, and ``all_peak_bytes`` is the peak of both together.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        adopt_inputs: bool = True,
        granularity: int = ALLOCATION_GRANULARITY,
    ) -> None:
        if granularity < 1:
            raise ValueError(f"granularity must be at least 1 byte (got {granularity})")
        super().__init__()  # type: ignore[no-untyped-call]
        self.device = torch.device(device)
        self.adopt_inputs = adopt_inputs
        self.granularity = granularity
        self._live: dict[int, _Entry] = {}
        self._lock = threading.RLock()
        self._current = 0
        self._peak = 0
        self._host = 0
        self._host_peak = 0
        self._all_peak = 0
        self._host_scope = 0
        self._phase_peak = 0
        self._adopted = 0
        self._marks: list[Phase] = []
        self._saved_resize: Callable[..., Any] | None = None

    # ---- reading the counters ---------------------------------------------------------------------------

    @property
    def current_bytes(self) -> int:
        """Bytes of all live tracked storages, each rounded up to the granularity."""
        return self._current

    @property
    def peak_bytes(self) -> int:
        """Highest current_bytes since the tracker was made or reset_peak() was called."""
        return self._peak

    @property
    def host_bytes(self) -> int:
        """Bytes of live storages placed on the host (``mark_host``, ``host_allocations``), not in current_bytes."""
        return self._host

    @property
    def host_peak_bytes(self) -> int:
        """Highest host_bytes since the tracker was made or reset_peak() was called."""
        return self._host_peak

    @property
    def all_peak_bytes(self) -> int:
        """Highest current_bytes + host_bytes: every live storage, wherever it is placed."""
        return self._all_peak

    @property
    def adopted_bytes(self) -> int:
        """Bytes of storages counted because an op read them, not because they were allocated or registered."""
        return self._adopted

    @property
    def live_storages(self) -> int:
        return len(self._live)

    @property
    def marks(self) -> list[Phase]:
        return list(self._marks)

    def reset_peak(self) -> None:
        """Start the overall peak (and the phase peak) again from the current bytes."""
        with self._lock:
            self._peak = self._current
            self._phase_peak = self._current
            self._host_peak = self._host
            self._all_peak = self._current + self._host

    def mark(self, label: str) -> Phase:
        """Close a phase: record the current bytes and the peak since the previous mark, then start a new phase."""
        with self._lock:
            self._refresh_sizes()
            phase = Phase(label=label, current_bytes=self._current, peak_bytes=self._phase_peak)
            self._marks.append(phase)
            self._phase_peak = self._current
        return phase

    # ---- registering a baseline -------------------------------------------------------------------------

    def track(self, *tensors: torch.Tensor) -> int:
        """Count these tensors' storages as live (those already counted are skipped); returns the bytes added."""
        with self._lock:
            before = self._current
            for tensor in tensors:
                for storage in self._storages(tensor):
                    if id(storage) not in self._live:
                        self._add(storage)
            return self._current - before

    def track_module(self, module: torch.nn.Module) -> int:
        """Count a module's parameters, buffers, other tensor attributes and bitsandbytes quantization states."""
        return self.track(*module_tensors(module))

    # ---- placement: what a CUDA run would keep in host RAM ----------------------------------------------

    def mark_host(self, *tensors: torch.Tensor) -> int:
        """Count these tensors' storages as host RAM from now on (moved out of current_bytes if already counted,
        added to host_bytes if not); returns the bytes newly placed on the host."""
        with self._lock:
            before = self._host
            for tensor in tensors:
                for storage in self._storages(tensor):
                    entry = self._live.get(id(storage))
                    if entry is None:
                        self._add(storage, host=True)
                    elif not entry.host:
                        entry.host = True
                        self._current -= entry.counted
                        self._host += entry.counted
                        self._bump_peak()
            return self._host - before

    def is_host(self, tensor: torch.Tensor) -> bool:
        """Whether every storage of `tensor` this tracker counts is placed on the host (False when none is counted)."""
        with self._lock:
            entries = [self._live.get(id(s)) for s in self._storages(tensor)]
        return bool(entries) and all(e is not None and e.host for e in entries)

    @property
    def placing_host(self) -> bool:
        """Whether allocations are counted as host RAM right now (inside ``host_allocations()``)."""
        return self._host_scope > 0

    @contextmanager
    def host_allocations(self) -> Iterator[None]:
        """Every storage allocated inside this block counts as host RAM (an optimizer step that runs on the host)."""
        with self._lock:
            self._host_scope += 1
        try:
            yield
        finally:
            with self._lock:
                self._host_scope -= 1

    # ---- the dispatch mode ------------------------------------------------------------------------------

    def __enter__(self) -> LiveTensorTracker:
        super().__enter__()  # type: ignore[no-untyped-call]
        self._patch_storage_resize()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore_storage_resize()
        super().__exit__(exc_type, exc, tb)  # type: ignore[no-untyped-call]

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        fresh = func._schema.name in _FRESH_OPS
        adopt = self.adopt_inputs and not fresh
        inputs: set[int] = set()
        for leaf in tree_leaves((args, kwargs)):
            for storage in self._storages(leaf):
                key = id(storage)
                inputs.add(key)
                if adopt and key not in self._live:
                    with self._lock:
                        self._add(storage, adopted=True)
        out = func(*args, **kwargs)
        with self._lock:
            for leaf in tree_leaves(out):
                for storage in self._storages(leaf):
                    key = id(storage)
                    entry = self._live.get(key)
                    if entry is not None:
                        if entry.nbytes != storage.nbytes():  # resized in place, e.g. by an out= op
                            self._resize(entry, storage.nbytes())
                    elif fresh or key not in inputs:
                        self._add(storage)
        return out

    # ---- internals --------------------------------------------------------------------------------------

    def _storages(self, obj: object) -> Iterator[torch.UntypedStorage]:
        if isinstance(obj, torch.UntypedStorage):
            if self._on_device(obj.device):
                yield obj
            return
        if not isinstance(obj, torch.Tensor):
            return
        if is_traceable_wrapper_subclass(obj):
            names, _ = obj.__tensor_flatten__()
            for name in names:
                yield from self._storages(getattr(obj, name))
            return
        if not self._on_device(obj.device):
            return
        try:
            storage = obj.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            return
        yield storage

    def _on_device(self, device: torch.device) -> bool:
        return device.type == self.device.type and (self.device.index is None or device.index == self.device.index)

    def _add(self, storage: torch.UntypedStorage, *, adopted: bool = False, host: bool = False) -> None:
        key = id(storage)
        nbytes = storage.nbytes()
        counted = rounded_bytes(nbytes, self.granularity)
        owner = weakref.ref(self)

        def release(ref: weakref.ReferenceType[torch.UntypedStorage]) -> None:
            tracker = owner()
            if tracker is not None:
                tracker._release(key, ref)

        entry = _Entry(weakref.ref(storage, release), nbytes, counted, host=host or self._host_scope > 0)
        self._live[key] = entry
        if entry.host:
            self._host += counted
        else:
            self._current += counted
        if adopted:
            self._adopted += counted
        self._bump_peak()

    def _release(self, key: int, ref: weakref.ReferenceType[torch.UntypedStorage]) -> None:
        with self._lock:
            entry = self._live.get(key)
            if entry is not None and entry.ref is ref:
                del self._live[key]
                if entry.host:
                    self._host -= entry.counted
                else:
                    self._current -= entry.counted

    def _resize(self, entry: _Entry, nbytes: int) -> None:
        counted = rounded_bytes(nbytes, self.granularity)
        if entry.host:
            self._host += counted - entry.counted
        else:
            self._current += counted - entry.counted
        entry.nbytes, entry.counted = nbytes, counted
        self._bump_peak()

    def _refresh_sizes(self) -> None:
        for entry in list(self._live.values()):
            storage = entry.ref()
            if storage is not None and storage.nbytes() != entry.nbytes:
                self._resize(entry, storage.nbytes())

    def _bump_peak(self) -> None:
        if self._current > self._peak:
            self._peak = self._current
        if self._current > self._phase_peak:
            self._phase_peak = self._current
        self._host_peak = max(self._host_peak, self._host)
        self._all_peak = max(self._all_peak, self._current + self._host)

    def _patch_storage_resize(self) -> None:
        # UntypedStorage.resize_ is not an aten op, so it never reaches the mode (FSDP frees parameters this
        # way); wrap it while the mode is active, as torch.distributed._tools.mem_tracker does.
        original = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            result = original(storage, size)
            with tracker._lock:
                entry = tracker._live.get(id(storage))
                if entry is not None and entry.ref() is storage and entry.nbytes != storage.nbytes():
                    tracker._resize(entry, storage.nbytes())
            return result

        self._saved_resize = original
        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign, assignment]

    def _restore_storage_resize(self) -> None:
        if self._saved_resize is not None:
            torch.UntypedStorage.resize_ = self._saved_resize  # type: ignore[method-assign]
            self._saved_resize = None


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module holds: parameters, buffers, plain tensor attributes and bitsandbytes states."""
    found: list[torch.Tensor] = []
    for sub in module.modules():
        found.extend(p for p in sub._parameters.values() if p is not None)
        found.extend(b for b in sub._buffers.values() if b is not None)
        found.extend(v for v in vars(sub).values() if isinstance(v, torch.Tensor))
        # bitsandbytes Linear8bitLt keeps CB/SCB on a MatmulLtState
        found.extend(_tensor_attrs(getattr(sub, "state", None)))
        for param in sub._parameters.values():
            found.extend(_quant_tensors(param))
    return found


def _quant_tensors(param: object) -> Iterable[torch.Tensor]:
    # Params4bit.quant_state (absmax, code, offset, nested state2); Int8Params.CB / SCB
    yield from _quant_state_tensors(getattr(param, "quant_state", None))
    for name in ("CB", "SCB"):
        value = getattr(param, name, None)
        if isinstance(value, torch.Tensor):
            yield value


def _quant_state_tensors(state: object, depth: int = 0) -> Iterable[torch.Tensor]:
    if state is None or depth > 2:
        return
    for name in _QUANT_STATE_TENSORS:
        value = getattr(state, name, None)
        if isinstance(value, torch.Tensor):
            yield value
    yield from _quant_state_tensors(getattr(state, "state2", None), depth + 1)


def _tensor_attrs(obj: object) -> Iterable[torch.Tensor]:
    if obj is None or isinstance(obj, torch.Tensor) or not hasattr(obj, "__dict__"):
        return
    if type(obj).__module__.split(".")[0] != "bitsandbytes":
        return
    yield from (v for v in vars(obj).values() if isinstance(v, torch.Tensor))
