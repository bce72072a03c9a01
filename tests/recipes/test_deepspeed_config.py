"""A DeepSpeed config JSON given on its own (`--from ds_config.json`): detected by its keys, its ZeRO stage, offload
and bucket sizes read as an inline `deepspeed` config is, its numbers taken and its "auto"s left to the Trainer."""

from __future__ import annotations

import json

import pytest

from app.errors import RecipeError
from app.recipes import import_recipe
from tests.recipes.helpers import recipe

# LLaMA-Factory examples/deepspeed/ds_z3_offload_config.json (at 1d6e8b2), trimmed to the keys that matter
LLAMAFACTORY_Z3_OFFLOAD = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
    },
}


def _import(config: dict[str, object], name: str = "ds_config.json"):  # type: ignore[no-untyped-def]
    return import_recipe([recipe(name, json.dumps(config))])


def test_a_deepspeed_file_is_detected_and_read_as_its_zero_settings() -> None:
    result = _import(LLAMAFACTORY_Z3_OFFLOAD)
    assert result.formats[0].format == "deepspeed"
    assert (result.plan.sharding, result.plan.offload, result.plan.zero_buckets) == ("zero3", True, "auto")
    assert not result.not_modelled  # "auto" batch sizes and precision are the Trainer's: nothing to report


def test_numbers_set_the_micro_batch_accumulation_and_precision() -> None:
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 8,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8},
    }
    plan = _import(config).plan
    assert (plan.batch_size, plan.grad_accum_steps, plan.dtype) == (2, 8, "bf16")
    assert (plan.sharding, plan.offload, plan.zero_buckets) == ("zero2", False, "deepspeed")


def test_an_optimizer_section_and_deepspeeds_own_checkpointing_are_reported_not_modelled() -> None:
    config = {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "activation_checkpointing": {"partition_activations": True},
    }
    assert {e.field for e in _import(config).not_modelled} == {"optimizer", "activation_checkpointing"}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"zero_optimization": [3], "train_micro_batch_size_per_gpu": 1}, "must be a mapping"),
        ({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "two"}, "integer"),
        ({"zero_optimization": {"stage": 2}, "bf16": True, "steps_per_print": 10}, "enabled"),
    ],
)
def test_a_value_deepspeed_would_not_take_is_refused_naming_the_field(config: dict[str, object], words: str) -> None:
    with pytest.raises(RecipeError, match=words):
        _import(config)


def test_a_stage_gpuplan_does_not_model_is_reported_and_left_out_of_the_plan() -> None:
    result = _import({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 1})
    (entry,) = result.not_modelled
    assert entry.field == "zero_optimization" and "ZeRO-1" in entry.why and result.plan.sharding == "none"


def test_beside_training_arguments_the_two_files_agree_into_one_plan() -> None:
    args = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "bf16": True, "deepspeed": "ds.json"}
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"}}
    result = import_recipe([recipe("args.json", json.dumps(args)), recipe("ds.json", json.dumps(ds))])
    assert (result.plan.sharding, result.plan.batch_size, result.plan.grad_accum_steps) == ("zero2", 4, 2)
