"""Each format's real example configs import to the TrainingPlan written out by hand from the file, field by field.

Sources of the examples: tests/recipes/examples/SOURCES.md (each YAML names its source in its first comment).
"""

from __future__ import annotations

import json

import pytest

from app.core.plan import TrainingPlan
from app.recipes import import_recipe
from tests.recipes.helpers import example, mapped, not_modelled, recipe


def test_axolotl_llama3_qlora() -> None:
    # axolotl-ai-cloud/axolotl examples/llama-3/qlora.yml
    result = import_recipe([example("axolotl-llama3-qlora.yml")])
    assert result.formats[0].format == "axolotl" and result.formats[0].detected
    assert result.model == "NousResearch/Meta-Llama-3-8B"
    expected = TrainingPlan(
        method="qlora",  # adapter: qlora
        quant="nf4",  # load_in_4bit: true (axolotl's BitsAndBytesConfig: nf4 ...)
        double_quant=True,  # ... with double quantization
        dtype="bf16",  # bf16: auto
        rank=32,  # lora_r
        alpha=16,  # lora_alpha
        dropout=0.05,  # lora_dropout
        targets="all-linear",  # lora_target_linear: true
        seq_len=4096,  # sequence_len
        batch_size=2,  # micro_batch_size
        grad_accum_steps=4,  # gradient_accumulation_steps
        gradient_checkpointing=True,
        reentrant=True,  # no gradient_checkpointing_kwargs: axolotl's normalize_config sets use_reentrant=True
        optimizer="paged_adamw_32bit",
        attn="flash_attention_2",  # attn_implementation
        packing=True,  # sample_packing: true (with flash_attention_2: varlen, no mask)
    )
    assert result.plan == expected
    assert set(result.plan_fields) == {
        "method", "quant", "double_quant", "dtype", "rank", "alpha", "dropout", "targets", "seq_len",
        "batch_size", "grad_accum_steps", "gradient_checkpointing", "reentrant", "optimizer", "attn", "packing",
    }  # fmt: skip
    unmodelled = not_modelled(result)
    assert "sample_packing" not in unmodelled and mapped(result)[("sample_packing", "packing")] is True
    # flash-attention varlen keeps no mask: packed or not, the estimate is the same
    from app.catalog import load_spec
    from app.core.estimate import estimate

    spec = load_spec("meta-llama/Llama-3.1-8B")
    assert spec is not None
    unpacked = expected.model_copy(update={"packing": False})
    assert estimate(spec, expected).peak_allocated_bytes == estimate(spec, unpacked).peak_allocated_bytes
    assert "gradient_accumulation_steps" not in unmodelled
    assert unmodelled["bf16"] == "auto"  # bf16 only where the GPU has it
    reentrant = next(e for e in result.mapped if e.field == "gradient_checkpointing_kwargs.use_reentrant")
    assert reentrant.default and reentrant.value is True
    assert result.unknown == ()
    ignored = {e.field for e in result.ignored}
    assert {"datasets", "output_dir", "learning_rate", "wandb_project", "special_tokens", "load_in_8bit"} <= ignored


def test_axolotl_llama3_lora_8bit() -> None:
    # axolotl-ai-cloud/axolotl examples/llama-3/lora-8b.yml: LoRA on an int8 base is gpuplan's qlora + int8
    result = import_recipe([example("axolotl-llama3-lora-8b.yml")])
    assert result.plan == TrainingPlan(
        method="qlora",  # adapter: lora + load_in_8bit: true
        quant="int8",
        dtype="bf16",
        rank=32,
        alpha=16,
        dropout=0.05,
        targets="all-linear",
        seq_len=4096,
        batch_size=2,
        grad_accum_steps=4,
        gradient_checkpointing=True,
        reentrant=True,
        optimizer="adamw_8bit",  # adamw_bnb_8bit
        attn="flash_attention_2",
        packing=True,  # sample_packing: true
    )
    assert mapped(result)[("adapter", "method")] == "lora"
    assert not_modelled(result)["lora_modules_to_save"] == ["embed_tokens", "lm_head"]


def test_axolotl_llama3_full_fine_tune() -> None:
    # axolotl-ai-cloud/axolotl examples/llama-3/fft-8b.yaml: no adapter, non-reentrant checkpointing
    result = import_recipe([example("axolotl-llama3-fft-8b.yaml")])
    assert result.plan == TrainingPlan(
        method="full",  # adapter absent
        dtype="bf16",
        seq_len=8192,
        batch_size=1,
        grad_accum_steps=8,
        gradient_checkpointing=True,  # gradient_checkpointing_kwargs.use_reentrant: false
        optimizer="paged_adamw_8bit",
        attn="flash_attention_2",
        packing=True,  # sample_packing: true
    )
    method = next(e for e in result.mapped if e.plan_field == "method")
    assert method.field == "adapter" and method.default  # axolotl trains every weight when adapter is unset
    assert "reentrant" not in result.plan_fields


def test_llamafactory_qwen3_lora() -> None:
    # hiyouga/LLaMA-Factory examples/train_lora/qwen3_lora_sft.yaml
    result = import_recipe([example("llamafactory-qwen3-lora-sft.yaml")])
    assert result.formats[0].format == "llamafactory"
    assert result.model == "Qwen/Qwen3-4B-Instruct-2507"
    assert result.plan == TrainingPlan(
        method="lora",  # finetuning_type: lora
        quant="none",
        dtype="bf16",  # bf16: true
        rank=8,  # lora_rank
        alpha=16,  # LLaMA-Factory's default: 2 x lora_rank
        dropout=0.0,  # its default lora_dropout
        targets="all-linear",  # lora_target: all
        seq_len=2048,  # cutoff_len
        batch_size=1,  # per_device_train_batch_size
        grad_accum_steps=8,  # gradient_accumulation_steps
        gradient_checkpointing=True,  # disable_gradient_checkpointing defaults to false
        reentrant=True,  # use_reentrant_gc defaults to true: LLaMA-Factory checkpoints reentrantly
        optimizer="adamw",  # TrainingArguments' default optim, adamw_torch_fused
        attn="sdpa",  # flash_attn: auto leaves transformers' default
    )
    reentrant = next(e for e in result.mapped if e.field == "use_reentrant_gc")
    assert reentrant.default and reentrant.plan_field == "reentrant"


def test_llamafactory_qwen3_qlora_on_the_fly() -> None:
    # hiyouga/LLaMA-Factory examples/train_qlora/qwen3_lora_sft_otfq.yaml
    result = import_recipe([example("llamafactory-qwen3-qlora-otfq.yaml")])
    assert result.plan == TrainingPlan(
        method="qlora",  # quantization_bit: 4, quantization_method: bnb
        quant="nf4",  # quantization_type defaults to nf4 ...
        double_quant=True,  # ... double_quantization to true
        dtype="bf16",
        rank=8,
        alpha=16,
        dropout=0.0,
        targets="all-linear",
        seq_len=2048,
        batch_size=1,
        grad_accum_steps=8,
        gradient_checkpointing=True,
        reentrant=True,
        optimizer="adamw",
        attn="sdpa",
    )


def test_llamafactory_qwen3_full_with_deepspeed_zero3() -> None:
    # hiyouga/LLaMA-Factory examples/train_full/qwen3_full_sft.yaml: deepspeed: examples/deepspeed/ds_z3_config.json
    result = import_recipe([example("llamafactory-qwen3-full-sft.yaml")])
    assert result.plan == TrainingPlan(
        method="full",
        dtype="bf16",
        seq_len=2048,
        batch_size=1,
        grad_accum_steps=2,
        gradient_checkpointing=True,
        reentrant=True,
        optimizer="adamw",
        attn="sdpa",
        sharding="zero3",  # recognised from the file name
        offload=False,
        zero_buckets="auto",  # ds_z3_config.json's reduce/prefetch/persistence sizes are "auto"
    )
    assert "rank" not in result.plan_fields  # LoRA defaults do not apply to full fine-tuning
    assert "pure_bf16" not in not_modelled(result)  # under ZeRO-3 the fp32 master copy is what gpuplan counts


def test_trl_zephyr_qlora() -> None:
    # huggingface/alignment-handbook recipes/zephyr-7b-beta/sft/config_qlora.yaml (TRL ModelConfig + SFTConfig)
    result = import_recipe([example("trl-zephyr-7b-sft-qlora.yaml")])
    assert result.formats[0].format == "trl"
    assert result.model == "mistralai/Mistral-7B-v0.1"
    assert result.plan == TrainingPlan(
        method="qlora",  # use_peft + load_in_4bit
        quant="nf4",  # ModelConfig.bnb_4bit_quant_type defaults to nf4 ...
        double_quant=False,  # ... use_bnb_nested_quant to false
        dtype="bf16",  # torch_dtype: bfloat16, bf16: true
        rank=16,
        alpha=16,
        dropout=0.05,
        targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        seq_len=2048,  # max_seq_length
        batch_size=4,
        grad_accum_steps=2,  # gradient_accumulation_steps
        gradient_checkpointing=True,
        optimizer="adamw",  # optim defaults to adamw_torch_fused
        attn="flash_attention_2",
        loop="sft",  # loss_type's default (nll): SFTTrainer's fused LM head, no logits
    )
    unmodelled = not_modelled(result)
    assert "gradient_accumulation_steps" not in unmodelled
    assert "loss_type" not in unmodelled  # trl 1.16 computes every loss_type through the fused LM head
    assert [e.plan_field for e in result.mapped if e.field == "loss_type"] == ["loop"]
    assert "gradient_checkpointing_kwargs.use_reentrant" not in unmodelled  # use_reentrant: false
    assert result.unknown == ()


def test_transformers_training_arguments_json() -> None:
    # TrainingArguments.to_json_string() of huggingface/transformers docs/source/en/perf_train_gpu_one.md's example
    result = import_recipe([example("transformers-training-args-fp16.json")])
    assert result.formats[0].format == "transformers"
    assert result.model is None
    assert result.plan_fields == {
        "dtype": "fp16",  # fp16: true
        "batch_size": 1,  # per_device_train_batch_size
        "grad_accum_steps": 4,  # gradient_accumulation_steps
        "gradient_checkpointing": True,  # activation_checkpointing (and its alias gradient_checkpointing)
        "optimizer": "adamw",  # optim: adamw_torch_fused
    }
    assert result.plan == TrainingPlan(
        dtype="fp16", batch_size=1, grad_accum_steps=4, gradient_checkpointing=True, optimizer="adamw"
    )
    assert not_modelled(result) == {"optim": "adamw_torch_fused"}
    assert result.unknown == ()  # every key to_json_string writes is in the table


def test_peft_adapter_config() -> None:
    # huggingface/peft method_comparison/MetaMathQA/experiments/lora/llama-3.2-3B-rank10-target-mlp/adapter_config.json
    result = import_recipe([example("peft-llama-3.2-3B-rank10-target-mlp.json")])
    assert result.formats[0].format == "peft"
    assert result.plan == TrainingPlan(
        method="lora",  # peft_type: LORA, on a 16-bit base (no quantization config given)
        quant="none",
        rank=10,  # r
        alpha=20,  # lora_alpha
        dropout=0.0,
        targets=("down_proj", "gate_proj", "up_proj"),  # target_modules
        dora=False,
        rslora=False,
    )
    assert result.not_modelled == () and result.unknown == ()


def test_peft_adapter_config_with_default_targets() -> None:
    # .../lora/llama-3.2-3B-rank32-dora/adapter_config.json: target_modules null (PEFT's per-architecture default)
    result = import_recipe([example("peft-llama-3.2-3B-rank32-dora.json")])
    assert result.plan == TrainingPlan(method="lora", rank=32, alpha=64, dropout=0.0, dora=True, rslora=False)
    assert "targets" not in result.plan_fields
    assert not_modelled(result) == {"target_modules": None}


def test_bitsandbytes_config() -> None:
    # huggingface/transformers docs/source/en/quantization/bitsandbytes.md, "Normal Float 4"
    result = import_recipe([example("bnb-nf4.json")])
    assert result.formats[0].format == "bitsandbytes"
    assert result.plan_fields == {"method": "qlora", "quant": "nf4", "double_quant": False}
    assert result.plan == TrainingPlan(method="qlora", quant="nf4", double_quant=False)
    assert not_modelled(result) == {"bnb_4bit_compute_dtype": "float32"}


def test_bitsandbytes_defaults_are_fp4_without_double_quant() -> None:
    # the same page, "Nested quantization": its to_json_string() leaves bnb_4bit_quant_type out, and the default is fp4
    result = import_recipe([example("bnb-double-quant.json")])
    assert result.plan == TrainingPlan(method="qlora", quant="fp4", double_quant=True)
    quant = next(e for e in result.mapped if e.field == "bnb_4bit_quant_type")
    assert quant.default and quant.plan_value == "fp4"


@pytest.mark.parametrize(
    ("zero", "buckets", "note"),
    [
        ({"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto"}, "auto", None),
        ({"stage": 2, "reduce_bucket_size": 5e8}, "deepspeed", None),  # LLaMA-Factory's ds_z2_config.json
        ({"stage": 2}, "deepspeed", None),  # axolotl's zero2.json: DeepSpeed's defaults
        ({"stage": 3, "reduce_bucket_size": 2e8}, "deepspeed", "planned at 5e8"),
        ({"stage": 3, "reduce_bucket_size": "auto", "stage3_max_reuse_distance": 0}, "auto", "not modelled"),
    ],
)
def test_an_inline_deepspeed_config_sets_the_zero_bucket_sizes(
    zero: dict[str, object], buckets: str, note: str | None
) -> None:
    text = json.dumps({"per_device_train_batch_size": 1, "deepspeed": {"zero_optimization": zero}})
    result = import_recipe([recipe("args.json", text)])
    assert result.plan.zero_buckets == buckets
    said = " ".join(e.why for e in result.not_modelled)
    assert (note in said) if note else "bucket" not in said, said


@pytest.mark.parametrize(
    ("name", "buckets"),
    [("ds_z3_config.json", "auto"), ("ds_z2_config.json", "deepspeed"), ("zero3_bf16.json", "auto")],
)
def test_a_named_deepspeed_file_sets_its_known_bucket_sizes(name: str, buckets: str) -> None:
    text = json.dumps({"per_device_train_batch_size": 1, "deepspeed": f"examples/deepspeed/{name}"})
    assert import_recipe([recipe("args.json", text)]).plan.zero_buckets == buckets
