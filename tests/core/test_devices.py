"""The device names torch reports, mapped as data to gpuplan tiers (the tier a measured step time is held on)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from app.core.devices import device_names, tier_for_device
from app.core.tiers import GPU_TIERS, find_tier

MIB = 2**20


def test_every_row_names_a_tier_and_a_source() -> None:
    rows = json.loads(resources.files("app.core.data").joinpath("device_names.json").read_text())["names"]
    assert len(rows) == len(device_names()) >= 20  # no name listed twice
    for row in rows:
        assert find_tier(row["gpu"]) is not None, row
        assert row["source"], row


@pytest.mark.parametrize(
    ("name", "memory_mib", "tier"),
    [
        ("NVIDIA H200", 143_771, "H200"),  # what the lent H200 reports
        ("NVIDIA H100 80GB HBM3", 81_559, "H100 80GB"),
        ("NVIDIA H100 NVL", 95_830, "H100 NVL"),
        ("NVIDIA A100-SXM4-40GB", 40_960, "A100 40GB"),
        ("NVIDIA RTX 6000 Ada Generation", 49_140, "RTX 6000 Ada"),
        ("NVIDIA RTX A6000", 49_140, "RTX A6000"),
        ("Tesla T4", 15_360, "T4"),
        ("AMD Instinct MI300X", 196_592, "MI300X"),
        ("  nvidia   h200 ", None, "H200"),  # case and spacing ignored; no memory reported: the name decides
    ],
)
def test_a_reported_name_is_its_tier(name: str, memory_mib: int | None, tier: str) -> None:
    found = tier_for_device(name, memory_mib * MIB if memory_mib else None)
    assert found is not None and found.name == tier


@pytest.mark.parametrize(
    ("name", "memory_mib"),
    [
        ("NVIDIA GeForce RTX 4060 Ti", 8_188),  # the 8 GB board shares the 16 GB tier's name
        ("NVIDIA H200", 81_559),  # an H200 name with an H100's memory: not trusted
        ("NVIDIA H100 PCIe", 81_559),  # other peak rates than the SXM tier: left out
        ("AMD Radeon Graphics", 196_592),  # a generic ROCm name
        ("AMD EPYC", None),
        ("", None),
    ],
)
def test_a_name_that_is_no_tier_maps_to_nothing(name: str, memory_mib: int | None) -> None:
    assert tier_for_device(name, memory_mib * MIB if memory_mib else None) is None


def test_the_memory_check_accepts_every_tier_at_its_own_memory() -> None:
    for row in device_names().values():
        tier = find_tier(row.gpu)
        assert tier is not None and tier_for_device(row.device_name, tier.usable_bytes) == tier
    assert {r.gpu for r in device_names().values()} <= {t.name for t in GPU_TIERS}
