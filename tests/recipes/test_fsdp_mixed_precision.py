"""bf16 under FSDP in a TrainingArguments or axolotl file maps to the plan's fsdp_mixed_precision where it says so, with
autocast under FSDP1 (accelerate 1.16's prepare_model wraps the forward in torch.autocast before FSDP1 wraps the model;
its FSDP2 path adds no autocast region)."""

from __future__ import annotations

from app.recipes import import_recipe
from tests.recipes.helpers import recipe

AXOLOTL = "base_model: meta-llama/Llama-3.1-8B\nsequence_len: 2048\nbf16: true\nfsdp:\n  - full_shard\n  - auto_wrap\n"


# TRL's CLI config (ModelConfig + SFTConfig, a TrainingArguments): use_peft false (full), dtype float32, bf16 true
TRL = "model_name_or_path: Qwen/Qwen2.5-0.5B\nmax_length: 512\nfsdp: full_shard auto_wrap\n"


def test_training_arguments_fsdp2_bf16_over_fp32_weights_is_the_mixed_precision_policy() -> None:
    result = import_recipe([recipe("sft.yaml", TRL + "fsdp_config:\n  version: 2\n")])
    plan = result.plan
    assert (plan.method, plan.sharding, plan.dtype) == ("full", "fsdp", "bf16")
    assert (plan.fsdp_mixed_precision, plan.autocast, plan.weight_dtype) == (True, False, "fp32")
    assert plan.fsdp_reduce_dtype == "param"  # accelerate's set_mixed_precision: reduce_dtype = param_dtype
    assert "bf16" not in {e.field for e in result.not_modelled}  # counted as accelerate runs it: no autocast region


def test_training_arguments_fsdp_without_a_version_is_fsdp2_and_its_policy() -> None:
    plan = import_recipe([recipe("sft.yaml", TRL)]).plan  # transformers 5: fsdp_config.get("version", 2)
    assert (plan.fsdp_version, plan.fsdp_mixed_precision, plan.autocast) == (2, True, False)


def test_training_arguments_fsdp1_is_the_policy_under_autocast() -> None:
    for extra in (
        "fsdp_config:\n  fsdp_version: 1\n",
        "fsdp_config:\n  version: 1\n",
        "use_peft: true\nfsdp_config:\n  version: 1\n",
    ):
        result = import_recipe([recipe("sft.yaml", TRL + extra)])
        plan = result.plan
        assert (plan.fsdp_version, plan.fsdp_mixed_precision, plan.autocast) == (1, True, True), extra
        assert plan.weight_dtype == "fp32" and not plan.autocast_over_fp32
        assert "bf16" not in {e.field for e in result.not_modelled}


def test_training_arguments_without_fsdp_keeps_autocast() -> None:
    plan = import_recipe([recipe("sft.yaml", TRL.replace("fsdp: full_shard auto_wrap\n", ""))]).plan
    assert (plan.autocast, plan.fsdp_mixed_precision) == (True, False)


def test_training_arguments_fsdp2_over_bf16_weights_is_plain_bf16() -> None:
    text = TRL + "dtype: bfloat16\nfsdp_config:\n  fsdp_version: 2\n"
    plan = import_recipe([recipe("sft.yaml", text)]).plan
    assert (plan.dtype, plan.autocast, plan.fsdp_mixed_precision) == ("bf16", False, False)


def test_axolotl_fsdp2_full_fine_tuning_upcasts_and_gathers_in_bf16() -> None:
    for extra in ("fsdp_version: 2\n", "fsdp_config:\n  fsdp_version: 2\n"):
        result = import_recipe([recipe("a.yml", AXOLOTL + extra)])
        assert (result.plan.method, result.plan.sharding, result.plan.fsdp_mixed_precision) == ("full", "fsdp", True)
        assert result.plan.weight_dtype == "fp32"


def test_axolotl_fsdp2_with_an_adapter_or_fsdp1_is_not_the_policy() -> None:
    lora = AXOLOTL + "adapter: lora\nfsdp_version: 2\n"
    fsdp1 = AXOLOTL + "fsdp_version: 1\n"
    for text in (lora, fsdp1):
        assert import_recipe([recipe("a.yml", text)]).plan.fsdp_mixed_precision is False, text
