"""Which gpuplan tier a measured device is: the name torch reports, mapped as data (app/core/data/device_names.json)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.tiers import GpuTier, find_tier, tier_name

MEMORY_TOLERANCE = 0.10
"""A reported total memory more than 10 % off the tier's usable memory is another board under the same name."""


class DeviceName(BaseModel):
    """One reported device name and the tier it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_name: str = Field(min_length=1, description="As torch.cuda.get_device_name() reports it.")
    gpu: str = Field(description="The gpuplan tier.")
    source: str = Field(min_length=1)

    @field_validator("gpu")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        return tier_name(value)


def _key(name: str) -> str:
    return " ".join(name.lower().split())


@lru_cache(maxsize=1)
def device_names() -> dict[str, DeviceName]:
    """The bundled mapping, by normalised name (read once, on first use)."""
    text = resources.files("app.core.data").joinpath("device_names.json").read_text(encoding="utf-8")
    rows = [DeviceName.model_validate(row) for row in json.loads(text)["names"]]
    return {_key(row.device_name): row for row in rows}


def tier_for_device(device_name: str | None, total_memory_bytes: int | None = None) -> GpuTier | None:
    """The tier a measured device is, or None: its name (case and spacing ignored) must be listed, and a reported
    total memory must be within MEMORY_TOLERANCE of the tier's usable memory."""
    if not device_name:
        return None
    row = device_names().get(_key(device_name))
    tier = find_tier(row.gpu) if row else None
    if tier is None:
        return None
    if (
        total_memory_bytes is not None
        and abs(total_memory_bytes - tier.usable_bytes) > MEMORY_TOLERANCE * tier.usable_bytes
    ):
        return None
    return tier
