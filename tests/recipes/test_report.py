"""The import's report: not-modelled fields with their reason, unknown keys, silent fields, and sharding settings."""

from __future__ import annotations

import json

import pytest

from app.errors import RecipeError
from app.recipes import RecipeImport, import_recipe
from tests.recipes.helpers import mapped, not_modelled, recipe

AXOLOTL = "base_model: meta-llama/Llama-3.1-8B\nadapter: qlora\nload_in_4bit: true\nsequence_len: 2048\n"


def test_unsupported_memory_fields_are_reported_not_modelled_with_their_value() -> None:
    text = AXOLOTL + (
        "optimizer: lion_8bit\n"
        "liger_cross_entropy: true\n"
        "gradient_checkpointing: offload\n"
        "deepspeed: configs/my_own_deepspeed.json\n"
        "lora_modules_to_save: [lm_head]\n"
        "gradient_accumulation_steps: 1\n"  # 1 changes nothing: accepted silently
    )
    result = import_recipe([recipe("a.yml", text)])
    unmodelled = {e.field: e for e in result.not_modelled}
    assert (
        unmodelled["optimizer"].value == "lion_8bit" and "gpuplan models the optimizers" in unmodelled["optimizer"].why
    )
    assert unmodelled["liger_cross_entropy"].value is True
    assert unmodelled["deepspeed"].why.startswith("gpuplan cannot read the DeepSpeed file")
    assert unmodelled["lora_modules_to_save"].value == ["lm_head"]
    # offloaded checkpointing is honoured: checkpointing with the layer inputs in host memory
    assert result.plan.gradient_checkpointing is True and result.plan.checkpoint_offload is True
    assert "gradient_checkpointing" not in unmodelled
    assert "gradient_accumulation_steps" not in unmodelled
    assert "optimizer" not in result.plan_fields  # not modelled: the caller's optimizer stays
    assert result.plan.grad_accum_steps == 1 and result.plan_fields["grad_accum_steps"] == 1


def test_unknown_keys_are_listed_by_file_and_field() -> None:
    result = import_recipe([recipe("a.yml", AXOLOTL + "my_custom_knob: 3\nanother_one: [1]\n")])
    assert [(e.file, e.field) for e in result.unknown] == [("a.yml", "my_custom_knob"), ("a.yml", "another_one")]
    assert result.plan.method == "qlora"


def test_fields_without_memory_effect_are_accepted_silently() -> None:
    text = AXOLOTL + "learning_rate: 0.0002\noutput_dir: out\nseed: 3\nnum_epochs: 2\nwandb_project: p\n"
    result = import_recipe([recipe("a.yml", text)])
    assert {"learning_rate", "output_dir", "seed", "num_epochs", "wandb_project"} <= {e.field for e in result.ignored}
    assert result.unknown == ()
    assert not {"learning_rate", "output_dir", "seed"} & set(not_modelled(result))


@pytest.mark.parametrize(
    ("deepspeed", "sharding", "offload"),
    [
        ("examples/deepspeed/ds_z3_offload_config.json", "zero3", True),  # LLaMA-Factory's file names
        ("examples/deepspeed/ds_z2_config.json", "zero2", False),
        ("examples/deepspeed/ds_z0_config.json", "ddp", False),
        ("deepspeed_configs/zero3_bf16_cpuoffload_all.json", "zero3", True),  # axolotl's
        ("deepspeed_configs/zero2.json", "zero2", True),  # axolotl's zero2 offloads the optimizer
        ("my-zero3-offload.json", "zero3", True),  # a recognisable name
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "zero2", True),  # inline
        ({"zero_optimization": {"stage": 3}}, "zero3", False),
    ],
)
def test_deepspeed_stage_and_offload_map_to_sharding(deepspeed: object, sharding: str, offload: bool) -> None:
    text = json.dumps({"per_device_train_batch_size": 2, "optim": "adamw_torch", "deepspeed": deepspeed})
    result = import_recipe([recipe("args.json", text)])
    assert (result.plan.sharding, result.plan.offload) == (sharding, offload)


def test_deepspeed_zero1_and_partial_zero3_offload_are_reported() -> None:
    zero1 = json.dumps({"per_device_train_batch_size": 2, "deepspeed": "deepspeed_configs/zero1.json"})
    result = import_recipe([recipe("args.json", zero1)])
    assert "sharding" not in result.plan_fields and "ZeRO-1" in result.not_modelled[0].why
    params = json.dumps({"optim": "sgd", "deepspeed": "deepspeed_configs/zero3_bf16_cpuoffload_params.json"})
    result = import_recipe([recipe("args.json", params)])
    assert result.plan.sharding == "zero3" and result.plan.offload is False
    assert "offloads only parameters" in not_modelled_why(result, "deepspeed")


def not_modelled_why(result: RecipeImport, field: str) -> str:
    return next(e.why for e in result.not_modelled if e.field == field)


def test_fsdp_maps_to_sharding_fsdp() -> None:
    axolotl = AXOLOTL + "fsdp:\n  - full_shard\n  - auto_wrap\nfsdp_config:\n  fsdp_offload_params: true\n"
    result = import_recipe([recipe("a.yml", axolotl)])
    assert (result.plan.sharding, result.plan.offload) == ("fsdp", True)
    assert mapped(result)[("fsdp_config.fsdp_offload_params", "offload")] is True
    args = json.dumps({"per_device_train_batch_size": 1, "fsdp": "shard_grad_op auto_wrap", "fsdp_config": {}})
    result = import_recipe([recipe("args.json", args)])
    assert result.plan.sharding == "fsdp_grad_op" and "SHARD_GRAD_OP" in result.not_modelled[0].why
    off = json.dumps({"per_device_train_batch_size": 1, "fsdp": None, "fsdp_config": {"offload_params": True}})
    assert "offload" not in import_recipe([recipe("args.json", off)]).plan_fields  # fsdp_config without fsdp: inert


def test_optimizer_names_map_to_gpuplan_optimizers() -> None:
    names = {
        "adamw_torch": "adamw",
        "adamw_torch_fused": "adamw",
        "adamw_bnb_8bit": "adamw_8bit",
        "adamw_8bit": "adamw_8bit",
        "paged_adamw_32bit": "paged_adamw_32bit",
        "paged_adamw_8bit": "paged_adamw_8bit",
        "adafactor": "adafactor",
        "sgd": "sgd",
    }
    for name, plan_name in names.items():
        result = import_recipe([recipe("args.json", json.dumps({"per_device_train_batch_size": 1, "optim": name}))])
        assert result.plan.optimizer == plan_name, name


def test_the_format_may_be_given_and_is_reported() -> None:
    result = import_recipe([recipe("x.txt", "load_in_4bit: true\nbnb_4bit_quant_type: nf4\n", "bitsandbytes")])
    assert result.formats[0].format == "bitsandbytes" and not result.formats[0].detected
    with pytest.raises(RecipeError, match="format axolotl was given, but none of the file's keys"):
        import_recipe([recipe("x.yml", "r: 8\npeft_type: LORA\n", "axolotl")])
    with pytest.raises(RecipeError, match=r"format 'unsloth' is not one gpuplan reads \(llamafactory, trl"):
        import_recipe([recipe("x.yml", "r: 8\n", "unsloth")])


def test_framework_defaults_are_marked_as_defaults() -> None:
    result = import_recipe([recipe("a.yml", "base_model: x/y\nadapter: lora\nlora_r: 8\n")])
    defaults = {e.field: e.plan_value for e in result.mapped if e.default}
    # axolotl's schema: sequence_len 512, micro_batch_size 1, no checkpointing, adamw_torch_fused, bf16 auto
    assert defaults == {
        "sequence_len": 512,
        "micro_batch_size": 1,
        "gradient_checkpointing": False,
        "optimizer": "adamw",
        "bf16": "bf16",
        "lora_dropout": 0.0,
    }
    assert result.plan.gradient_checkpointing is False and result.plan.seq_len == 512
    assert all(e.field != "adapter" or not e.default for e in result.mapped)


def test_trl_cli_config_without_use_peft_is_full_fine_tuning_in_fp32_weights() -> None:
    # ModelConfig defaults: use_peft false, dtype float32; SFTConfig: bf16 true -> bf16 autocast over fp32 weights
    result = import_recipe([recipe("sft.yaml", "model_name_or_path: Qwen/Qwen2.5-0.5B\nmax_length: 512\n")])
    assert result.plan.method == "full" and result.plan.seq_len == 512
    assert (result.plan_fields["dtype"], result.plan_fields["autocast"]) == ("bf16", True)
    assert (result.plan.weight_dtype, result.plan.autocast) == ("fp32", True)
    assert not [e for e in result.not_modelled if e.field == "bf16"]
    bf16 = [e for e in result.mapped if e.field == "bf16"]
    assert {e.plan_field for e in bf16} == {"dtype", "autocast"}


def test_trl_cli_bf16_over_bf16_weights_is_no_autocast() -> None:
    # dtype bfloat16: the weights are loaded in 16 bits, the plan's dtype; autocast changes nothing gpuplan models
    text = "model_name_or_path: Qwen/Qwen2.5-0.5B\ndtype: bfloat16\nuse_peft: true\n"
    result = import_recipe([recipe("sft.yaml", text)])
    assert (result.plan.dtype, result.plan.autocast) == ("bf16", False)


def test_nested_quantization_configs_are_read_with_the_bitsandbytes_table() -> None:
    # a model's config.json carries its BitsAndBytesConfig as quantization_config
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": {"load_in_4bit": True}}
    result = import_recipe([recipe("config.json", json.dumps(config))])
    assert result.formats[0].format == "bitsandbytes"
    assert (result.plan.quant, result.plan.double_quant) == ("fp4", False)  # BitsAndBytesConfig's defaults
    assert [e.field for e in result.unknown] == ["architectures"]
    # TRL's model_init_kwargs go to from_pretrained
    sft = {
        "max_length": 4096,
        "model_init_kwargs": {"dtype": "bfloat16", "quantization_config": {"load_in_8bit": True}},
    }
    result = import_recipe([recipe("sft.json", json.dumps(sft))])
    assert (result.plan.method, result.plan.quant, result.plan.dtype) == ("qlora", "int8", "bf16")
    assert mapped(result)[("model_init_kwargs.quantization_config.load_in_8bit", "quant")] == "int8"
    # axolotl's bnb_config_kwargs update its own nf4 + double-quant config
    axolotl = AXOLOTL + "bnb_config_kwargs:\n  bnb_4bit_quant_type: fp4\n  bnb_4bit_use_double_quant: false\n"
    result = import_recipe([recipe("a.yml", axolotl)])
    assert (result.plan.quant, result.plan.double_quant) == ("fp4", False)


def test_peft_regex_targets_and_llamafactory_freeze_are_not_modelled() -> None:
    adapter = {"peft_type": "LORA", "r": 8, "target_modules": r".*\.(q_proj|v_proj)"}
    result = import_recipe([recipe("adapter_config.json", json.dumps(adapter))])
    assert "regex" in not_modelled_why(result, "target_modules") and "targets" not in result.plan_fields
    freeze = "model_name_or_path: x/y\nstage: sft\nfinetuning_type: freeze\ncutoff_len: 1024\n"
    result = import_recipe([recipe("freeze.yaml", freeze)])
    assert "method" not in result.plan_fields and "finetuning_type" in not_modelled(result)
    assert "upcasts the trainable weights to fp32" in not_modelled_why(result, "pure_bf16")


def test_llamafactory_full_without_pure_bf16_is_autocast_over_fp32_weights() -> None:
    # model/adapter.py upcasts every trainable weight to fp32 unless pure_bf16; bf16 then runs under autocast
    text = "model_name_or_path: x/y\nstage: dpo\nfinetuning_type: full\nbf16: true\n"
    result = import_recipe([recipe("full.yaml", text)])
    unmodelled = {e.field: e for e in result.not_modelled}
    assert "pure_bf16" not in unmodelled and unmodelled["stage"].value == "dpo"
    assert result.plan.method == "full" and (result.plan.dtype, result.plan.autocast) == ("bf16", True)
    pure = [e for e in result.mapped if e.field == "pure_bf16"]
    assert pure and pure[0].default and pure[0].plan_field == "autocast"
    # pure_bf16 true keeps the weights in bf16; ZeRO-3 skips the upcast; without bf16/fp16 it trains in fp32
    for extra in ("pure_bf16: true\n", "deepspeed: examples/deepspeed/ds_z3_config.json\n"):
        assert import_recipe([recipe("full.yaml", text + extra)]).plan.autocast is False
    fp32 = "model_name_or_path: x/y\nfinetuning_type: full\n"
    assert import_recipe([recipe("full.yaml", fp32)]).plan.autocast is False


def test_offloaded_checkpointing_is_planned_with_the_layer_inputs_in_host_memory() -> None:
    # transformers 5: the Trainer pops `offload` from gradient_checkpointing_kwargs into activation_checkpointing_enable
    args = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"offload": True, "use_reentrant": False}}
    result = import_recipe([recipe("args.json", json.dumps(args))])
    assert result.plan.checkpoint_offload is True and result.plan.reentrant is False
    assert not [e for e in result.not_modelled if "offload" in e.field]
    # without checkpointing the kwargs are inert
    args["gradient_checkpointing"] = False
    assert import_recipe([recipe("args.json", json.dumps(args))]).plan.checkpoint_offload is False
    # axolotl's offload_disk: off the GPU too, reported as an approximation
    result = import_recipe([recipe("a.yml", AXOLOTL + "gradient_checkpointing: offload_disk\n")])
    assert result.plan.checkpoint_offload is True
    assert "disk" in {e.field: e for e in result.not_modelled}["gradient_checkpointing"].why


def test_liger_fused_linear_cross_entropy_is_planned_where_the_recipe_enables_it() -> None:
    plugin = "plugins: [axolotl.integrations.liger.LigerPlugin]\nliger_fused_linear_cross_entropy: true\n"
    result = import_recipe([recipe("a.yml", AXOLOTL + plugin)])
    assert result.plan.fused_cross_entropy is True
    # without the plugin the flag does nothing
    alone = import_recipe([recipe("a.yml", AXOLOTL + "liger_fused_linear_cross_entropy: true\n")])
    assert alone.plan.fused_cross_entropy is False
    # TrainingArguments / LLaMA-Factory apply every Liger kernel: the fused loss is planned, the rest reported
    for name, text in (
        ("args.json", json.dumps({"use_liger_kernel": True, "per_device_train_batch_size": 2})),
        ("lf.yaml", "model_name_or_path: x/y\nstage: sft\nfinetuning_type: lora\nenable_liger_kernel: true\n"),
    ):
        result = import_recipe([recipe(name, text)])
        assert result.plan.fused_cross_entropy is True, name
        assert "RMSNorm, SwiGLU and RoPE" in " ".join(e.why for e in result.not_modelled), name
    off = {"use_liger_kernel": True, "liger_kernel_config": {"fused_linear_cross_entropy": False}, "optim": "sgd"}
    assert import_recipe([recipe("args.json", json.dumps(off))]).plan.fused_cross_entropy is False


def test_packing_is_planned_as_full_rows_told_apart_by_position_ids() -> None:
    sft = {"max_length": 2048, "packing": True, "per_device_train_batch_size": 4, "model_init_kwargs": {}}
    result = import_recipe([recipe("sft.json", json.dumps(sft))])
    assert result.plan.packing is True and not [e for e in result.not_modelled if e.field == "packing"]
    flat = import_recipe([recipe("sft.json", json.dumps({"max_length": 2048, "padding_free": True}))])
    assert flat.plan.packing is True  # one flattened row: reported as an approximation
    assert "flattened row" in {e.field: e for e in flat.not_modelled}["padding_free"].why
    lf = "model_name_or_path: x/y\nstage: sft\nfinetuning_type: lora\nneat_packing: true\n"
    assert import_recipe([recipe("lf.yaml", lf)]).plan.packing is True


def test_trl_cli_qlora_over_fp32_weights_reports_the_autocast_not_modelled() -> None:
    # ModelConfig's dtype defaults to float32; QLoRA under autocast is not modelled: reported, and no 422
    text = "model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\nload_in_4bit: true\n"
    result = import_recipe([recipe("sft.yaml", text)])
    assert result.plan.method == "qlora" and result.plan.autocast is False
    assert "quantized base" in {e.field: e for e in result.not_modelled}["bf16"].why


def test_trl_sft_config_selects_the_sft_loop_and_its_loss_variants() -> None:
    # trl 1.16.0 sft_trainer.py: every loss_type (nll, its alias chunked_nll, dft) runs through the fused LM head
    for loss in ({}, {"loss_type": "nll"}, {"loss_type": "chunked_nll"}, {"loss_type": "dft"}):
        result = import_recipe([recipe("sft.json", json.dumps({"max_length": 512, **loss}))])
        assert result.plan.loop == "sft", loss
    # label smoothing needs the full logits: the Trainer's loss, said so
    smoothed = import_recipe([recipe("sft.json", json.dumps({"max_length": 512, "label_smoothing_factor": 0.1}))])
    assert smoothed.plan.loop == "trainer"
    assert "loss_type" in not_modelled(smoothed)
    # SFTTrainer turns Liger's fused linear cross-entropy off; its layer kernels are reported
    liger = import_recipe([recipe("sft.json", json.dumps({"max_length": 512, "use_liger_kernel": True}))])
    assert (liger.plan.loop, liger.plan.fused_cross_entropy) == ("sft", False)
    assert "use_liger_kernel" in not_modelled(liger)
    # router_aux_loss_coef 0.0 turns the MoE load-balancing loss off, another value on
    for coef, on in ((0.0, False), (0.02, True)):
        moe = import_recipe([recipe("sft.json", json.dumps({"max_length": 512, "router_aux_loss_coef": coef}))])
        assert moe.plan.router_aux_loss is on
