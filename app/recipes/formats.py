"""The recipe formats gpuplan reads, and how a file's keys tell which one it is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.recipes import axolotl, bnb, llamafactory, peft, trl
from app.recipes import deepspeed as ds
from app.recipes import transformers_args as hf
from app.recipes.parse import refuse
from app.recipes.rules import Doc, Rule
from app.recipes.secrets import safe_key


@dataclass(frozen=True)
class Format:
    """One config format: its field table, the framework's defaults, and the keys that identify its files."""

    name: str
    title: str
    fields: Mapping[str, Rule]
    defaults: Callable[[Doc], dict[str, Any]]
    distinctive: frozenset[str]
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a default is skipped when an alias is set
    extends: Format | None = None  # its files are also files of this format (LLaMA-Factory and TRL: TrainingArguments)

    def score(self, keys: set[str]) -> int:
        own = len(keys & self.distinctive)
        if own == 0:
            return 0
        return own + (self.extends.score(keys) if self.extends else 0)


def _static(values: Mapping[str, Any]) -> Callable[[Doc], dict[str, Any]]:
    return lambda _doc: dict(values)


TRANSFORMERS = Format(
    "transformers",
    "transformers TrainingArguments (JSON or YAML)",
    hf.FIELDS,
    _static(hf.DEFAULTS),
    hf.DISTINCTIVE,
    hf.ALIASES,
)
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        # order breaks ties in detection: the more specific format first
        Format(
            "llamafactory",
            "LLaMA-Factory YAML",
            llamafactory.FIELDS,
            llamafactory.defaults,
            llamafactory.DISTINCTIVE,
            hf.ALIASES,
            TRANSFORMERS,
        ),
        Format(
            "trl", "TRL SFTConfig / trl CLI YAML", trl.FIELDS, trl.defaults, trl.DISTINCTIVE, trl.ALIASES, TRANSFORMERS
        ),
        Format("axolotl", "axolotl YAML", axolotl.FIELDS, axolotl.defaults, axolotl.DISTINCTIVE, axolotl.ALIASES),
        TRANSFORMERS,
        Format("peft", "PEFT adapter_config.json / LoraConfig", peft.FIELDS, _static(peft.DEFAULTS), peft.DISTINCTIVE),
        Format("deepspeed", "DeepSpeed config JSON (ds_config.json)", ds.FIELDS, _static({}), ds.DISTINCTIVE),
        Format(
            "bitsandbytes",
            "bitsandbytes BitsAndBytesConfig (or a config holding quantization_config)",
            bnb.FIELDS,
            _static(bnb.DEFAULTS),
            bnb.DISTINCTIVE,
        ),
    )
}


def choose(name: str, doc: Doc, given: str | None) -> tuple[Format, bool]:
    """The file's format and whether it was detected (True) or given; a clear error when neither works."""
    keys = set(doc)
    if given is not None:
        fmt = FORMATS.get(given)
        if fmt is None:
            raise refuse(name, f"format {given!r} is not one gpuplan reads ({', '.join(FORMATS)})")
        if not keys & fmt.fields.keys():
            raise refuse(name, f"format {given} was given, but none of the file's keys is a {fmt.title} setting")
        return fmt, False
    scores = {fmt.name: fmt.score(keys) for fmt in FORMATS.values()}
    best = max(FORMATS.values(), key=lambda f: scores[f.name])  # first of the highest: FORMATS order breaks ties
    if scores[best.name] == 0:
        shown = ", ".join(sorted(safe_key(k) for k in keys)[:12]) + (", ..." if len(keys) > 12 else "")
        raise refuse(name, f"none of the keys ({shown}) is one these formats are recognised by")
    return best, True
