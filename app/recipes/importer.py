"""import_recipe: the configs a user already runs (one or several files) as a TrainingPlan and an honest report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.core.plan import Method, Stack, TrainingPlan
from app.errors import RecipeError
from app.recipes.formats import choose
from app.recipes.merge import AUTOCAST_NEEDS_16BIT_BASE, Merged, Source, merge, ordered
from app.recipes.parse import EXPECTED, load_mapping
from app.recipes.read import read_file
from app.recipes.result import FileField, FileFormat, MappedField, NotModelledField, RecipeFile, RecipeImport
from app.recipes.secrets import safe_key, shown

MAX_FILES = 16
# the plan fields TrainingPlan's cross-field rules look at, named when one of those rules fails
_CROSS_FIELD = ("method", "quant", "sharding", "offload")


def import_recipe(
    files: Sequence[RecipeFile], stack: Stack = "transformers-5", method: Method | None = None
) -> RecipeImport:
    """Read, detect, map and merge `files`; RecipeError (422) when a file is unusable, two settings conflict, or
    the merged fields do not make a valid plan. `stack`: the software stack the run uses, whose defaults fill the
    fields a file leaves out (read.TF4_DEFAULTS); `method`: the method the caller's own plan fields set over the
    files' (merge.AUTOCAST_NEEDS_16BIT_BASE). Pure: no I/O beyond the texts given."""
    if not files:
        raise RecipeError(f"no recipe file given; {EXPECTED}", errors=[{"field": "files", "message": "empty"}])
    if len(files) > MAX_FILES:
        raise RecipeError(f"{len(files)} files given; at most {MAX_FILES} are read together")
    sources: list[Source] = []
    formats: list[FileFormat] = []
    errors: list[dict[str, str]] = []
    for name, file in zip(_unique_names(files), files, strict=True):
        doc = load_mapping(name, file.text)
        fmt, detected = choose(name, doc, file.format)
        formats.append(FileFormat(file=name, format=fmt.name, detected=detected))
        reading = read_file(fmt, doc, stack)
        errors += [
            {"field": f"{name}:{safe_key(f)}", "message": f"{message} (read as {fmt.title})"}
            for f, message in reading.errors
        ]
        sources += [Source(name, entry) for entry in reading.entries]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RecipeError(f"{first['field']}: {first['message']}{more}", errors=errors)
    merged = merge(sources, method)
    if merged.conflicts:
        raise _conflict_error(merged)
    plan_fields = ordered(merged.values) | ({"stack": stack} if stack != "transformers-5" else {})
    return RecipeImport(
        model=shown(merged.values.get("model")),
        plan_fields=plan_fields,
        plan=_plan(plan_fields | ({"method": method} if method else {}), merged),
        formats=tuple(formats),
        **_report(sources, merged),
    )


def _unique_names(files: Sequence[RecipeFile]) -> list[str]:
    names: list[str] = []
    for file in files:
        name, n = file.name, 2
        while name in names:
            name, n = f"{file.name} #{n}", n + 1
        names.append(name)
    return names


def _where(source: Source) -> str:
    return f"{source.file}:{safe_key(source.entry.field)}"


def _conflict_error(merged: Merged) -> RecipeError:
    errors = []
    for a, b in merged.conflicts:
        target = a.entry.target
        message = (
            f"{target} is {shown(a.entry.plan_value)!r} from {_where(a)} "
            f"but {shown(b.entry.plan_value)!r} from {_where(b)}"
        )
        errors.append({"field": _where(b), "message": message})
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return RecipeError(f"conflicting settings: {errors[0]['message']}{more}", errors=errors)


def _plan(plan_fields: dict[str, Any], merged: Merged) -> TrainingPlan:
    try:
        return TrainingPlan.model_validate(plan_fields)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_input=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            targets = [str(error["loc"][0])] if error["loc"] else list(_CROSS_FIELD)
            where = [_where(s) for s in merged.used if s.entry.target in targets]
            errors.append({"field": ", ".join(where) or "plan", "message": f"{'/'.join(targets)}: {message}"})
        first = errors[0]
        raise RecipeError(
            f"the imported settings do not make a valid plan: {first['message']} (from {first['field']})",
            errors=errors,
        ) from None


def _report(sources: list[Source], merged: Merged) -> dict[str, Any]:
    used = {id(s) for s in merged.used}
    mapped = [
        MappedField(
            file=s.file,
            field=safe_key(s.entry.field),
            value=shown(s.entry.value, s.entry.field),
            plan_field=str(s.entry.target),
            plan_value=shown(s.entry.plan_value),
            default=s.entry.default,
        )
        for s in sources
        if id(s) in used
    ]
    not_modelled: dict[tuple[str, str, str], NotModelledField] = {}
    for s in merged.dropped:
        key = (s.file, s.entry.field, AUTOCAST_NEEDS_16BIT_BASE)
        not_modelled[key] = NotModelledField(
            file=s.file,
            field=safe_key(s.entry.field),
            value=shown(s.entry.value, s.entry.field),
            why=AUTOCAST_NEEDS_16BIT_BASE,
            default=s.entry.default,
        )
    for s in sources:
        approximated = s.entry.kind == "mapped" and s.entry.why and id(s) in used
        if s.entry.kind == "not_modelled" or approximated:
            key = (s.file, s.entry.field, str(s.entry.why))
            not_modelled.setdefault(
                key,
                NotModelledField(
                    file=s.file,
                    field=safe_key(s.entry.field),
                    value=shown(s.entry.value, s.entry.field),
                    why=str(s.entry.why),
                    default=s.entry.default,
                ),
            )
    return {
        "mapped": tuple(mapped),
        "not_modelled": tuple(not_modelled.values()),
        "ignored": tuple(_fields(sources, "ignored")),
        "unknown": tuple(_fields(sources, "unknown")),
    }


def _fields(sources: list[Source], kind: str) -> list[FileField]:
    return [FileField(file=s.file, field=safe_key(s.entry.field)) for s in sources if s.entry.kind == kind]
