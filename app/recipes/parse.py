"""Recipe text to a plain mapping: JSON or YAML (safe loader), bounded in size, depth and alias expansion."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml

from app.errors import RecipeError
from app.recipes.secrets import redact_text

MAX_BYTES = 1024 * 1024  # 1 MiB: the largest real configs (axolotl with a chat template inline) are ~20 KiB
MAX_NODES = 100_000  # nodes after alias expansion: refuses "billion laughs" YAML whose aliases multiply a few nodes
MAX_DEPTH = 64  # nesting of mappings and lists; real configs stay under 6
EXPECTED = (
    "expected one of: axolotl YAML, LLaMA-Factory YAML, TRL SFTConfig / trl CLI YAML, "
    "transformers TrainingArguments (JSON or YAML), PEFT adapter_config.json / LoraConfig, "
    "DeepSpeed config JSON (ds_config.json), bitsandbytes BitsAndBytesConfig (or a config holding quantization_config)"
)


def refuse(name: str, why: str) -> RecipeError:
    return RecipeError(f"{name}: {why}; {EXPECTED}", errors=[{"field": name, "message": why}])


def load_mapping(name: str, text: str) -> dict[str, Any]:
    """The top-level mapping of one recipe file, as plain JSON-like values (str keys)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise refuse(name, f"the file has {size:,} bytes, more than the {MAX_BYTES:,} a recipe may have")
    if "\x00" in text:
        raise refuse(name, "the file holds binary data (NUL bytes), not text")
    if not text.strip():
        raise refuse(name, "the file is empty")
    if bracket_depth(text) > MAX_DEPTH:  # refused before a parser recurses into it (seconds for 5,000 levels)
        raise refuse(name, f"the file nests deeper than {MAX_DEPTH} levels")
    try:
        data = _plain(_load_json(name, text) if _is_json(name, text) else _load_yaml(name, text), 0)
    except RecursionError:
        raise refuse(name, f"the file nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single {type(data).__name__} value"
        raise refuse(name, f"the file holds {kind}, not a mapping of settings")
    return data


def bracket_depth(text: str) -> int:
    """The deepest nesting of JSON / YAML flow brackets ([ and {) outside quoted strings (block-indented YAML nests
    further: the parse checks that). Brackets inside an unquoted YAML scalar count too; no real config has 64."""
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _is_json(name: str, text: str) -> bool:
    lower = name.lower()
    if lower.endswith(".json"):
        return True
    if lower.endswith((".yaml", ".yml")):
        return False
    return text.lstrip().startswith("{")


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _load_json(name: str, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise refuse(name, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise refuse(name, f"not valid JSON ({redact_text(str(exc))})") from None


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader that refuses duplicate keys (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {str(key)[:80]!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(name: str, text: str) -> Any:
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise refuse(name, f"not valid YAML (character #x{exc.character:04x} is not allowed)") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise refuse(name, "the file is empty")
        _check_size(name, node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        # the problem and where, never the snippet PyYAML quotes (it may hold a token)
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = redact_text(str(exc.problem or exc.context or "unreadable YAML"))
        raise refuse(name, f"not valid YAML ({problem}{where})") from None
    except yaml.YAMLError:
        raise refuse(name, "not valid YAML") from None
    finally:
        loader.dispose()


def _check_size(name: str, root: Any) -> None:
    """Count the nodes the document has once aliases are expanded; refuse cycles, bombs and deep nesting."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise refuse(name, "a YAML alias refers to the node that contains it (a cycle)")
        if depth > MAX_DEPTH:
            raise refuse(name, f"the file nests deeper than {MAX_DEPTH} levels")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v, depth + 1) for v in node.value)
        open_nodes.discard(key)
        if total > MAX_NODES:
            raise refuse(name, f"the document expands to more than {MAX_NODES:,} values (YAML aliases)")
        sizes[key] = total
        return total

    size(root, 0)


def _plain(value: Any, depth: int) -> Any:
    """YAML's extra types as JSON-like values: dates as ISO text, binary and sets refused."""
    if depth > MAX_DEPTH:
        raise RecursionError
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, set, frozenset, tuple)):
        return f"<{type(value).__name__} value>"
    return value
