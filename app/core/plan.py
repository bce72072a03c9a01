"""The training plan: every choice that changes how much memory a fine-tuning step takes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["qlora", "lora", "full"]
Quant = Literal["nf4", "fp4", "int8", "none"]
DType = Literal["bf16", "fp16", "fp32"]
# FSDP2 MixedPrecisionPolicy.reduce_dtype (FSDP1 MixedPrecision.reduce_dtype): the param dtype (accelerate's policy) or fp32
ReduceDType = Literal["param", "fp32"]
Checkpointing = Literal["every-layer", "sqrt-n"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "sgd", "adafactor"]
Attn = Literal["sdpa", "flash_attention_2", "eager"]
# fsdp: FSDP2 fully_shard with reshard_after_forward=True (FSDP1 FULL_SHARD); fsdp_grad_op: reshard_after_forward=False
# (FSDP1 SHARD_GRAD_OP): each layer's gathered weights stay from its forward to its backward
Sharding = Literal["none", "ddp", "fsdp", "fsdp_grad_op", "zero2", "zero3"]
# FSDP1 (torch.distributed.fsdp.FullyShardedDataParallel, FlatParameter per wrapped unit) or FSDP2 (fully_shard)
FsdpVersion = Literal[1, 2]
BackwardPrefetch = Literal["none", "pre", "post"]
# how FSDP2's units are cut: accelerate >= 1.14's fsdp2_prepare_model (decoder layers, the input embedding, a tail of
# final norm + lm_head kept gathered, the root at torch's default), or each layer then the whole model (accelerate
# <= 1.13, and loops that call fully_shard that way): app/core/fsdp2_units.py
FsdpUnits = Literal["accelerate", "layers"]
# DeepSpeed ZeRO's reduce_bucket_size / stage3_prefetch_bucket_size / stage3_param_persistence_threshold: DeepSpeed's
# own defaults, or transformers' `auto` fill from the model's hidden size (app/core/zero.py `bucket_sizes`)
ZeroBuckets = Literal["deepspeed", "auto"]
Device = Literal["cuda", "cpu"]
# the software stack whose semantics are modelled (app/core/stack.py): transformers 5 (the installed calibration stack)
# or transformers 4.4x-4.57 with the peft/bitsandbytes that pair with it
Stack = Literal["transformers-5", "transformers-4"]
# the training loop whose loss is modelled: transformers.Trainer (or a hand-written loop calling model(labels=...)), or
# TRL's SFTTrainer, whose fused LM head never makes the logits (app/core/fused_head.py)
Loop = Literal["trainer", "sft"]
# a checkpoint published in MXFP4 (gpt-oss's experts): dequantized at load, or kept (app/core/mxfp4.py)
Mxfp4 = Literal["dequantize", "keep"]

ALL_LINEAR = "all-linear"
FOLLOWS_METHOD = frozenset({"quant", "optimizer"})
"""Fields whose default, when not given, depends on the method (the validators below fill them in)."""

# Explicit input limits; the API and the CLI report violations by field.
MAX_SEQ_LEN = 1_048_576
MAX_BATCH = 4096
MAX_RANK = 4096
MAX_GPUS = 4096
MAX_LAYERS = 4096
MAX_GRAD_ACCUM = 4096


class TrainingPlan(BaseModel):
    """How the model is fine-tuned; defaults are the popular QLoRA recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = Field(
        "qlora", description="qlora: LoRA on a quantized base; lora: LoRA on a 16-bit base; full: every weight trained."
    )
    quant: Quant | None = Field(
        None, description="Base weight quantization; defaults to nf4 for qlora and none otherwise."
    )
    double_quant: bool = Field(True, description="bitsandbytes double quantization of the 4-bit absmax constants.")
    dtype: DType = Field("bf16", description="Compute dtype (and weight dtype of unquantized bases).")
    autocast: bool = Field(
        False,
        description="Weights loaded in fp32 and the step run under torch.autocast in `dtype` (TrainingArguments "
        "bf16=True / fp16=True over a float32 model): fp32 weights, gradients and optimizer states, 16-bit matmuls. "
        "With fsdp_mixed_precision: accelerate's mixed_precision over FSDP1 (its forward under autocast, each unit "
        "gathered in `dtype` by MixedPrecision, so autocast's weight casts are no-ops).",
    )
    fsdp_mixed_precision: bool = Field(
        False,
        description="FSDP's mixed precision over fp32 weights, as accelerate builds it for mixed_precision bf16/fp16: "
        "FSDP2's MixedPrecisionPolicy(param_dtype=`dtype`) (fsdp2_prepare_model), or FSDP1's MixedPrecision(param_dtype"
        "=buffer_dtype=`dtype`) with fsdp_version 1 (prepare_model): the shards, their gradients and optimizer states "
        "are fp32, each layer is gathered and run in `dtype`, its gradients reduce-scattered in `fsdp_reduce_dtype`. "
        "Sharding fsdp or fsdp_grad_op only.",
    )
    fsdp_reduce_dtype: ReduceDType = Field(
        "param",
        description="The dtype FSDP reduce-scatters gradients in under fsdp_mixed_precision: param (= `dtype`, as "
        "accelerate's set_mixed_precision builds the policy) or fp32 (reduce_dtype=float32).",
    )
    rank: int = Field(16, ge=1, le=MAX_RANK, description="LoRA rank r.")
    alpha: float = Field(
        32, gt=0, le=1_000_000, allow_inf_nan=False, description="LoRA alpha (scaling numerator); no effect on memory."
    )
    dropout: float = Field(
        0.05,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="LoRA dropout; >0 keeps a dropped copy of each adapted input.",
    )
    targets: tuple[str, ...] | Literal["all-linear"] = Field(
        "all-linear", description="LoRA target module names (suffix match, as PEFT) or 'all-linear'."
    )
    dora: bool = Field(
        False, description="DoRA: adds a magnitude vector per adapted layer and a weight-norm transient."
    )
    rslora: bool = Field(False, description="rsLoRA scaling alpha/sqrt(r); no effect on memory.")
    seq_len: int = Field(2048, ge=1, le=MAX_SEQ_LEN, description="Tokens per sequence.")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH, description="Micro-batch size per GPU.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward instead of keeping them.")
    checkpointing: Checkpointing = Field(
        "every-layer", description="every-layer (transformers) or sqrt-n (Chen et al. 2016)."
    )
    reentrant: bool = Field(
        False,
        description="Reentrant checkpointing (torch.utils.checkpoint use_reentrant=True: axolotl's default, and PEFT's "
        "prepare_model_for_kbit_training without kwargs) instead of transformers' non-reentrant default.",
    )
    checkpoint_every: int = Field(
        1,
        ge=1,
        le=MAX_LAYERS,
        description="Checkpoint only every n-th decoder layer (transformers 5 `every_n_layers`); the others keep "
        "their activations.",
    )
    checkpoint_offload: bool = Field(
        False,
        description="The checkpointed layers' inputs are held in pinned host memory (transformers 5 "
        "`activation_checkpointing_enable(offload=True)`: torch.autograd.graph.save_on_cpu around each checkpoint).",
    )
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=MAX_GRAD_ACCUM,
        description="Gradient accumulation: micro-batches per optimizer step; from the second on, every gradient "
        "is alive through forward and backward.",
    )
    keep_logits: bool = Field(
        False,
        description="The loop keeps the model's outputs (and so the logits) alive through backward, as "
        "`out = model(...); out.loss.backward()` does; transformers.Trainer drops them.",
    )
    packing: bool = Field(
        False,
        description="Several sequences packed into each row, told apart by position_ids (TRL packing / padding_free, "
        "axolotl sample_packing, LLaMA-Factory packing): every row full; under sdpa or eager transformers "
        "materialises a block-diagonal mask, flash_attention_2 runs varlen without one.",
    )
    fused_cross_entropy: bool = Field(
        False,
        description="Liger's fused linear cross-entropy (axolotl liger_fused_linear_cross_entropy, Liger via "
        "use_liger_kernel / enable_liger_kernel): lm_head and the loss run chunk by chunk, the logits are never "
        "materialised whole.",
    )
    router_aux_loss: bool = Field(
        False,
        description="MoE router auxiliary (load-balancing) loss: config output_router_logits=True (LLaMA-Factory "
        "moe_aux_loss_coef, axolotl/TrainingArguments model_config output_router_logits); every MoE layer's router "
        "logits and their softmax are kept until the loss's backward.",
    )
    loop: Loop = Field(
        "trainer",
        description="The training loop: trainer (transformers.Trainer, or a loop calling model(labels=...): full "
        "logits and their cross-entropy) or sft (TRL 1.x SFTTrainer: its fused LM head scores each position's label "
        "in 4096 x 32768 tiles, never the whole logits; with a quantized base it casts the LoRA weights to bf16).",
    )
    optimizer: Optimizer = Field(
        "paged_adamw_32bit",
        description="Optimizer whose states are kept per trainable parameter; when not given it follows the method: "
        "adamw for full fine-tuning, paged_adamw_32bit for LoRA/QLoRA.",
    )
    attn: Attn = Field("sdpa", description="Attention implementation.")
    gpus: int = Field(1, ge=1, le=MAX_GPUS, description="Number of GPUs.")
    sharding: Sharding = Field(
        "none",
        description="none (one GPU, or layers split across GPUs), ddp, fsdp (FSDP2, resharding after forward), "
        "fsdp_grad_op (FSDP2 reshard_after_forward=False, FSDP1 SHARD_GRAD_OP), zero2, zero3.",
    )
    fsdp_version: FsdpVersion = Field(
        2,
        description="FSDP implementation under sharding fsdp/fsdp_grad_op: 2 (fully_shard, transformers' default) or "
        "1 (FullyShardedDataParallel as accelerate wraps it: FULL_SHARD / SHARD_GRAD_OP, one FlatParameter per "
        "decoder layer and one for the root, its backward prefetch: fsdp_backward_prefetch).",
    )
    fsdp_units: FsdpUnits = Field(
        "accelerate",
        description="How FSDP2 (fsdp_version 2) cuts its units: accelerate (accelerate 1.14+'s fsdp2_prepare_model, "
        "the calibration stack's 1.16: a unit per decoder layer, one for the input embedding, one tail of final "
        "norm and lm_head left gathered from its forward to its backward, the root at torch's default) or layers "
        "(accelerate up to 1.13, and loops calling fully_shard on each layer and then the model: the root holds "
        "everything outside the layers and is resharded after forward). Other shardings have no units: accelerate.",
    )
    fsdp_backward_prefetch: BackwardPrefetch = Field(
        "none",
        description="FSDP1's backward_prefetch (fsdp_config.backward_prefetch): none (NO_PREFETCH, what transformers' "
        "TrainingArguments passes when fsdp_config names none: training_args.py `_process_fsdp_args`, "
        "transformers 5.24; accelerate 1.15's FullyShardedDataParallelPlugin turns it into None), pre "
        "(BACKWARD_PRE: the next unit gathered before the current one's gradients) or post (BACKWARD_POST: after "
        "the current one is resharded). FSDP2 has no such option (accelerate drops it).",
    )
    zero_buckets: ZeroBuckets = Field(
        "deepspeed",
        description="DeepSpeed ZeRO's bucket sizes (zero2/zero3): deepspeed (DeepSpeed's defaults: reduce_bucket_size "
        "5e8, stage3_prefetch_bucket_size 5e7, stage3_param_persistence_threshold 1e5 elements) or auto (the "
        'DeepSpeed configs\' "auto", filled by transformers/accelerate from the hidden size h: h·h, 0.9·h·h, 10·h).',
    )
    offload: bool = Field(False, description="Offload optimizer states (and ZeRO-3/FSDP parameters) to CPU memory.")
    device: Device = Field("cuda", description="cuda, or cpu for the calibration reference tracker.")
    mxfp4: Mxfp4 = Field(
        "dequantize",
        description="A checkpoint published in MXFP4 (gpt-oss's experts): dequantize them at load "
        "(Mxfp4Config(dequantize=True), the gpt-oss fine-tuning cookbook's load) or keep them in MXFP4 "
        "(dequantize=False, the Mxfp4Config default); transformers cannot train a kept model, so keep is answered "
        "dequantized, with the reason and the bytes keeping would have saved.",
    )
    stack: Stack = Field(
        "transformers-5",
        description="The software stack modelled: transformers-5 (5.x with peft 0.18+, the calibration stack) or "
        "transformers-4 (4.4x-4.57 with peft 0.17: MoE experts are per-expert nn.Linear, so bitsandbytes quantizes "
        "them and LoRA can wrap them).",
    )
    strict: bool = Field(
        False,
        description="Refuse a setting the real stack refuses (e.g. LoRA dropout on MoE experts PEFT wraps through "
        "ParamWrapper) instead of answering the nearest plan it accepts, with the change stated.",
    )

    @model_validator(mode="before")
    @classmethod
    def _optimizer_follows_method(cls, data: object) -> object:
        """No optimizer given: full fine-tuning gets AdamW (TrainingArguments defaults `optim` to a torch AdamW), LoRA and
        QLoRA the paged AdamW of the QLoRA recipe."""
        if isinstance(data, dict) and data.get("optimizer") is None and data.get("method") == "full":
            return {**data, "optimizer": "adamw"}
        return data

    @field_validator("fsdp_version", mode="before")
    @classmethod
    def _version_number(cls, value: object) -> object:
        """`1` or `2` from a flag, a form or a query string."""
        return int(value) if isinstance(value, str) and value.strip() in ("1", "2") else value

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip() == ALL_LINEAR:
                return ALL_LINEAR
            value = [part for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) for v in value):
                raise ValueError('targets are module names as strings, e.g. ["q_proj", "v_proj"], or "all-linear"')
            names = tuple(v.strip() for v in value)
            if names == (ALL_LINEAR,):
                return ALL_LINEAR
            if ALL_LINEAR in names:
                raise ValueError("all-linear stands alone: give it without other module names")
            if not names or any(not n for n in names):
                raise ValueError("give at least one non-empty module name, e.g. q_proj,v_proj, or all-linear")
            for n in names:
                if not all(c.isalnum() or c in "._-" for c in n) or len(n) > 200:
                    raise ValueError(f"{n!r} is not a module name (letters, digits, '.', '_', '-')")
            return tuple(dict.fromkeys(names))
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainingPlan:
        quant = self.quant
        if quant is None:
            object.__setattr__(self, "quant", "nf4" if self.method == "qlora" else "none")
        elif self.method == "qlora" and quant == "none":
            raise ValueError("qlora needs a quantized base: quant must be nf4, fp4 or int8 (or use method lora)")
        elif self.method != "qlora" and quant != "none":
            raise ValueError(f"method {self.method} trains a 16-bit base: use method qlora for quant {quant}")
        if self.method == "qlora" and self.sharding in ("fsdp", "fsdp_grad_op", "zero3") and self.quant == "int8":
            raise ValueError("int8 bases cannot be sharded with fsdp/zero3: use nf4 or fp4, or ddp")
        if self.fsdp_version == 1 and self.sharding not in ("fsdp", "fsdp_grad_op"):
            raise ValueError(
                "fsdp_version 1 selects FSDP1 for sharding fsdp or fsdp_grad_op: set one, or fsdp_version 2"
            )
        if self.fsdp_version != 2 or self.sharding not in ("fsdp", "fsdp_grad_op"):
            object.__setattr__(self, "fsdp_units", "accelerate")  # only FSDP2 has units to cut
        if self.fsdp_backward_prefetch != "none" and self.fsdp_version != 1:
            raise ValueError(
                "fsdp_backward_prefetch is FSDP1's (accelerate drops it under FSDP2): set fsdp_version 1, or none"
            )
        if self.fsdp_version == 1 and self.offload:
            raise ValueError("FSDP1's CPU offload is not modelled: use fsdp_version 2 for offload, or turn offload off")
        if self.offload and self.sharding not in ("fsdp", "fsdp_grad_op", "zero2", "zero3"):
            raise ValueError("offload needs sharding fsdp, fsdp_grad_op, zero2 or zero3")
        if self.autocast and (self.dtype == "fp32" or self.method == "qlora"):
            raise ValueError(
                "autocast runs 16-bit matmuls over fp32 weights of a lora or full plan: use dtype bf16 or fp16 "
                "and method lora or full"
            )
        self._check_fsdp_mixed_precision()
        if self.zero_buckets != "deepspeed" and self.sharding not in ("zero2", "zero3"):
            raise ValueError("zero_buckets sizes DeepSpeed ZeRO's buckets: use sharding zero2 or zero3")
        if (self.reentrant or self.checkpoint_every > 1 or self.checkpoint_offload) and not self.gradient_checkpointing:
            raise ValueError(
                "reentrant, checkpoint_every and checkpoint_offload are kinds of gradient checkpointing: turn "
                "gradient_checkpointing on"
            )
        if self.loop == "sft" and (self.keep_logits or self.fused_cross_entropy):
            raise ValueError(
                "SFTTrainer computes the loss in its fused LM head: it keeps no model output (keep_logits) and refuses "
                "Liger's fused cross-entropy; turn keep_logits and fused_cross_entropy off, or use loop trainer"
            )
        if self.checkpoint_every > 1 and self.checkpointing != "every-layer":
            raise ValueError(
                "checkpoint_every picks layers of every-layer checkpointing: use checkpointing every-layer"
            )
        return self

    def _check_fsdp_mixed_precision(self) -> None:
        if self.fsdp_reduce_dtype != "param" and not self.fsdp_mixed_precision:
            raise ValueError(
                "fsdp_reduce_dtype is a part of FSDP's mixed-precision policy: turn fsdp_mixed_precision on"
            )
        if not self.fsdp_mixed_precision:
            return
        if self.sharding not in ("fsdp", "fsdp_grad_op"):
            raise ValueError("fsdp_mixed_precision is FSDP's mixed precision: use sharding fsdp or fsdp_grad_op")
        if self.dtype == "fp32" or self.method == "qlora":
            raise ValueError(
                "fsdp_mixed_precision gathers fp32 weights of a lora or full plan in a 16-bit dtype: use dtype bf16 "
                "or fp16 and method lora or full"
            )

    @property
    def quantized(self) -> bool:
        return self.quant not in (None, "none")

    @property
    def weight_dtype(self) -> DType:
        """The dtype the weights are loaded in: fp32 under autocast or FSDP2's mixed-precision policy, else the plan
        dtype."""
        return "fp32" if self.autocast or self.fsdp_mixed_precision else self.dtype

    @property
    def autocast_over_fp32(self) -> bool:
        """autocast casting the fp32 weights themselves, matmul by matmul: autocast without an FSDP mixed-precision
        policy. With one (accelerate's `mixed_precision: bf16` under FSDP1: prepare_model wraps the forward in
        torch.autocast, then FSDP1 with MixedPrecision) each unit is gathered in `dtype` first, so autocast's casts of
        the weights and of the 16-bit stream are no-ops."""
        return self.autocast and not self.fsdp_mixed_precision

    @property
    def uses_lora(self) -> bool:
        return self.method != "full"
