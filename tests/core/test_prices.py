"""The price table: every row has a source and a date, a file lays a company's own prices over it."""

from __future__ import annotations

import json
from datetime import date

import pytest

from app.core.prices import Price, bundled_prices, price_table
from app.core.tiers import GPU_TIERS
from app.errors import InputError


def test_every_bundled_price_has_a_source_and_a_date() -> None:
    table = bundled_prices()
    names = {t.name for t in GPU_TIERS}
    assert table.origin == "bundled" and len(table.prices) >= 20
    for p in table.prices:
        assert p.gpu in names and p.source.startswith("https://") and p.provider
        assert date(2020, 1, 1) <= p.as_of <= date(2026, 12, 31)
        assert p.as_of.isoformat() in p.label  # a price is never shown without its date
    on_demand = {p.provider.split(" ")[0] for p in table.prices if p.kind == "on_demand"}
    assert {"AWS", "Lambda", "RunPod", "Modal"} <= on_demand  # a few named clouds


def test_the_cheapest_on_demand_quote_is_the_one_used() -> None:
    h100 = bundled_prices().hourly("H100 80GB")
    assert h100 is not None
    assert h100.usd == min(p.usd for p in bundled_prices().prices if p.gpu == "H100 80GB" and p.kind == "on_demand")
    assert bundled_prices().hourly("RTX 4070 Ti") is None  # no quote found: time shown, no cost
    assert bundled_prices().list_price("RTX 4090") is not None


def test_the_tiers_priced_later_carry_dated_quotes_and_say_what_a_marketplace_is() -> None:
    table = bundled_prices()
    for gpu in ("RTX A6000", "H100 NVL", "V100 32GB", "RTX 4080", "RTX 3060"):
        assert table.hourly(gpu) is not None, gpu
    for p in table.prices:
        if p.provider.startswith(("Vast.ai", "Akash")):
            assert "marketplace" in p.provider and "marketplace" in p.note, p
    # Lambda's V100 is the 16 GB board: it does not price the 32 GB tier
    assert all(p.provider.split(" ")[0] != "Lambda" for p in table.prices if p.gpu == "V100 32GB")


def _file(*rows: dict, replace: bool = False) -> str:
    return json.dumps({"replace_bundled": replace, "prices": list(rows)})


NEGOTIATED = {
    "gpu": "h100 80gb",
    "usd": 1.25,
    "provider": "Acme contract",
    "as_of": "2026-07-01",
    "source": "https://intranet/acme",
}


def test_a_price_file_replaces_the_gpus_and_kinds_it_names() -> None:
    table = price_table(_file(NEGOTIATED), "data/prices.json")
    assert table.origin == "bundled + data/prices.json"
    h100 = [p for p in table.prices if p.gpu == "H100 80GB" and p.kind == "on_demand"]
    assert [p.provider for p in h100] == ["Acme contract"]  # the bundled H100 quotes are gone
    assert table.hourly("A100 80GB") == bundled_prices().hourly("A100 80GB")  # others stay
    only = price_table(_file(NEGOTIATED, replace=True), "x.json")
    assert [p.gpu for p in only.prices] == ["H100 80GB"]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({**NEGOTIATED, "gpu": "H100"}, "unknown GPU 'H100'"),
        ({**NEGOTIATED, "as_of": "last week"}, "prices.0.as_of"),
        ({**NEGOTIATED, "usd": -1}, "prices.0.usd"),
        ({k: v for k, v in NEGOTIATED.items() if k != "source"}, "prices.0.source"),
    ],
)
def test_a_bad_price_file_is_one_error_naming_the_file_and_row(row: dict, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        price_table(_file(row), "p.json")
    assert str(info.value).startswith("prices file p.json: ") and fragment in str(info.value)
    with pytest.raises(InputError, match="not JSON"):
        price_table("{", "p.json")


def test_labels_say_what_and_when() -> None:
    p = Price(gpu="L4", usd=0.8, provider="X", as_of=date(2026, 5, 7), source="https://x")
    assert p.label == "$0.80/GPU-h on demand at X (as of 2026-05-07)"
