"""The plans of a comparison: each a model, a TrainingPlan and optionally the GPU tier to judge it on.

One plan is written as a compact string in three places that must agree:

- the permalink, a repeated `plan=` whose value is itself a query string (`model=org/name&method=lora&gpu=A100+80GB`),
- the CLI, `--plan "model=org/name method=lora gpu=A100 80GB"` (a word without `=` continues the value before it),
- a JSON body or a YAML/JSON file, as an object (`{"model": ..., "method": ..., "gpu": ...}`) or that string.

Every plan's fields go through the one plan-input adapter (app/plan_input.py), so a bad value gets the words it
gets everywhere else; here each error is prefixed with the plan it is in ("2nd plan: rank: ...", field `plan2.rank`),
and every bad plan is reported at once.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from app.core.plan import TrainingPlan
from app.core.tiers import GPU_TIERS, find_tier
from app.errors import GpuplanError, PlanError
from app.plan_input import as_text, build_plan, read_values

MIN_PLANS = 2
MAX_PLANS = 6
MAX_MODEL_CHARS = 300
MAX_PLAN_TEXT = 2000  # one plan's compact string: far more than every field spelled out
ENTRY_KEYS = ("model", "gpu")  # beside TrainingPlan's fields


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class PlanEntry:
    """One plan of a comparison: a model name (resolved later), the plan, and the GPU tier it is pinned to."""

    model: str
    plan: TrainingPlan
    gpu: str | None = None

    def pairs(self) -> list[tuple[str, str]]:
        """The shortest spelling: the model, the GPU if pinned, and every plan field that is not the default."""
        default = TrainingPlan().model_dump()
        chosen = self.plan.model_dump()
        default["quant"] = "nf4" if self.plan.method == "qlora" else "none"  # what quant=None (auto) gives
        pairs = [("model", self.model)] + ([("gpu", self.gpu)] if self.gpu else [])
        return pairs + [(k, as_text(v)) for k, v in chosen.items() if v != default[k]]

    def query(self) -> str:
        """The plan as one permalink `plan=` value (a query string of its own)."""
        return urlencode(self.pairs(), safe="/@")

    def text(self) -> str:
        """The plan as the CLI's `--plan` string."""
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.pairs())


def _prefixed(exc: GpuplanError, number: int) -> list[dict[str, Any]]:
    """The error's field errors, each named inside plan `number` (`plan2.rank`)."""
    errors = exc.errors or [{"field": "plan", "message": exc.detail}]
    return [
        {"field": f"plan{number}.{e.get('field', 'plan')}", "message": str(e.get("message", exc.detail))}
        for e in errors
    ]


def in_plan(exc: GpuplanError, number: int) -> GpuplanError:
    """The same error (its class, status and title), its detail and fields saying which plan it is about."""
    exc.errors = _prefixed(exc, number)
    exc.detail = f"{ordinal(number)} plan: {exc.detail}"
    exc.args = (exc.detail,)
    return exc


def _gpu(value: str) -> tuple[str | None, list[dict[str, str]]]:
    tier = find_tier(value)
    if tier is not None:
        return tier.name, []
    names = ", ".join(t.name for t in GPU_TIERS)
    return None, [{"field": "gpu", "message": f"unknown GPU tier {value!r}; known tiers: {names}"}]


def _model(value: object) -> tuple[str, list[dict[str, str]]]:
    if not isinstance(value, str) or not value.strip():
        return "", [{"field": "model", "message": "name a model: a catalog id or a Hub id org/name[@revision]"}]
    if len(value) > MAX_MODEL_CHARS:
        return "", [{"field": "model", "message": f"give a catalog or Hub id under {MAX_MODEL_CHARS} characters"}]
    return value.strip(), []


def _unknown(keys: Iterable[str]) -> list[dict[str, str]]:
    known = set(ENTRY_KEYS) | set(TrainingPlan.model_fields)
    return [
        {"field": key, "message": "unknown field; a plan takes model, gpu and the plan fields of /api/v1/estimate"}
        for key in dict.fromkeys(keys)
        if key not in known
    ]


def entry_from_values(values: Mapping[str, Any], number: int, *, strict: bool = False) -> PlanEntry:
    """One plan from its values (text from a query or the CLI; typed from JSON with `strict`); every bad field of
    it in one PlanError naming the plan."""
    errors = _unknown(values)
    model, bad = _model(values.get("model"))
    errors += bad
    gpu = None
    if values.get("gpu") not in (None, ""):
        gpu, bad = _gpu(str(values["gpu"]))
        errors += bad
    plan_values = {k: v for k, v in values.items() if k in TrainingPlan.model_fields}
    plan = None
    try:
        plan = build_plan(plan_values, strict=strict)
    except PlanError as exc:
        errors += exc.errors
    if errors or plan is None:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise in_plan(PlanError(detail, errors=errors), number)
    return PlanEntry(model=model, plan=plan, gpu=gpu)


def entry_from_pairs(pairs: Sequence[tuple[str, str]], number: int) -> PlanEntry:
    """One plan from text (key, value) pairs: empty values mean the default, repeated targets are joined."""
    values: dict[str, Any] = {**read_values(pairs)}
    extra = {k: v.strip() for k, v in pairs if k not in TrainingPlan.model_fields and v.strip()}
    return entry_from_values({**extra, **values}, number)


def split_query(text: str) -> list[tuple[str, str]]:
    """A permalink `plan=` value (`model=...&method=lora`) as pairs."""
    return parse_qsl(text, keep_blank_values=True)


def split_words(text: str) -> list[tuple[str, str]]:
    """The CLI's `model=x method=lora gpu=A100 80GB` as pairs; a permalink's `&`-separated value works too."""
    if "&" in text or " " not in text.strip():
        bare = next((part for part in text.strip().split("&") if part and "=" not in part), None)
        if bare is not None:
            raise PlanError(f"cannot read {bare!r}: write each field as name=value, e.g. model=Qwen/Qwen2.5-7B")
        return split_query(text.strip())
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PlanError(f"cannot read the plan {text!r}: {exc}") from None
    pairs: list[tuple[str, str]] = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            pairs.append((key.strip(), value))
        elif pairs:  # `gpu=A100 80GB`: the word continues the value before it
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {word}")
        else:
            raise PlanError(f"cannot read {word!r}: write each field as name=value, e.g. model=Qwen/Qwen2.5-7B")
    return pairs


def check_count(count: int, minimum: int = MIN_PLANS, field: str = "plan") -> None:
    """2 to 6 plans (the HTML page builds a comparison from 1); `field` is where they were given."""
    if minimum <= count <= MAX_PLANS:
        return
    message = f"give {minimum} to {MAX_PLANS} plans to compare (one `{field}` entry each); got {count}"
    raise PlanError(f"{field}: {message}", errors=[{"field": field, "message": message}])


def _entry(item: Mapping[str, Any] | str, number: int, strict: bool) -> PlanEntry:
    if isinstance(item, Mapping):
        return entry_from_values(item, number, strict=strict)
    try:
        if not isinstance(item, str):
            raise PlanError("a plan is an object of fields, or a string like 'model=... method=lora'")
        if len(item) > MAX_PLAN_TEXT:
            raise PlanError(f"a plan is at most {MAX_PLAN_TEXT} characters")
        pairs = split_words(item)
    except PlanError as exc:
        raise in_plan(exc, number) from None
    return entry_from_pairs(pairs, number)


def parse_entries(
    items: Sequence[Mapping[str, Any] | str], *, minimum: int = MIN_PLANS, strict: bool = False, field: str = "plan"
) -> list[PlanEntry]:
    """Every plan of a comparison (objects, or compact strings); every bad one reported at once, naming its plan."""
    check_count(len(items), minimum, field)
    entries, errors = [], []
    for number, item in enumerate(items, 1):
        try:
            entries.append(_entry(item, number, strict))
        except PlanError as exc:
            errors.append(exc)
    if errors:
        merged = [e for exc in errors for e in exc.errors]
        raise PlanError("; ".join(exc.detail for exc in errors), errors=merged)
    return entries
