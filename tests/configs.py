"""Tiny model configs shared by the tests (widths small enough to build and train in well under a second), and
the catalog's specs by id."""

from __future__ import annotations

from typing import Any

from app.catalog import load_spec
from app.core.spec import ModelSpec


def spec(model_id: str) -> ModelSpec:
    """A bundled catalog model's spec (the test fails if the catalog lacks it)."""
    found = load_spec(model_id)
    assert found is not None, model_id
    return found


TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
}
