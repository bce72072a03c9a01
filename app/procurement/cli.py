"""`gpuplan report --train "model=... method=qlora" --serve "model=... context=8192" [--serve-months N] [--format] [-o]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import InputError

REPORT_HELP = "one procurement report: the training plan and the serving plan side by side, and the GPUs to buy"
TRAIN_HELP = (
    "the training plan as name=value words: model=ID, gpu=TIER (optional: judge it on this tier), any plan field of "
    "`gpuplan estimate` (method=qlora rank=16 ...), and train_tokens=N, epochs=N for the run's time and cost"
)
SERVE_HELP = (
    "the serving plan as name=value words: model=ID and any field of `gpuplan inference` (engine=vllm context=8192 "
    "concurrency=16 weights=bf16 adapters=1 tp=2 ...)"
)
MONTHS_HELP = (
    "the 30-day months of serving to price (default 1): the serving GPUs' on-demand cost per hour, per month and for "
    "the N months, from the same dated prices as the training run"
)
FORMATS = ("md", "json", "pdf")

PdfRenderer = Callable[[Any], bytes]


def add_parser(sub: Any) -> None:
    """The `report` subcommand on the gpuplan parser's subparsers."""
    cmd = sub.add_parser("report", help=REPORT_HELP, description=REPORT_HELP)
    cmd.add_argument("--train", metavar="PLAN", help=TRAIN_HELP)
    cmd.add_argument("--serve", metavar="PLAN", help=SERVE_HELP)
    cmd.add_argument("--serve-months", metavar="N", help=MONTHS_HELP)
    cmd.add_argument("--format", choices=FORMATS, default="md", help="md (default), json or pdf (needs --output)")
    cmd.add_argument("--output", "-o", type=Path, metavar="FILE", help="write there instead of stdout")


def _render(proc: Any, fmt: str, pdf: PdfRenderer | None) -> str | bytes:
    from app.procurement import report

    if fmt == "json":
        return json.dumps(report.payload(proc), indent=2)
    if fmt == "pdf" and pdf is not None:
        return pdf(proc)
    return report.markdown(proc)


def run(ns: argparse.Namespace, pdf: PdfRenderer | None = None) -> int:
    """Parse both halves (every bad field of both at once), plan each, print or write the report; `pdf` prints the
    report page (the web layer's, handed in by app/cli.py)."""
    from app.procurement.build import build_sync
    from app.procurement.halves import parse_report
    from app.resolver import resolve_model_sync
    from app.service import NoCounts, Planner
    from app.settings import get_settings

    if ns.format == "pdf" and ns.output is None:
        raise InputError("--format pdf writes a file: add --output report.pdf")
    ask = parse_report(ns.train, ns.serve, ns.serve_months)
    settings = get_settings()
    planner = Planner(settings, hub=None, metrics=NoCounts())
    proc = build_sync(ask, lambda name: resolve_model_sync(name, settings), planner)
    out = _render(proc, ns.format, pdf)
    if ns.output is not None:
        data = out if isinstance(out, bytes) else out.encode("utf-8")
        ns.output.write_bytes(data)
        print(f"wrote {ns.output} ({len(data):,} bytes)", file=sys.stderr)
    else:
        text = out if isinstance(out, str) else out.decode("latin-1")
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
