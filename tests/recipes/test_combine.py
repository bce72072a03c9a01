"""Several files merged: TrainingArguments + adapter_config.json + BitsAndBytesConfig, and conflicts between files."""

from __future__ import annotations

import json

import pytest

from app.core.plan import TrainingPlan
from app.errors import RecipeError
from app.recipes import import_recipe
from tests.recipes.helpers import EXAMPLES, example, recipe


def test_training_arguments_adapter_and_quantization_config_make_one_qlora_plan() -> None:
    files = [
        example("transformers-training-args-bf16.json"),
        example("peft-llama-3.2-3B-rank10-target-mlp.json"),
        example("bnb-qlora.json"),
    ]
    result = import_recipe(files)
    assert [(f.file, f.format) for f in result.formats] == [
        ("transformers-training-args-bf16.json", "transformers"),
        ("peft-llama-3.2-3B-rank10-target-mlp.json", "peft"),
        ("bnb-qlora.json", "bitsandbytes"),
    ]
    assert result.plan == TrainingPlan(
        method="qlora",  # a LoRA adapter (peft) on a 4-bit base (bitsandbytes)
        quant="nf4",
        double_quant=True,
        dtype="bf16",  # bf16: true, and bnb_4bit_compute_dtype: bfloat16 agree
        rank=10,
        alpha=20,
        dropout=0.0,
        targets=("down_proj", "gate_proj", "up_proj"),
        dora=False,
        rslora=False,
        batch_size=4,
        gradient_checkpointing=True,
        optimizer="paged_adamw_32bit",
    )
    sources = {(e.file, e.field) for e in result.mapped if e.plan_field == "dtype"}
    assert sources == {("transformers-training-args-bf16.json", "bf16"), ("bnb-qlora.json", "bnb_4bit_compute_dtype")}


def test_two_files_that_disagree_are_a_conflict_naming_both() -> None:
    # fp16 training arguments, but a quantization config computing in bf16
    files = [example("transformers-training-args-fp16.json"), example("bnb-qlora.json")]
    with pytest.raises(RecipeError) as caught:
        import_recipe(files)
    error = caught.value
    assert error.status == 422 and error.slug == "invalid-recipe"
    assert "transformers-training-args-fp16.json:fp16" in error.detail
    assert "bnb-qlora.json:bnb_4bit_compute_dtype" in error.detail
    assert "dtype is 'fp16'" in error.detail and "'bf16'" in error.detail
    assert error.errors == [
        {
            "field": "bnb-qlora.json:bnb_4bit_compute_dtype",
            "message": "dtype is 'fp16' from transformers-training-args-fp16.json:fp16 "
            "but 'bf16' from bnb-qlora.json:bnb_4bit_compute_dtype",
        }
    ]


def test_two_adapter_configs_with_different_ranks_conflict() -> None:
    adapter = json.loads((EXAMPLES / "peft-llama-3.2-3B-rank10-target-mlp.json").read_text())
    other = dict(adapter, r=64)
    with pytest.raises(RecipeError, match=r"rank is 10 from a\.json:r but 64 from b\.json:r"):
        import_recipe([recipe("a.json", json.dumps(adapter)), recipe("b.json", json.dumps(other))])


def test_two_fields_of_one_file_that_disagree_are_a_conflict() -> None:
    text = "base_model: x/y\nadapter: lora\nflash_attention: true\nattn_implementation: eager\n"
    with pytest.raises(RecipeError, match=r"attn is 'flash_attention_2' from a\.yml:flash_attention"):
        import_recipe([recipe("a.yml", text)])


def test_files_that_agree_are_no_conflict_and_lora_with_a_quantized_base_is_qlora() -> None:
    peft = recipe("adapter_config.json", json.dumps({"peft_type": "LORA", "r": 16, "target_modules": ["q_proj"]}))
    bnb = recipe("quant.json", json.dumps({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}))
    again = recipe("again.json", json.dumps({"peft_type": "LORA", "r": 16, "target_modules": ["q_proj"]}))
    result = import_recipe([peft, bnb, again])
    assert result.plan.method == "qlora" and result.plan.quant == "nf4" and result.plan.rank == 16
    assert result.plan_fields["method"] == "qlora"


def test_an_explicit_setting_wins_over_another_files_default() -> None:
    # the adapter file states dropout 0.1; a LoraConfig dict without dropout would default to 0.0
    stated = recipe("a.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_dropout": 0.1, "target_modules": ["q"]}))
    bare = recipe("b.json", json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q"]}))
    result = import_recipe([bare, stated])
    assert result.plan.dropout == 0.1
    assert [(e.file, e.default) for e in result.mapped if e.plan_field == "dropout"] == [("a.json", False)]


def test_merged_fields_that_make_no_valid_plan_name_the_fields() -> None:
    # LLaMA-Factory full fine-tuning of a 4-bit base
    text = "model_name_or_path: x/y\nstage: sft\nfinetuning_type: full\nquantization_bit: 4\n"
    with pytest.raises(RecipeError) as caught:
        import_recipe([recipe("full.yaml", text)])
    error = caught.value
    assert "do not make a valid plan" in error.detail and "use method qlora for quant nf4" in error.detail
    assert error.errors[0]["field"] == "full.yaml:finetuning_type, full.yaml:quantization_bit"


def test_plan_validation_errors_name_the_file_and_field() -> None:
    with pytest.raises(RecipeError) as caught:
        import_recipe([recipe("a.json", json.dumps({"peft_type": "LORA", "r": 0, "target_modules": ["q_proj"]}))])
    error = caught.value
    assert error.errors[0]["field"] == "a.json:r"
    assert error.errors[0]["message"].startswith("rank: Input should be greater than or equal to 1")
