"""Every field of every recipe format, read from the format tables themselves: honoured (and which plan fields it
sets), not modelled (and why), or accepted silently — the list `docs/recipe-fields.md` is written from.

Pure: it walks `FORMATS` and renders text; `gpuplan recipe-fields --write` writes the file, and a test holds the
file to what this renders, so the list can never drift from the tables the importer reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.recipes.formats import FORMATS, Format
from app.recipes.read import TF4_DEFAULTS
from app.recipes.rules import Maps, Nested, Rule, Unmodelled

FieldKind = Literal["honoured", "not modelled", "ignored"]
KIND_ORDER: tuple[FieldKind, ...] = ("honoured", "not modelled", "ignored")


@dataclass(frozen=True)
class FieldRow:
    """One field of a format's table: what the importer does with it."""

    name: str
    kind: FieldKind
    detail: str  # honoured: the plan fields it sets; not modelled: why; ignored: ""


def _row(name: str, rule: Rule) -> FieldRow:
    if isinstance(rule, Maps):
        sets = ", ".join(f"`{t}`" for t in rule.targets)
        return FieldRow(name, "honoured", sets or "nothing by itself: it qualifies the fields it is read with")
    if isinstance(rule, Unmodelled):
        return FieldRow(name, "not modelled", rule.why)
    return FieldRow(name, "ignored", "")


def field_rows(fields: Mapping[str, Rule], prefix: str = "") -> Iterator[FieldRow]:
    """The table's rows, a nested mapping's inner keys as `outer.inner` (after a row for the mapping itself)."""
    for name in sorted(fields):
        rule = fields[name]
        if isinstance(rule, Nested):
            implied = ", ".join(f"`{k}`" for k in rule.implies)
            yield FieldRow(prefix + name, "honoured", implied or "its keys, below")
            yield from field_rows(rule.table, f"{prefix}{name}.")
        else:
            yield _row(prefix + name, rule)


def _shown(value: Any) -> str:
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def _defaults(fmt: Format) -> list[str]:
    lines = [f"- `{k}` absent: {_shown(v)}" for k, v in sorted(fmt.defaults({}).items())]
    lines += [f"- `{k}` absent, stack transformers-4: {_shown(v)}" for k, v in TF4_DEFAULTS.get(fmt.name, {}).items()]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_section(fmt: Format) -> list[str]:
    """One format: counts, the defaults assumed for absent fields, then a table per kind."""
    rows = list(field_rows(fmt.fields))
    counts = {k: sum(1 for r in rows if r.kind == k) for k in KIND_ORDER}
    out = [f"## {fmt.title} (`{fmt.name}`)", ""]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    out.append(
        f"{len(rows)} fields: {summary}."
        + (f" Its files also read every `{fmt.extends.name}` field." if fmt.extends else "")
    )
    if defaults := _defaults(fmt):
        out += ["", "What the framework does when a memory-relevant field is absent:", *defaults]
    for kind in KIND_ORDER:
        chosen = [r for r in rows if r.kind == kind]
        if not chosen:
            continue
        head = {"honoured": "sets plan fields", "not modelled": "why (reported back when set)", "ignored": ""}[kind]
        out += ["", f"### {kind.capitalize()}", ""]
        if kind == "ignored":
            out.append(", ".join(f"`{r.name}`" for r in chosen) + ".")
            continue
        out += [f"| field | {head} |", "|---|---|"]
        out += [f"| `{r.name}` | {_cell(r.detail)} |" for r in chosen]
    return out


def fields_markdown() -> str:
    """docs/recipe-fields.md: every format's fields, from the tables the importer reads."""
    out = [
        "# Recipe fields: what the config import honours, reports, or ignores",
        "",
        "Written by `gpuplan recipe-fields --write` from the format tables in `app/recipes/` (a test holds this",
        "file to them). **Honoured** fields set the plan fields named. **Not modelled** fields change memory in a way",
        "gpuplan does not model: when a file sets one (to a value that matters), the answer lists it under",
        '"not modelled" with the reason. **Ignored** fields do not change memory and are accepted silently. Any other',
        "key is listed back as unknown; secrets (tokens, keys) are never echoed.",
        "",
    ]
    for fmt in FORMATS.values():
        out += [*format_section(fmt), ""]
    return "\n".join(out).rstrip() + "\n"
