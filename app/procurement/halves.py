"""The two halves of a procurement report as they are asked: each a compact string, a query string of its own.

- the permalink: `/report?train=<model=...&method=qlora&train_tokens=...>&serve=<model=...&context=8192>`,
- the CLI: `--train "model=... method=qlora"` and `--serve "model=... engine=vllm context=8192"`.

The training half is a comparison plan (app/compare/entries.py: model, gpu, TrainingPlan's fields) plus the run
size (train_tokens, epochs); the serving half is a model and ServingPlan's fields. Every bad field of both halves
is reported at once, each named inside its half (`train: rank: ...`, field `train.rank`; `serve: context: ...`).
`serve_months` (the query's `serve_months=`, the CLI's `--serve-months`, default 1) is the serving period priced.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError

from app.compare.entries import MAX_MODEL_CHARS, MAX_PLAN_TEXT, PlanEntry, entry_from_pairs, split_words
from app.core.throughput import RunSize
from app.errors import GpuplanError, InputError, PlanError
from app.plan_input import as_text
from app.procurement.costs import MAX_SERVE_MONTHS
from app.serving.inputs import build_serving_plan, canonical_pairs
from app.serving.inputs import read_values as serving_values
from app.serving.plan import ServingPlan

HALVES = ("train", "serve")
RUN_KEYS = tuple(RunSize.model_fields)


def half_errors(exc: GpuplanError, half: str) -> list[dict[str, Any]]:
    """The error's field errors, each named inside `half` (`plan1.rank` from a comparison entry -> `train.rank`)."""
    errors = exc.errors or [{"field": "", "message": exc.detail}]
    out = []
    for e in errors:
        field = str(e.get("field") or "").removeprefix("plan1.").removeprefix("plan1")
        out.append({"field": f"{half}.{field}" if field else half, "message": str(e.get("message", exc.detail))})
    return out


def in_half(exc: GpuplanError, half: str) -> GpuplanError:
    """The same error (class, status, title), its detail and fields naming the half (`serve: context: ...`)."""
    exc.errors = half_errors(exc, half)
    exc.detail = "; ".join(f"{e['field'].replace('.', ': ', 1)}: {e['message']}" for e in exc.errors)
    exc.args = (exc.detail,)
    return exc


@dataclass(frozen=True)
class TrainingAsk:
    """The training half as asked: the plan (model, optional pinned GPU tier, plan fields) and the run size."""

    entry: PlanEntry
    run: RunSize

    def pairs(self) -> list[tuple[str, str]]:
        default = RunSize()
        run = [(k, as_text(getattr(self.run, k))) for k in RUN_KEYS if getattr(self.run, k) != getattr(default, k)]
        return self.entry.pairs() + run

    def query(self) -> str:
        return urlencode(self.pairs(), safe="/@")

    def text(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.pairs())


@dataclass(frozen=True)
class ServingAsk:
    """The serving half as asked: a model name (resolved later) and the serving plan."""

    model: str
    plan: ServingPlan

    def pairs(self) -> list[tuple[str, str]]:
        return [("model", self.model), *canonical_pairs(self.plan)]

    def query(self) -> str:
        return urlencode(self.pairs(), safe="/@")

    def text(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.pairs())


def _pairs(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_PLAN_TEXT:
        raise InputError(f"a half is at most {MAX_PLAN_TEXT} characters")
    return split_words(text)


def _run(pairs: list[tuple[str, str]]) -> RunSize:
    given = {k: v.strip() for k, v in pairs if k in RUN_KEYS and v.strip()}
    try:
        return RunSize.model_validate(given)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": str(e["msg"])} for e in exc.errors()]
        raise PlanError("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from None


def training_ask(text: str) -> TrainingAsk:
    """`model=... method=qlora gpu=H100 train_tokens=500000000` (or its `&` query string) as a TrainingAsk."""
    pairs = _pairs(text)
    errors: list[dict[str, Any]] = []
    run = entry = None
    try:
        run = _run(pairs)
    except PlanError as exc:
        errors += exc.errors
    try:
        entry = entry_from_pairs([(k, v) for k, v in pairs if k not in RUN_KEYS], 1)
    except PlanError as exc:
        errors += exc.errors
    if errors or run is None or entry is None:
        raise PlanError("", errors=errors)
    return TrainingAsk(entry=entry, run=run)


def _serving_model(pairs: list[tuple[str, str]]) -> tuple[str, list[dict[str, str]]]:
    names = [v.strip() for k, v in pairs if k == "model" and v.strip()]
    if not names:
        return "", [{"field": "model", "message": "name a model: a catalog id or a Hub id org/name[@revision]"}]
    if len(names[-1]) > MAX_MODEL_CHARS:
        return "", [{"field": "model", "message": f"give a catalog or Hub id under {MAX_MODEL_CHARS} characters"}]
    return names[-1], []


def serving_ask(text: str) -> ServingAsk:
    """`model=... engine=vllm context=8192 concurrency=16` (or its `&` query string) as a ServingAsk."""
    pairs = _pairs(text)
    known = {"model", *ServingPlan.model_fields}
    errors: list[dict[str, Any]] = [
        {"field": k, "message": "unknown field; the serving half takes model and the fields of /api/v1/inference"}
        for k in dict.fromkeys(k for k, _ in pairs)
        if k not in known
    ]
    model, bad = _serving_model(pairs)
    errors += bad
    plan = None
    try:
        plan = build_serving_plan(serving_values(pairs))
    except InputError as exc:
        errors += exc.errors
    if errors or plan is None:
        raise InputError("", errors=errors)
    return ServingAsk(model=model, plan=plan)


def parse_halves(train: str | None, serve: str | None) -> tuple[TrainingAsk | None, ServingAsk | None]:
    """Both halves (either may be absent, not both); every bad field of both in one error naming its half."""
    if not (train or "").strip() and not (serve or "").strip():
        message = "give the training plan (train=...), the serving plan (serve=...), or both"
        raise InputError(message, errors=[{"field": "train", "message": message}])
    asks: dict[str, Any] = {"train": None, "serve": None}
    failed: list[GpuplanError] = []
    for half, text, read in (("train", train, training_ask), ("serve", serve, serving_ask)):
        if not (text or "").strip():
            continue
        try:
            asks[half] = read(text or "")
        except InputError as exc:
            failed.append(in_half(exc, half))
    if failed:
        cls = PlanError if all(isinstance(e, PlanError) for e in failed) else InputError
        errors = [e for exc in failed for e in exc.errors]
        raise cls("; ".join(exc.detail for exc in failed), errors=errors)
    return asks["train"], asks["serve"]


@dataclass(frozen=True)
class ReportAsk:
    """A report as asked: either half or both, and the 30-day months of serving its serving cost is for."""

    train: TrainingAsk | None
    serve: ServingAsk | None
    serve_months: float = 1.0

    def query(self) -> list[tuple[str, str]]:
        """The permalink's pairs: `train=` and `serve=`, each a query string of its own; serve_months unless 1."""
        pairs = [("train", self.train.query())] if self.train else []
        pairs += [("serve", self.serve.query())] if self.serve else []
        return pairs + ([("serve_months", as_text(self.serve_months))] if self.serve_months != 1 else [])


def serve_months(text: str | None, serving: bool) -> float:
    """The months the serving cost is for: a number over 0 and at most 120 (default 1), with a serving half."""
    if text is None or not text.strip():
        return 1.0
    try:
        months = float(text.strip())
    except ValueError:
        months = -1.0
    message = ""
    if not 0 < months <= MAX_SERVE_MONTHS:  # also refuses nan
        message = f"give the 30-day months of serving to price, a number over 0 and at most {MAX_SERVE_MONTHS:g}"
    elif not serving:
        message = "it prices the serving plan: give serve=... too, or leave serve_months out"
    if message:
        raise InputError(f"serve_months: {message}", errors=[{"field": "serve_months", "message": message}])
    return months


def parse_report(train: str | None, serve: str | None, months: str | None = None) -> ReportAsk:
    """Both halves and the serving months; every bad field of all three in one error (each naming its half)."""
    failed: list[InputError] = []
    halves: tuple[TrainingAsk | None, ServingAsk | None] = (None, None)
    count = 1.0
    try:
        halves = parse_halves(train, serve)
    except InputError as exc:
        failed.append(exc)
    try:
        count = serve_months(months, serving=bool((serve or "").strip()))
    except InputError as exc:
        failed.append(exc)
    if failed:
        errors = [e for exc in failed for e in exc.errors]
        cls = PlanError if all(isinstance(e, PlanError) for e in failed) else InputError
        raise cls("; ".join(exc.detail for exc in failed), errors=errors)
    return ReportAsk(train=halves[0], serve=halves[1], serve_months=count)
