"""The software stack fills the fields a recipe leaves out (app/recipes/read.py TF4_DEFAULTS)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.recipes import RecipeFile, import_recipe
from tests.webapp import app, client

__all__ = ["app", "client"]  # fixtures

ARGS = {"per_device_train_batch_size": 2, "gradient_checkpointing": True, "bf16": True, "output_dir": "out"}


def _import(args: dict[str, object], stack: str) -> dict[str, object]:
    file = RecipeFile.from_bytes("training_args.json", json.dumps(args).encode())
    return import_recipe([file], stack).plan_fields  # type: ignore[arg-type]


def test_transformers_4_checkpoints_reentrant_when_the_file_gives_no_kwargs() -> None:
    """4.57.6 gradient_checkpointing_enable() defaults to use_reentrant=True; transformers 5 to False."""
    four, five = _import(ARGS, "transformers-4"), _import(ARGS, "transformers-5")
    assert four["reentrant"] is True and four["stack"] == "transformers-4"
    assert "reentrant" not in five and "stack" not in five


def test_the_files_own_kwargs_win_over_the_stack_default() -> None:
    given = {**ARGS, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert "reentrant" not in _import(given, "transformers-4")


def test_no_checkpointing_no_reentrant_on_either_stack() -> None:
    assert "reentrant" not in _import({**ARGS, "gradient_checkpointing": False}, "transformers-4")


def test_the_api_imports_with_the_plans_stack(client: TestClient) -> None:
    body = {
        "model": "meta-llama/Llama-3.1-8B",
        "files": [{"name": "training_args.json", "text": json.dumps(ARGS)}],
        "plan": {"stack": "transformers-4", "method": "lora"},
    }
    response = client.post("/api/v1/estimate/from-config", json=body)
    assert response.status_code == 200, response.text
    plan = response.json()["plan"]
    assert plan["stack"] == "transformers-4" and plan["reentrant"] is True
    bad = client.post("/api/v1/estimate/from-config", json={**body, "plan": {"stack": "transformers-3"}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "plan.stack"
