"""ModelSpec: a model's architecture summary and exact per-module inventory, as the core sees it."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

ModuleKind = Literal["linear", "embedding", "norm", "other"]
ModelSource = Literal["catalog", "file", "hub"]


class ParamShape(BaseModel):
    """One parameter of a module: its attribute name and shape."""

    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]

    @cached_property
    def numel(self) -> int:
        return math.prod(self.shape)


class ModuleGroup(BaseModel):
    """Identical modules that differ only by layer index, e.g. `model.layers.*.self_attn.q_proj` x 32.

    `params` lists the parameters one instance owns (tied parameters are listed only on the
    module that owns them, so summing `params` over groups gives the deduplicated total).
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Module path; '*' stands for the layer index.")
    cls: str = Field(description="The transformers/torch class of the module.")
    kind: ModuleKind
    count: int = Field(ge=1)
    params: tuple[ParamShape, ...] = ()
    in_layers: bool = Field(description="Part of the repeated decoder layers.")
    quantizable: bool = Field(
        description="bitsandbytes would replace this module (an nn.Linear not in modules_to_not_convert)."
    )
    peft_linear: bool = Field(description="PEFT can wrap it in a LoRA layer (nn.Linear or Conv1D).")
    output_layer: bool = Field(False, description="The output embedding (lm_head); PEFT's all-linear skips it.")
    tied: bool = Field(False, description="Its weight is shared with another module (tied embeddings).")
    in_features: int = Field(0, ge=0, description="Linear input width (embeddings: vocabulary size).")
    out_features: int = Field(0, ge=0, description="Linear output width (embeddings: embedding width).")

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def weight(self) -> ParamShape | None:
        for p in self.params:
            if p.name == "weight":
                return p
        return None

    @cached_property
    def numel(self) -> int:
        """Parameters of one instance."""
        return sum(p.numel for p in self.params)


class MlaShape(BaseModel):
    """DeepSeek multi-head latent attention: q and kv compressed to ranks, heads split into rope and non-rope parts."""

    model_config = ConfigDict(frozen=True)

    q_lora_rank: int = Field(0, ge=0, description="0: q is projected directly (no q_a/q_b).")
    kv_lora_rank: int = Field(ge=1)
    qk_nope_head_dim: int = Field(ge=0)
    qk_rope_head_dim: int = Field(ge=0)
    v_head_dim: int = Field(ge=1)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class ArchSummary(BaseModel):
    """The config fields the activation model needs."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    architecture: str
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    tie_word_embeddings: bool
    num_experts: int = Field(0, ge=0)
    experts_per_token: int = Field(0, ge=0)
    mlp_gated: bool = Field(description="SwiGLU/GeGLU-style MLP (gate and up projections).")
    parallel_block: bool = Field(
        False, description="Attention and MLP read the same normed input (Falcon, Phi-2, GPT-NeoX)."
    )
    norms_per_layer: int = Field(2, ge=0)
    norm_kind: Literal["rms", "gemma", "layer"] = Field(
        "rms", description="RMSNorm (llama), Gemma's (1+w) RMSNorm, or LayerNorm."
    )
    qkv_fused: bool = Field(False, description="One fused q/k/v projection (Phi-3, Falcon).")
    gate_up_fused: bool = Field(False, description="One fused gate/up projection (Phi-3).")
    max_position_embeddings: int | None = None
    # 2024-2025 architecture features; each default is the plain Llama-style layer, so older inventories read the same
    qk_norm: Literal["none", "head", "token"] = Field(
        "none",
        description="Norms on q and k: per head (Qwen3, Gemma 3, Llama 4) or over the whole projection (OLMo 2).",
    )
    qk_norm_weight: bool = Field(True, description="The q/k norms have a weight (Llama 4's L2 norm has none).")
    qk_norm_layers: int = Field(0, ge=0, description="Decoder layers with q/k norms (Llama 4: its RoPE layers).")
    sandwich_norms: bool = Field(
        False, description="Norms on the attention and MLP outputs too (Gemma 2/3: post_attention/post_feedforward)."
    )
    sliding_window: int | None = Field(None, description="Attention window of the sliding (or chunked) layers.")
    sliding_layers: int = Field(0, ge=0, description="Decoder layers that attend within sliding_window.")
    attention: Literal["standard", "mla", "sinks"] = Field(
        "standard", description="mla: DeepSeek's latent attention; sinks: gpt-oss's learned per-head sink logits."
    )
    mla: MlaShape | None = Field(None, description="The latent attention's ranks and head widths (attention mla).")
    sdpa: bool = Field(True, description="transformers can run it with SDPA (Gemma 2 and gpt-oss cannot).")
    flash_attention: bool = Field(True, description="transformers can run it with flash_attention_2.")
    dense_layers: int = Field(
        0, ge=0, description="MoE models: decoder layers with a dense MLP instead of experts (layer 0 is one)."
    )
    dense_intermediate_size: int = Field(0, ge=0, description="The dense layers' MLP width.")
    first_moe_layer: int = Field(
        0, ge=0, description="Index of the first layer with experts (DeepSeek: first_k_dense_replace; Llama 4: 1)."
    )
    shared_expert_size: int = Field(0, ge=0, description="Width of the shared expert MLP beside the routed experts.")
    router: Literal["softmax", "sigmoid", "topk_softmax"] = Field(
        "softmax",
        description="How routing weights are made: softmax over all experts (Mixtral, Qwen3-MoE), sigmoid (DeepSeek, "
        "Llama 4) or softmax over the k chosen (gpt-oss, Granite MoE).",
    )
    routing_fp32: bool = Field(
        True,
        description="The routing weights the experts' outputs are scaled by are fp32 (Mixtral, DeepSeek), not cast to "
        "the activation dtype (Qwen2/3-MoE, OLMoE, Granite MoE, gpt-oss).",
    )
    experts: Literal["grouped", "clamped", "dense", "linear"] = Field(
        "grouped",
        description="grouped: transformers-5 grouped_mm over the routed rows; clamped: the same with gpt-oss's biases "
        "and clamped SwiGLU; dense: Llama 4's bmm of every expert over every token; linear: transformers 4's loop "
        "over per-expert nn.Linear MLPs (app/core/stack.py).",
    )
    mxfp4_experts: bool = Field(
        False,
        description="The checkpoint is published with its experts in MXFP4 (config quantization_config quant_method "
        "mxfp4: gpt-oss); the inventory counts them unquantized.",
    )
    fp32_params: tuple[str, ...] = Field(
        (), description="Parameters kept in fp32 whatever the load dtype (_keep_in_fp32_modules_strict)."
    )
    lora_unsafe: tuple[str, ...] = Field(
        (),
        description="Leaf names of nn.Linear subclasses PEFT's LoRA layer cannot wrap (their forward returns a tuple).",
    )


class ModelSpec(BaseModel):
    """Everything the estimate needs to know about one model."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: ModelSource
    revision: str | None = None
    config_hash: str = Field(description="sha256 of the canonical config JSON the inventory was built from.")
    transformers_version: str = Field(description="The transformers version that built the inventory.")
    arch: ArchSummary
    groups: tuple[ModuleGroup, ...]
    published_params: int | None = Field(None, description="Parameter count the Hub or model card states, if known.")
    notes: tuple[str, ...] = Field(
        (), description="What the resolver wants the user to know (e.g. remote code not run)."
    )

    def __hash__(self) -> int:
        # specs key the core's caches: hash what identifies the inventory (pydantic's default hashes every
        # module group, ~10 us a call); equality stays pydantic's field-by-field comparison
        return hash((self.id, self.config_hash))

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def num_params(self) -> int:
        """sum(p.numel() for p in model.parameters()), tied parameters counted once."""
        return sum(g.count * g.numel for g in self.groups)
