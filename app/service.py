"""The web edges' one path to an answer: resolve a model, estimate and recommend (cached), fit, and export."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from app import catalog
from app.core.band import BandAnswer
from app.core.estimate import estimate
from app.core.fit import FitResult, fit
from app.core.gpus import GpuTier, Recommendation, recommend
from app.core.plan import TrainingPlan
from app.core.prices import PriceTable, price_table
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.core.throughput import RunSize
from app.errors import ConfigError, HubError, InputError
from app.exports import report
from app.resolver import classify, resolve_model
from app.settings import Settings

if TYPE_CHECKING:
    from app.hub.client import HubClient
    from app.inventory.pool import BuildPool


class Counters(Protocol):
    """What the planner counts (app/http/metrics.py's Metrics implements it)."""

    def count_estimate(self) -> None: ...

    def count_hub_fetch(self, outcome: str) -> None: ...


class NoCounts:
    """Counters that count nothing: the CLI's (the web service's Metrics counts)."""

    def count_estimate(self) -> None:
        return None

    def count_hub_fetch(self, outcome: str) -> None:
        return None


ExportFormat = Literal["json", "md", "csv", "svg"]
MEDIA_TYPES: dict[ExportFormat, str] = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "svg": "image/svg+xml",
}
EXPORTS_KEPT = 8  # rendered exports one Planned keeps (formats x bands)
# An uncached plan of a model whose last uncached plan took at most this long is answered on the event loop: a
# worker thread costs more than the plan itself (the hand-over, and the event loop then waiting on the GIL for each
# socket it serves while the worker computes: 13.8 vs 8.3 ms of CPU per unique-plan request measured in-process,
# benchmarks/bench_web.py). Longer ones (and a model's first) still go to a thread, so the loop is never held long.
INLINE_PLAN_S = 0.025
CacheKey = tuple[str, str | None, str, TrainingPlan, float, RunSize, PriceTable, float]


def load_prices(settings: Settings) -> PriceTable:
    """The bundled price table with the settings' price file laid over it (re-read when the file changes)."""
    path = settings.prices_path
    if path is None:
        return price_table()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise InputError(f"prices file {path}: cannot read it ({exc.strerror or exc})") from None
    return _prices_file(str(path), stamp)


@lru_cache(maxsize=8)
def _prices_file(path: str, stamp: int) -> PriceTable:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"prices file {path}: cannot read it ({exc})") from None
    return price_table(text, path)


@dataclass(frozen=True)
class Planned:
    """One model and plan with its estimate and (for CUDA plans) the GPU recommendation."""

    model: ModelSpec
    estimate: Estimate
    recommendation: Recommendation | None
    run: RunSize = field(default_factory=RunSize)
    _exports: dict[tuple[ExportFormat, BandAnswer | None], str] = field(default_factory=dict, compare=False, repr=False)

    def export(self, fmt: ExportFormat, band: BandAnswer | None = None) -> str:
        """The estimate as JSON (report.payload), Markdown, CSV or a standalone SVG chart, rendered once per band
        (the band changes only when the store's comparable runs do; the last few are kept)."""
        key = (fmt, band)
        text = self._exports.get(key)
        if text is None:
            if len(self._exports) >= EXPORTS_KEPT:
                self._exports.clear()
            text = self._exports[key] = self._render(fmt, band)
        return text

    def _render(self, fmt: ExportFormat, band: BandAnswer | None = None) -> str:
        if fmt == "md":
            return report.markdown(self.model, self.estimate, self.recommendation, band)
        if fmt == "csv":
            return report.csv_text(self.estimate)
        if fmt == "svg":
            from app.exports.svg import breakdown_chart

            return breakdown_chart(self.estimate, self.recommendation, standalone=True)
        return report.payload_json(self.model, self.estimate, self.recommendation, band)


def _model_key(model: ModelSpec) -> tuple[str, str | None, str]:
    return model.id, model.revision, model.config_hash


class Planner:
    """Resolves models (catalog or Hub, counting Hub outcomes) and keeps the latest estimates in an LRU."""

    def __init__(
        self,
        settings: Settings,
        hub: HubClient | None,
        metrics: Counters,
        cache_size: int = 512,
        builds: BuildPool | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.builds = builds
        self.metrics = metrics
        self._cache: OrderedDict[CacheKey, Planned] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._took: dict[tuple[str, str | None, str], float] = {}  # model -> seconds of its last uncached plan

    async def resolve(self, name: str) -> ModelSpec:
        """A catalog id, Hub id `org/name[@revision]` or uploaded `config:<hash>` as a ModelSpec; never a local file."""
        if "@" not in name and (spec := catalog.load_spec(name)) is not None:  # the hot path: one cached lookup
            return spec
        if classify(name, allow_files=False) != "hub":
            return await resolve_model(name, self.settings, self.hub, allow_files=False, builds=self.builds)
        try:
            spec = await resolve_model(name, self.settings, self.hub, allow_files=False, builds=self.builds)
        except (HubError, ConfigError) as exc:
            self.metrics.count_hub_fetch(exc.slug)
            raise
        self.metrics.count_hub_fetch("ok")
        return spec

    def _key(
        self, model: ModelSpec, plan: TrainingPlan, run: RunSize, prices: PriceTable, safety: float = 1.0
    ) -> CacheKey:
        return (*_model_key(model), plan, self.settings.headroom, run, prices, safety)

    def _cached(self, key: CacheKey) -> Planned | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def plan(self, model: ModelSpec, plan: TrainingPlan, run: RunSize | None = None, safety: float = 1.0) -> Planned:
        """estimate() and recommend() (priced and timed for `run`; every per-GPU estimate judged × `safety`, the
        safe answer) for one plan; identical requests come from the cache."""
        headroom, run, prices = self.settings.headroom, run or RunSize(), load_prices(self.settings)
        key = self._key(model, plan, run, prices, safety)
        self.metrics.count_estimate()
        hit = self._cached(key)
        if hit is not None:
            return hit
        started = time.perf_counter()
        est = estimate(model, plan)
        rec = (
            recommend(model, est, headroom, prices=prices, run=run, safety_factor=safety)
            if plan.device == "cuda"
            else None
        )
        planned = Planned(model=model, estimate=est, recommendation=rec, run=run)
        self._took[_model_key(model)] = time.perf_counter() - started
        with self._lock:
            self._cache[key] = planned
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return planned

    async def fit(self, model: ModelSpec, plan: TrainingPlan, tier: GpuTier) -> FitResult:
        """Inverse planning (tens of estimates) in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(fit, model, plan, tier, self.settings.headroom)

    async def plan_async(
        self, model: ModelSpec, plan: TrainingPlan, run: RunSize | None = None, safety: float = 1.0
    ) -> Planned:
        """plan(): a cache hit at once; a miss on the event loop when this model's last one took at most
        INLINE_PLAN_S, else (and for a model's first) in a worker thread (a recommendation may take many estimates)."""
        run = run or RunSize()
        key = self._key(model, plan, run, load_prices(self.settings), safety)
        hit = self._cached(key)
        if hit is not None:
            self.metrics.count_estimate()
            return hit
        took = self._took.get(_model_key(model))
        if took is not None and took <= INLINE_PLAN_S:
            return self.plan(model, plan, run, safety)
        return await asyncio.to_thread(self.plan, model, plan, run, safety)
