"""`gpuplan inference MODEL [serving flags] [--json]`: the GPUs to serve a model (flags generated from ServingPlan)."""

from __future__ import annotations

import argparse
import json
from typing import Any

INFERENCE_HELP = "estimate the GPU memory of serving a model (vLLM paged KV cache or transformers generate())"


def add_parser(sub: Any) -> None:
    """The `inference` subcommand on the gpuplan parser's subparsers."""
    from app.serving.inputs import add_serving_flags

    cmd = sub.add_parser("inference", help=INFERENCE_HELP, description=INFERENCE_HELP)
    cmd.add_argument("model", help="catalog id, Hub id (org/name[@rev]) or path to config.json")
    add_serving_flags(cmd)
    cmd.add_argument("--json", action="store_true", help="print one JSON object")


def _local_config(name: str) -> dict[str, Any] | None:
    """A local config.json MODEL, read for its attention layout (the resolver reads it for the inventory)."""
    from pathlib import Path

    path = Path(name)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # the resolver reports an unreadable file
    return data if isinstance(data, dict) else None


def run(ns: argparse.Namespace) -> int:
    """Resolve MODEL, plan serving it, print the table (or JSON)."""
    from app.resolver import resolve_model_sync
    from app.serving.estimate import plan_serving
    from app.serving.inputs import build_serving_plan, flag_values
    from app.serving.report import payload, table
    from app.serving.sources import layout_for
    from app.settings import get_settings

    plan = build_serving_plan(flag_values(ns), naming="flag")
    settings = get_settings()
    model = resolve_model_sync(ns.model, settings)
    local = _local_config(ns.model) if model.source == "file" and not ns.model.startswith("config:") else None
    layout = layout_for(model, local, settings)
    est = plan_serving(model, plan, layout, headroom=settings.headroom)
    print(json.dumps(payload(model, est), indent=2) if ns.json else table(model, est))
    return 0
