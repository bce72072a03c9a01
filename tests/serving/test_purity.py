"""The serving core is pure like app/core: importing it (and planning) loads no torch, transformers, FastAPI or SQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = ("plan", "layout", "kv", "weights", "hf", "paged", "terms", "tiers", "estimate", "result", "report", "inputs")


def test_the_serving_core_imports_only_the_standard_library_and_pydantic() -> None:
    imports = "\n".join(f"import app.serving.{name}" for name in PURE)
    code = (
        f"import sys\n{imports}\n"
        "from app import catalog\n"
        "from app.serving.estimate import plan_serving\n"
        "from app.serving.plan import ServingPlan\n"
        "plan_serving(catalog.load_spec('meta-llama/Llama-3.1-8B'), ServingPlan())\n"
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'starlette', 'sqlalchemy', 'httpx', 'jinja2') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
