"""GPU prices as data: on-demand $/GPU-hour from named clouds and list prices, each with its source and date.

The bundled table (app/core/data/prices.json) quotes each row as its source stated it on `as_of`; it is never
presented as current. A company loads its own (negotiated) prices with a file in the same format
(`GPUPLAN_PRICES_FILE`, else `prices.json` in the data dir): a GPU and kind it lists replace the bundled rows of that
GPU and kind, and `"replace_bundled": true` drops the bundled table altogether.
"""

from __future__ import annotations

import json
from datetime import date
from functools import cached_property, lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.tiers import tier_name
from app.errors import InputError

PriceKind = Literal["on_demand", "list"]
BUNDLED = "bundled"


class Price(BaseModel):
    """One quoted price: $/GPU-hour on demand, or the list (purchase) price of one GPU."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str = Field(description="A GPU tier name (see /api/v1/gpus).")
    kind: PriceKind = Field("on_demand", description="on_demand: USD per GPU-hour; list: USD per GPU, to buy.")
    usd: float = Field(gt=0, le=10_000_000)
    provider: str = Field(min_length=1, max_length=200, description="The cloud or vendor quoting it.")
    as_of: date = Field(description="The date the source stated this price.")
    source: str = Field(min_length=1, max_length=500, description="Where it was read (URL).")
    note: str = Field("", max_length=500)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        return tier_name(value, "GPU")

    @property
    def label(self) -> str:
        """'$3.78/GPU-h on demand at Lambda (as of 2026-05-07)': a price is never shown without its date."""
        amount = f"${self.usd:,.2f}/GPU-h on demand" if self.kind == "on_demand" else f"${self.usd:,.0f} list price"
        return f"{amount} at {self.provider} (as of {self.as_of.isoformat()})"


class PriceFile(BaseModel):
    """The JSON of a price file: its rows, and whether they replace the bundled table."""

    model_config = ConfigDict(extra="forbid")

    about: str = ""
    replace_bundled: bool = False
    prices: tuple[Price, ...]


class PriceTable(BaseModel):
    """The prices recommendations use, and where they came from."""

    model_config = ConfigDict(frozen=True)

    prices: tuple[Price, ...]
    origin: str = Field(BUNDLED, description="'bundled', or the price file laid over it.")

    def hourly(self, gpu: str) -> Price | None:
        """The cheapest on-demand $/GPU-hour quoted for `gpu` (ties: the latest quote)."""
        return self._cheapest.get((gpu, "on_demand"))

    def list_price(self, gpu: str) -> Price | None:
        """The cheapest list (purchase) price quoted for `gpu` (ties: the latest quote)."""
        return self._cheapest.get((gpu, "list"))

    def __hash__(self) -> int:
        return self._hash  # the planner's cache key holds the table: hashing every row per request cost ~10 µs

    @cached_property
    def _hash(self) -> int:
        return hash((self.prices, self.origin))

    # cached_property: the table is frozen, so the cheapest quote per (tier, kind) is found once, not per tier of
    # every recommendation (a scan of every row each time)
    @cached_property
    def _cheapest(self) -> dict[tuple[str, str], Price]:
        best: dict[tuple[str, str], Price] = {}
        for p in self.prices:
            key = (p.gpu, p.kind)
            if key not in best or (p.usd, -p.as_of.toordinal()) < (best[key].usd, -best[key].as_of.toordinal()):
                best[key] = p
        return best


def parse_price_file(text: str, origin: str) -> PriceFile:
    """A price file's JSON, or one InputError naming the file and every bad row."""
    try:
        return PriceFile.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise InputError(f"prices file {origin}: not JSON ({exc.msg}, line {exc.lineno})") from None
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(x) for x in e["loc"]), "message": str(e["msg"]).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InputError(f"prices file {origin}: {detail}", errors=errors) from None


@lru_cache(maxsize=1)
def bundled_prices() -> PriceTable:
    """The table shipped with gpuplan (read once, on first use)."""
    text = resources.files("app.core.data").joinpath("prices.json").read_text(encoding="utf-8")
    return PriceTable(prices=parse_price_file(text, BUNDLED).prices)


def price_table(override_text: str | None = None, origin: str = "") -> PriceTable:
    """The bundled table with a price file laid over it: the file's (GPU, kind) pairs replace the bundled rows."""
    bundled = bundled_prices()
    if override_text is None:
        return bundled
    override = parse_price_file(override_text, origin)
    named = {(p.gpu, p.kind) for p in override.prices}
    kept = () if override.replace_bundled else tuple(p for p in bundled.prices if (p.gpu, p.kind) not in named)
    return PriceTable(prices=kept + override.prices, origin=f"{BUNDLED} + {origin}")
