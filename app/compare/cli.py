"""`gpuplan compare --plan "model=... method=qlora gpu=RTX 4090" --plan "..." | --file plans.yaml`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import InputError

COMPARE_HELP = "compare 2 to 6 plans side by side (one scale, the GPUs each needs, the cost of each run)"
PLAN_HELP = (
    "one plan as name=value words: model=ID, gpu=TIER (optional: judge it on this GPU tier) and any plan field "
    "of `gpuplan estimate` (method=lora rank=32 gpus=8 sharding=zero3 ...); repeat for each plan"
)
FILE_HELP = (
    "a YAML or JSON file of plans: a list (or {plans: [...], train_tokens, epochs}), each an object of the same "
    "fields or a --plan string"
)
FORMATS = ("table", "json", "md", "svg", "pdf")


def add_parser(sub: Any) -> None:
    """The `compare` subcommand on the gpuplan parser's subparsers."""
    from app.cli import _add_run_flags

    cmd = sub.add_parser("compare", help=COMPARE_HELP, description=COMPARE_HELP)
    cmd.add_argument("--plan", dest="plans", action="append", default=[], metavar="PLAN", help=PLAN_HELP)
    cmd.add_argument("--file", type=Path, metavar="FILE", help=FILE_HELP)
    _add_run_flags(cmd)
    cmd.add_argument("--format", choices=FORMATS, default="table", help="table (default), json, md, svg or pdf")
    cmd.add_argument("--json", action="store_true", help="the same as --format json")
    cmd.add_argument("--output", "-o", type=Path, metavar="FILE", help="write there instead of stdout (pdf needs it)")


def read_plan_file(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """The plans of a YAML/JSON file, and its run size fields (train_tokens, epochs) if it has them."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--file {path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InputError(f"--file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("plans"), list):
        return list(data["plans"]), {k: data[k] for k in ("train_tokens", "epochs") if k in data}
    if isinstance(data, list):
        return data, {}
    raise InputError(f"--file {path}: give a list of plans, or an object with a `plans` list")


def _run_size(ns: argparse.Namespace, from_file: dict[str, Any]) -> Any:
    from app.cli import run_size

    given = argparse.Namespace(
        train_tokens=ns.train_tokens if ns.train_tokens is not None else from_file.get("train_tokens"),
        epochs=ns.epochs if ns.epochs is not None else from_file.get("epochs"),
    )
    return run_size(given)


PdfRenderer = Callable[[Any], bytes]


def _render(comparison: Any, fmt: str, pdf: PdfRenderer | None) -> str | bytes:
    from app.compare import report
    from app.compare.svg import comparison_chart

    if fmt == "json":
        return json.dumps(report.payload(comparison), indent=2)
    if fmt == "md":
        return report.markdown(comparison)
    if fmt == "svg":
        return comparison_chart(comparison, standalone=True)
    if fmt == "pdf" and pdf is not None:
        return pdf(comparison)
    return report.table(comparison)


def run(ns: argparse.Namespace, pdf: PdfRenderer | None = None) -> int:
    """Parse the plans (every bad field of every plan at once), estimate each, print or write the comparison;
    `pdf` renders the comparison page as a PDF (the web layer's, handed in by app/cli.py)."""
    from app.compare.compare import compare_sync
    from app.compare.entries import parse_entries
    from app.resolver import resolve_model_sync
    from app.service import NoCounts, Planner
    from app.settings import get_settings

    items: list[Any] = list(ns.plans)
    from_file: dict[str, Any] = {}
    if ns.file is not None:
        file_items, from_file = read_plan_file(ns.file)
        items += file_items
    fmt = "json" if ns.json else ns.format
    if fmt == "pdf" and ns.output is None:
        raise InputError("--format pdf writes a file: add --output report.pdf")
    entries = parse_entries(items)
    settings = get_settings()
    planner = Planner(settings, hub=None, metrics=NoCounts())
    comparison = compare_sync(
        entries, _run_size(ns, from_file), lambda name: resolve_model_sync(name, settings), planner
    )
    out = _render(comparison, fmt, pdf)
    if ns.output is not None:
        data = out if isinstance(out, bytes) else out.encode("utf-8")
        ns.output.write_bytes(data)
        print(f"wrote {ns.output} ({len(data):,} bytes)", file=sys.stderr)
    else:
        print(out if isinstance(out, str) else out.decode("latin-1"))
    return 0
