"""FSDP1 / FSDP2 from the configs people run: `fsdp_config.version` (transformers), `fsdp_config.fsdp_version`
(accelerate), axolotl's top-level `fsdp_version`; absent, FSDP2 (transformers 5 TrainingArguments' default)."""

from __future__ import annotations

import json

import pytest

from app.errors import RecipeError
from app.recipes import import_recipe
from tests.recipes.helpers import mapped, recipe


def _args(fsdp_config: dict[str, object]) -> str:
    return json.dumps({"per_device_train_batch_size": 1, "fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config})


@pytest.mark.parametrize(("key", "value"), [("version", 1), ("fsdp_version", 1), ("fsdp_version", "1")])
def test_training_arguments_fsdp_config_version_1_is_fsdp1(key: str, value: object) -> None:
    result = import_recipe([recipe("args.json", _args({key: value}))])
    assert result.plan.fsdp_version == 1 and result.plan.sharding == "fsdp"
    assert mapped(result)[(f"fsdp_config.{key}", "fsdp_version")] == 1


def test_an_fsdp_config_without_a_version_is_fsdp2_as_transformers_5_reads_it() -> None:
    result = import_recipe([recipe("args.json", _args({"activation_checkpointing": True}))])
    assert result.plan.fsdp_version == 2 and result.plan.sharding == "fsdp"


def test_axolotl_top_level_fsdp_version() -> None:
    text = "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nfsdp_version: 1\nfsdp_config:\n  reshard_after_forward: true\n"
    result = import_recipe([recipe("axolotl.yaml", text, "axolotl")])
    assert result.plan.fsdp_version == 1 and result.plan.sharding == "fsdp"


def test_a_version_that_does_not_exist_is_refused_naming_the_field() -> None:
    with pytest.raises(RecipeError, match="1 or 2"):
        import_recipe([recipe("args.json", _args({"version": 3}))])


@pytest.mark.parametrize(
    ("fsdp_config", "expected"),
    [
        ({"version": 1}, "none"),  # transformers passes NO_PREFETCH when fsdp_config names none
        ({"version": 1, "backward_prefetch": "backward_post"}, "post"),
        ({"fsdp_version": 1, "fsdp_backward_prefetch": "BACKWARD_PRE"}, "pre"),
        ({"fsdp_version": 1, "fsdp_backward_prefetch": "NO_PREFETCH"}, "none"),
        ({"version": 2, "backward_prefetch": "BACKWARD_PRE"}, "none"),  # accelerate drops it under FSDP2
    ],
)
def test_fsdp1_backward_prefetch_is_read_from_fsdp_config(fsdp_config: dict[str, object], expected: str) -> None:
    result = import_recipe([recipe("args.json", _args(fsdp_config))])
    assert result.plan.fsdp_backward_prefetch == expected


def test_a_backward_prefetch_that_does_not_exist_is_refused_naming_the_choices() -> None:
    with pytest.raises(RecipeError, match="BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH"):
        import_recipe([recipe("args.json", _args({"version": 1, "backward_prefetch": "sideways"}))])
