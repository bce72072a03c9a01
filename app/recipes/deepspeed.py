"""A DeepSpeed config JSON (the file a TrainingArguments' `deepspeed`, axolotl's or LLaMA-Factory's points at) as
plan fields: its ZeRO stage, offload and bucket sizes (the same reading as an inline `deepspeed` config), its
precision and its micro-batch and accumulation where it gives numbers (`"auto"` leaves them to the Trainer)."""

from __future__ import annotations

from typing import Any

from app.recipes.common import deepspeed
from app.recipes.rules import BadValue, Ctx, Maps, Outcome, Rule, Unmodelled, as_bool, as_int, names, table

# Source: deepspeed/runtime/config.py and runtime/zero/config.py (0.19.8): the keys, and that `"auto"` is a
# placeholder transformers' HfDeepSpeedConfig fills (integrations/deepspeed.py `trainer_config_finalize`).


def _zero(value: Any, _ctx: Ctx) -> Outcome:
    if not isinstance(value, dict):
        raise BadValue("zero_optimization must be a mapping")
    return deepspeed({"zero_optimization": value}, _ctx)


def _precision(dtype: str) -> Maps:
    """`bf16` / `fp16`: `{"enabled": true}` trains in that dtype; `"auto"` is the Trainer's bf16/fp16 flag."""

    def convert(value: Any, _ctx: Ctx) -> Outcome:
        if not isinstance(value, dict):
            raise BadValue(f'{dtype} must be a mapping such as {{"enabled": true}}')
        enabled = value.get("enabled", False)
        if enabled == "auto":
            return {}
        return {"dtype": dtype} if as_bool(enabled) else {}

    return Maps(("dtype",), convert)


def _count(field: str) -> Maps:
    """A number sets the plan field; `"auto"` is filled from the Trainer's own arguments."""
    return Maps((field,), lambda v, _ctx: {} if v == "auto" else {field: as_int(v)})


MAPS: dict[str, Rule] = {
    "zero_optimization": Maps(("sharding", "offload", "zero_buckets"), _zero),
    "bf16": _precision("bf16"),
    "fp16": _precision("fp16"),
    "train_micro_batch_size_per_gpu": _count("batch_size"),
    "gradient_accumulation_steps": _count("grad_accum_steps"),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    "optimizer": Unmodelled(
        "DeepSpeed's own optimizer replaces the Trainer's (transformers passes a DummyOptim): its states are planned "
        "as the plan's optimizer's",
        lambda v, _ctx: bool(v),
    ),
    "activation_checkpointing": Unmodelled(
        "DeepSpeed's activation checkpointing (partitioned or CPU-offloaded activations) is not modelled: gpuplan "
        "plans transformers' gradient checkpointing",
        lambda v, _ctx: bool(v),
    ),
}
SILENT = names(
    """train_batch_size gradient_clipping steps_per_print wall_clock_breakdown zero_allow_untested_optimizer
    scheduler comms_config monitor_config tensorboard wandb csv_monitor flops_profiler communication_data_type
    prescale_gradients gradient_predivide_factor zero_force_ds_cpu_optimizer dump_state"""
)
FIELDS = table(MAPS, NOT_MODELLED, SILENT)
# keys only a DeepSpeed config has (gradient_accumulation_steps is TrainingArguments' too)
DISTINCTIVE = names("zero_optimization train_micro_batch_size_per_gpu zero_allow_untested_optimizer steps_per_print")
