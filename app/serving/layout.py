"""KvLayout: what each decoder layer caches per token, read from the model's config as transformers reads it.

The layout is pure data: an edge (`app/serving/sources.py`) finds the config (the catalog entry's) and
`kv_layout(arch, config)` turns it into per-layer kinds, for each engine:

* full      - every token of the context (K and V: 2 x kv_heads x head_dim per token);
* sliding   - the last `window` tokens (Gemma 2/3 local layers, gpt-oss, Mistral, Phi-3);
* chunked   - Llama 4's chunked local attention (`attention_chunk_size`), cached like a sliding window;
* MLA       - DeepSeek's compressed cache: one latent of kv_lora_rank + qk_rope_head_dim per token, no x2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.spec import ArchSummary

LayerKind = Literal["full", "sliding", "chunked"]

# transformers config classes that fill `layer_types` in __post_init__ when the config.json has none
# (models/<type>/configuration_<type>.py): Gemma 2 and gpt-oss alternate sliding/full starting with sliding,
# Gemma 3 makes every `sliding_window_pattern`-th layer (default 6) full.
ALTERNATING = frozenset({"gemma2", "gpt_oss", "cohere2"})
PATTERNED = frozenset({"gemma3", "gemma3_text"})
GEMMA3_DEFAULT_PATTERN = 6
# Qwen2/3 slide layers from max_window_layers on when use_sliding_window; Llama 4 chunks its RoPE layers
QWEN = frozenset({"qwen2", "qwen3", "qwen2_moe", "qwen3_moe"})
LLAMA4 = frozenset({"llama4", "llama4_text"})
LLAMA4_NOPE_INTERVAL = 4


class KvLayout(BaseModel):
    """Per-layer KV-cache kinds and widths; `vllm_kinds` differ where vLLM's model code reads the config otherwise."""

    model_config = ConfigDict(frozen=True)

    kinds: tuple[LayerKind, ...] = Field(description="What transformers' DynamicCache keeps per layer.")
    vllm_kinds: tuple[LayerKind, ...] = Field(description="What vLLM's attention layers declare per layer.")
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1, description="Key head width.")
    v_head_dim: int = Field(ge=1, description="Value head width (usually head_dim).")
    window: int | None = Field(None, ge=1, description="Sliding window (or attention chunk) in tokens.")
    kv_lora_rank: int | None = Field(None, ge=1, description="MLA: width of the compressed KV latent.")
    rope_dim: int | None = Field(None, ge=1, description="MLA: qk_rope_head_dim, the decoupled RoPE key.")
    source: str = Field(description="Where the layout was read from.")

    @property
    def num_layers(self) -> int:
        return len(self.kinds)

    @property
    def latent_dim(self) -> int | None:
        """MLA: kv_lora_rank + qk_rope_head_dim, one latent per token per layer."""
        if self.kv_lora_rank is None:
            return None
        return self.kv_lora_rank + (self.rope_dim or 0)

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank is not None

    def count(self, kind: LayerKind, *, vllm: bool = False) -> int:
        return sum(1 for k in (self.vllm_kinds if vllm else self.kinds) if k == kind)


def repeated(kind: LayerKind, n: int) -> tuple[LayerKind, ...]:
    return tuple(kind for _ in range(n))


def full_layout(arch: ArchSummary, source: str = "arch summary (full attention)") -> KvLayout:
    """Every layer caches the whole context: the layout when no config fields say otherwise."""
    kinds = repeated("full", arch.num_layers)
    return KvLayout(
        kinds=kinds,
        vllm_kinds=kinds,
        kv_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        v_head_dim=arch.head_dim,
        source=source,
    )


def _kind(name: object) -> LayerKind:
    # transformers' layer_types names (configuration_utils.ALLOWED_LAYER_TYPES); anything else caches like full
    if name == "sliding_attention":
        return "sliding"
    if name == "chunked_attention":
        return "chunked"
    return "full"


def llama4_kinds(config: Mapping[str, Any], num_layers: int) -> tuple[LayerKind, ...]:
    """Llama4TextConfig: "chunked_attention" for RoPE layers (no_rope_layers[i] == 1), every 4th layer full."""
    listed = config.get("no_rope_layers")
    interval = int(config.get("no_rope_layer_interval") or LLAMA4_NOPE_INTERVAL)
    flags = listed if isinstance(listed, list) and listed else [int((i + 1) % interval != 0) for i in range(num_layers)]
    return tuple("chunked" if flags[i] else "full" for i in range(num_layers))


def declared_kinds(model_type: str, config: Mapping[str, Any], num_layers: int) -> tuple[LayerKind, ...] | None:
    """`layer_types` as the transformers config class has it after __post_init__, or None when it has none."""
    listed = config.get("layer_types")
    if isinstance(listed, list) and len(listed) >= num_layers:
        return tuple(_kind(t) for t in listed[:num_layers])
    if model_type in QWEN and config.get("use_sliding_window") and config.get("sliding_window"):
        first = int(config.get("max_window_layers") or 0)  # sliding for i >= max_window_layers
        return tuple("sliding" if i >= first else "full" for i in range(num_layers))
    if model_type in LLAMA4 and config.get("attention_chunk_size", 8192):
        return llama4_kinds(config, num_layers)
    if config.get("sliding_window") is None and model_type not in PATTERNED | ALTERNATING:
        return None
    if model_type in ALTERNATING:  # "sliding_attention" if bool((i + 1) % 2) else "full_attention"
        return tuple("sliding" if (i + 1) % 2 else "full" for i in range(num_layers))
    if model_type in PATTERNED:
        pattern = int(config.get("sliding_window_pattern") or GEMMA3_DEFAULT_PATTERN)
        return tuple("sliding" if (i + 1) % pattern else "full" for i in range(num_layers))
    return None


def _window(model_type: str, config: Mapping[str, Any], kinds: tuple[LayerKind, ...]) -> int | None:
    if "chunked" in kinds:
        return int(config.get("attention_chunk_size") or 8192)  # Llama4TextConfig default
    if "sliding" in kinds:
        default = 4096 if model_type in PATTERNED | {"gemma2"} else None  # Gemma2/3 config class defaults
        value = config.get("sliding_window", default)
        return int(value) if value else None
    return None


def kv_layout(arch: ArchSummary, config: Mapping[str, Any] | None) -> KvLayout:
    """The layout the config gives, as transformers (DynamicCache) and vLLM (KV-cache specs) read it.

    transformers (cache_utils.get_layer_types_and_kwargs): `layer_types` when the config class has them, else every
    layer slides when `sliding_window` is set (Mistral, Phi-3). vLLM (model_executor/models/llama.py and siblings)
    slides only the layers `layer_types` marks, so a Mistral-7B-v0.1 is full attention there. Qwen2/3 drop
    the window unless `use_sliding_window`. MLA (DeepSeek V2/V3) caches kv_lora_rank + qk_rope_head_dim.
    """
    if config is None:
        return full_layout(arch)
    n, model_type = arch.num_layers, arch.model_type
    base = full_layout(arch, source="config.json")
    if config.get("kv_lora_rank") and config.get("qk_rope_head_dim"):
        # modeling_deepseek_v3.py: cache.update(kv_nope [b,1,s,kv_lora_rank], k_rot [b,1,s,qk_rope_head_dim])
        rank, rope = int(config["kv_lora_rank"]), int(config["qk_rope_head_dim"])
        return base.model_copy(update={"kv_lora_rank": rank, "rope_dim": rope, "kv_heads": 1})
    if config.get("use_sliding_window") is False and "layer_types" not in config:
        return base  # Qwen2/Qwen3 configs: sliding_window = sliding_window if use_sliding_window else None
    declared = declared_kinds(model_type, config, n)
    if declared is not None:
        return base.model_copy(
            update={"kinds": declared, "vllm_kinds": declared, "window": _window(model_type, config, declared)}
        )
    if config.get("sliding_window"):
        return base.model_copy(update={"kinds": repeated("sliding", n), "window": int(config["sliding_window"])})
    return base
