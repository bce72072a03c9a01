"""The vocabulary of the recipe tables: what one field of a training config does to the plan.

Each format module is data: `MAPS` (field -> the plan fields it sets and a converter), `NOT_MODELLED`
(field -> why gpuplan cannot honour it), `SILENT` (fields with no memory effect, accepted silently) and
`DEFAULTS` (what the framework does when a memory-relevant field is absent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Doc = Mapping[str, Any]


class NotModelledValue(Exception):
    """This value of an honoured field changes memory in a way gpuplan does not model."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class BadValue(Exception):
    """The value has the wrong type or is not one the framework accepts."""


@dataclass(frozen=True)
class Ctx:
    """What a converter may look at besides its own value: its mapping (with defaults) and the top-level one."""

    doc: Doc
    root: Doc


@dataclass(frozen=True)
class Approx:
    """Plan values that approximate the field (honoured, and also reported as not modelled with `why`)."""

    values: dict[str, Any]
    why: str


Outcome = dict[str, Any] | Approx
Convert = Callable[[Any, Ctx], Outcome]


@dataclass(frozen=True)
class Maps:
    """Honoured: sets `targets` (plan fields, or `model`) to what `convert` returns ({} when the value sets nothing)."""

    targets: tuple[str, ...]
    convert: Convert


@dataclass(frozen=True)
class Unmodelled:
    """Changes memory in a way gpuplan does not model; reported when `matters(value)`, else accepted silently."""

    why: str
    matters: Callable[[Any, Ctx], bool] = field(default=lambda v, _ctx: truthy_flag(v))


@dataclass(frozen=True)
class Nested:
    """A mapping whose keys are read with their own table, reported as `outer.inner`."""

    table: Mapping[str, Rule]
    key: Callable[[str], str] = field(default=lambda k: k)  # how an inner key is looked up
    unlisted_silent: bool = True  # inner keys not in `table`: accepted silently (else listed as unknown)
    implies: Mapping[str, Any] = field(default_factory=dict)  # plan values a non-empty mapping sets by itself
    defaults: Mapping[str, Any] = field(default_factory=dict)  # what the library does when an inner key is absent
    active: Callable[[Ctx], bool] = field(default=lambda _ctx: True)  # False: the whole mapping has no effect


class _Silent:
    def __repr__(self) -> str:
        return "SILENT"


SILENT_RULE = _Silent()
Rule = Maps | Unmodelled | Nested | _Silent


def names(text: str) -> frozenset[str]:
    """A set of field names written as whitespace-separated words."""
    return frozenset(text.split())


def table(maps: Mapping[str, Rule], not_modelled: Mapping[str, Unmodelled], silent: frozenset[str]) -> dict[str, Rule]:
    """One lookup table from the three; a field in two of them is a bug in the table, caught at import."""
    overlap = (maps.keys() & not_modelled.keys()) | (maps.keys() & silent) | (not_modelled.keys() & silent)
    if overlap:
        raise ValueError(f"recipe table lists {sorted(overlap)} twice")
    return {**dict.fromkeys(silent, SILENT_RULE), **not_modelled, **maps}


# -- scalar converters: strict about types, so `lora_r: "sixteen"` is an error naming the field --------------


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise BadValue(f"expected an integer, got {_kind(value)}")
    return int(value)


def as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"expected a number, got {_kind(value)}")
    return float(value)


def as_bool(value: Any) -> bool:
    """A flag; null means off, as the frameworks' own `bool | None` fields treat it."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {_kind(value)}")
    return value


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected text, got {_kind(value)}")
    return value


def truthy_flag(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {}, "false", "False", "none", "None", "no")


def gt_one(value: Any, _ctx: Ctx) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1


def is_set(value: Any, _ctx: Ctx) -> bool:
    """Matters whenever it holds something (a non-empty list or mapping, a name)."""
    return value not in (None, "", [], {})


def to(target: str, convert: Callable[[Any], Any]) -> Maps:
    """Sets one plan field from the value alone; null sets nothing."""
    return Maps((target,), lambda v, _ctx: {} if v is None else {target: convert(v)})


def flag(target: str) -> Maps:
    """A boolean plan field from a flag (null is off)."""
    return Maps((target,), lambda v, _ctx: {target: as_bool(v)})


def model_id(value: Any, _ctx: Ctx) -> Outcome:
    return {} if value in (None, "") else {"model": as_str(value)}


MODEL = Maps(("model",), model_id)
