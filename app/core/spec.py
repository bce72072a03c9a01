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
