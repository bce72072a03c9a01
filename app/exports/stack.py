"""The stack an estimate models: gpuplan and the libraries whose allocations it follows, with installed versions."""

from __future__ import annotations

from importlib import metadata

# the libraries whose allocations the estimate models (and, where installed, the versions it was checked against)
STACK = ("transformers", "peft", "bitsandbytes", "accelerate", "torch")


def stack_versions() -> list[tuple[str, str]]:
    """gpuplan and the stack it models, with the versions installed beside it ("not installed" where absent)."""
    out = []
    for name in ("gpuplan", *STACK):
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out
