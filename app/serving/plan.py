"""The serving plan: every choice that changes how much memory serving a model takes (engine, precision, cache)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Engine = Literal["transformers", "vllm"]
Weights = Literal["bf16", "fp16", "nf4", "int8", "fp8", "mxfp4"]
KvDType = Literal["bf16", "fp16", "fp8"]
ServingDevice = Literal["cuda", "cpu"]

# Explicit input limits; the API and the CLI report violations by field (as TrainingPlan's).
MAX_CONTEXT = 1_048_576
MAX_CONCURRENCY = 65_536
MAX_ADAPTERS = 256
MAX_ADAPTER_RANK = 512
MAX_TP = 64
MAX_BATCHED_TOKENS = 1_048_576
# The block sizes vLLM's CacheConfig listed (vllm/config/cache.py BlockSize, before v0.33.0 made block_size any
# positive int); kept as the sizes the CUDA attention backends take
BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
# vLLM's LoRAConfig accepts these max_lora_rank values (vllm/config/lora.py MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServingPlan(BaseModel):
    """How the model is served; defaults are `vllm serve` on one GPU with a bf16 model and cache."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine = Field(
        "vllm", description="vllm: paged KV cache (vLLM V1); transformers: model.generate() with a DynamicCache."
    )
    weights: Weights = Field(
        "bf16",
        description="Served weight precision: bf16/fp16, bitsandbytes nf4 or int8, fp8 (e4m3, 128x128 block scales), "
        "or mxfp4 MoE experts (gpt-oss).",
    )
    adapters: int = Field(
        0,
        ge=0,
        le=MAX_ADAPTERS,
        description="0: adapter merged into the weights (or none); N: N unmerged LoRA adapters served at once "
        "(vLLM --max-loras).",
    )
    adapter_rank: int = Field(
        16, ge=1, le=MAX_ADAPTER_RANK, description="LoRA rank of the unmerged adapters (vLLM --max-lora-rank)."
    )
    context: int = Field(
        4096, ge=1, le=MAX_CONTEXT, description="Tokens per sequence, prompt + output (vLLM --max-model-len)."
    )
    output_tokens: int = Field(
        256,
        ge=1,
        le=MAX_CONTEXT,
        description="Tokens generated per sequence (part of context); transformers prefills the rest at once.",
    )
    concurrency: int = Field(
        1, ge=1, le=MAX_CONCURRENCY, description="Sequences served at once (transformers: the generate() batch)."
    )
    kv_dtype: KvDType = Field("bf16", description="KV-cache dtype (vLLM --kv-cache-dtype; fp8 is e4m3).")
    tp: int = Field(1, ge=1, le=MAX_TP, description="Tensor-parallel GPUs: weights and KV heads split across them.")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="vLLM: fraction of each GPU's memory the engine budgets (weights, activations, KV).",
    )
    max_num_batched_tokens: int = Field(
        8192,
        ge=1,
        le=MAX_BATCHED_TOKENS,
        description="vLLM: tokens one step schedules, and the profiled forward (vllm serve: 8192 on >=70 GiB GPUs "
        "but A100, 2048 on others).",
    )
    max_num_seqs: int = Field(
        256,
        ge=1,
        le=MAX_CONCURRENCY,
        description="vLLM: most sequences one step runs (vllm serve: 256; 1024 on >=70 GiB GPUs but A100).",
    )
    block_size: int = Field(16, ge=1, le=128, description="vLLM: tokens per KV-cache block (1, 8, 16, 32, 64, 128).")
    enforce_eager: bool = Field(False, description="vLLM --enforce-eager: no CUDA graphs are captured.")
    profile_cudagraphs: bool = Field(
        True,
        description="vLLM's VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS (1, the default since v0.21.0): the KV pool "
        "leaves room for the CUDA graphs; false (=0): they come out of the 1 - utilization slack.",
    )
    gpu: str | None = Field(
        None, max_length=64, description="A GPU tier to stretch: the largest concurrency and context on tp of it."
    )
    device: ServingDevice = Field(
        "cuda", description="cuda, or cpu for the calibration reference (transformers engine only)."
    )

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        if value not in BLOCK_SIZES:
            raise ValueError(f"vLLM takes block sizes {', '.join(map(str, BLOCK_SIZES))}")
        return value

    @property
    def prompt_tokens(self) -> int:
        """Tokens prefilled at once: the context less the output (at least one)."""
        return max(1, self.context - self.output_tokens)

    @property
    def vllm(self) -> bool:
        return self.engine == "vllm"
