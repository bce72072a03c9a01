"""A first-principles step-time model (a model, not a measurement): FLOPs per token over peak × MFU, with floors.

Per trained token (N = matmul weights a token passes through: linear layers and lm_head, MoE experts × k/E):
full fine-tuning 6·N (forward 2·N, backward 4·N: input and weight gradients; Kaplan et al. 2020, §2.1);
LoRA/QLoRA 2·N forward + 2·N backward (the frozen base needs input gradients only, no weight gradients) + 6·A for
the A adapter weights (each a small trained matmul; Hu et al. 2021 keep W frozen); gradient checkpointing adds the
decoder layers' forward again; attention adds 12·L·(heads·head_dim)·s (PaLM, Chowdhery et al. 2022, appendix B,
the count MFU is defined by). The step takes the longest of compute (FLOPs / (peak × MFU)), the memory floor
(every weight read once per pass, the optimizer step's reads and writes) and, across GPUs, gradient and weight
traffic over the interconnect, plus bitsandbytes' dequantization (it writes each 4/8-bit weight out in the compute
dtype before every matmul that reads it). Known limitations: no kernel launch or dataloader time, no causal
discount, no sliding windows, no CPU offload time, DoRA's weight norm and ParamWrapper's expert folding left out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.core.adapters import lora_key
from app.core.plan import TrainingPlan
from app.core.sharding import in_param_dtype, in_reduce_dtype
from app.core.spec import ModelSpec
from app.core.stack import routed_expert, stack_model
from app.core.tensors import PlanTensors, base_key, plan_tensors
from app.core.tiers import GpuTier
from app.core.units import DTYPE_BYTES

MFU = 0.40  # model FLOPs utilisation assumed of the dense 16-bit peak (stated with every time it produces)
DEFAULT_TRAIN_TOKENS = 100_000_000
DATA_PARALLEL = ("ddp", "zero2", "zero3", "fsdp", "fsdp_grad_op")
SHARDED_STATES = ("zero2", "zero3", "fsdp", "fsdp_grad_op")
LABEL = "a first-principles model, not a measurement"

Bound = Literal["compute", "memory", "communication"]


class RunSize(BaseModel):
    """How much the run trains on: the dataset's tokens, seen `epochs` times (plan-independent inputs)."""

    model_config = ConfigDict(frozen=True)

    train_tokens: int = Field(DEFAULT_TRAIN_TOKENS, ge=1, le=10**15, description="Tokens in the training set.")
    epochs: float = Field(1.0, gt=0, le=10_000, allow_inf_nan=False, description="Passes over the training set.")

    @property
    def total_tokens(self) -> float:
        return self.train_tokens * self.epochs


class TokenFlops(BaseModel):
    """FLOPs of one trained token, by where they go."""

    model_config = ConfigDict(frozen=True)

    forward: float = Field(description="2·N: the forward matmuls.")
    backward: float = Field(description="Full: 4·N (input and weight gradients); LoRA/QLoRA: 2·N (inputs only).")
    adapters: float = Field(description="6·A: the LoRA adapters' forward and backward.")
    recompute: float = Field(description="Gradient checkpointing: the decoder layers' forward again.")
    attention: float = Field(description="12·L·(heads·head_dim)·s, forward and backward (PaLM's count).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> float:
        return self.forward + self.backward + self.adapters + self.recompute + self.attention


class StepTime(BaseModel):
    """One training step of the plan on `gpus` GPUs of a tier, and the whole run at that pace."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    gpus: int
    mfu: float
    flops_per_token: TokenFlops
    tokens_per_step: int = Field(description="Tokens one optimizer step trains, over all GPUs.")
    compute_s: float
    memory_s: float = Field(description="Memory floor: bytes the step must stream / bandwidth.")
    communication_s: float = Field(description="Gradient (and ZeRO-3/FSDP weight) traffic / interconnect.")
    dequant_s: float = Field(description="bitsandbytes writing 16-bit copies of quantized weights / bandwidth.")
    step_s: float
    bound: Bound
    tokens_per_s: float
    hours: float = Field(description="Wall-clock hours for the run's tokens.")
    gpu_hours: float


class MatmulParams(NamedTuple):
    """Matmul weights one token passes through: in the decoder layers, and outside them (lm_head)."""

    layers: float
    head: float

    @property
    def total(self) -> float:
        return self.layers + self.head


@lru_cache(maxsize=256)
def matmul_params(model: ModelSpec) -> MatmulParams:
    """Every 2-D weight outside embeddings and norms (a tied lm_head counted from its shape), 3-D expert weights
    scaled by the experts a token is routed to (k of E); embedding lookups and vectors do no matmul."""
    arch = model.arch
    routed = arch.experts_per_token / arch.num_experts if arch.num_experts else 1.0
    layers = head = 0.0
    for g in model.groups:
        if g.kind in ("embedding", "norm"):
            continue
        n = 0.0
        for p in g.params:
            if len(p.shape) == 2:
                n += p.numel
            elif len(p.shape) == 3 and p.shape[0] == arch.num_experts:
                n += p.numel * routed
        if g.output_layer and not g.params:
            n = g.in_features * g.out_features  # tied to the input embedding, still a matmul
        if g.in_layers:
            layers += n * g.count
        else:
            head += n * g.count
    return MatmulParams(layers, head)


def adapter_params(model: ModelSpec, tensors: PlanTensors) -> MatmulParams:
    """LoRA weights a token passes through (adapters of routed experts scaled by k/E: a fused 3-D expert weight, or
    transformers 4's per-expert linears, `….experts.*.<name>`)."""
    arch = model.arch
    layers = head = 0.0
    for ad in tensors.adapted:
        experts = routed_expert(ad.group)
        n = ad.params * (arch.experts_per_token / arch.num_experts if experts and arch.num_experts else 1.0)
        if ad.group.in_layers:
            layers += n
        else:
            head += n
    return MatmulParams(layers, head)


def forward_flops(params: MatmulParams) -> float:
    """2·N: one multiply and one add per weight per token (Kaplan et al. 2020, §2.1)."""
    return 2 * params.total


def backward_flops(params: MatmulParams, plan: TrainingPlan) -> float:
    """Full: 4·N (gradients of the inputs and of the weights); LoRA/QLoRA: 2·N, inputs only (frozen base)."""
    return (4 if plan.method == "full" else 2) * params.total


def adapter_flops(adapters: MatmulParams) -> float:
    """6·A: forward 2·A, backward 4·A for the trained adapter matmuls (x·A then ·B, Hu et al. 2021)."""
    return 6 * adapters.total


def attention_flops(model: ModelSpec, plan: TrainingPlan) -> float:
    """12·L·(heads·head_dim)·s per token, forward and backward: QKᵀ and AV over the whole s×s matrix (PaLM,
    Chowdhery et al. 2022, appendix B; no causal discount, as MFU is defined)."""
    arch = model.arch
    return 12 * arch.num_layers * arch.num_heads * arch.head_dim * plan.seq_len


def recompute_flops(params: MatmulParams, adapters: MatmulParams, attention: float, plan: TrainingPlan) -> float:
    """Gradient checkpointing (every-layer or sqrt-n: each layer's forward runs once more in backward): the decoder
    layers' matmuls 2·N_layers, their adapters 2·A_layers and attention's forward (a third of its count)."""
    if not plan.gradient_checkpointing:
        return 0.0
    return 2 * params.layers + 2 * adapters.layers + attention / 3


def token_flops(model: ModelSpec, plan: TrainingPlan) -> TokenFlops:
    """The FLOPs of one trained token under the plan."""
    params = matmul_params(model)
    adapters = adapter_params(model, _tensors(model, plan)) if plan.uses_lora else MatmulParams(0, 0)
    attention = attention_flops(model, plan)
    return TokenFlops(
        forward=forward_flops(params),
        backward=backward_flops(params, plan),
        adapters=adapter_flops(adapters),
        recompute=recompute_flops(params, adapters, attention, plan),
        attention=attention,
    )


def _tensors(model: ModelSpec, plan: TrainingPlan) -> PlanTensors:
    """The plan's tensors on the model as its stack lays it out (app/core/stack.py), as estimate() counts them."""
    return plan_tensors(stack_model(model, plan.stack), base_key(plan), lora_key(plan))


def passes(plan: TrainingPlan) -> int:
    """How often a step reads every weight: forward, backward (and the recompute under checkpointing)."""
    return 3 if plan.gradient_checkpointing else 2


def memory_floor_bytes(model: ModelSpec, plan: TrainingPlan, gpus: int) -> int:
    """Bytes one GPU must stream per step at least: every weight once per pass, and the optimizer step reading and
    writing states, gradients and trained weights (sharded by ZeRO-2/3 and FSDP)."""
    inv = _tensors(model, plan).inventory
    weights = inv.base.total + inv.adapters.total
    trained = inv.base.total if plan.method == "full" else inv.adapters.total
    step = 2 * (inv.states.total + inv.paged_states + inv.grads.total + trained)
    shards = gpus if plan.sharding in SHARDED_STATES else 1
    return passes(plan) * weights + step // shards


def dequant_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """bitsandbytes dequantizes each quantized weight to the compute dtype before every matmul that reads it: a
    write and a read of `numel × c` bytes per pass."""
    inv, laid_out = _tensors(model, plan).inventory, stack_model(model, plan.stack)
    numel = sum(g.count * g.weight.numel for g in laid_out.groups if g.name in inv.quantized and g.weight is not None)
    return passes(plan) * numel * 2 * DTYPE_BYTES[plan.dtype]


def communication_bytes(model: ModelSpec, plan: TrainingPlan, gpus: int) -> int:
    """Per GPU and step, ring collectives (n−1)/n of: DDP/ZeRO-2 2·G (all-reduce, or reduce-scatter + all-gather);
    ZeRO-3/FSDP 2·W + G (weights gathered for forward and backward, gradients reduce-scattered) — ZeRO, Rajbhandari
    et al. 2020, §7; FSDP2 without resharding after forward (fsdp_grad_op) W + G, its layers gathered once a step
    (measured on CPU ranks: no gather in backward). Layers split across GPUs (sharding none): none counted. Under
    FSDP2's MixedPrecisionPolicy the gathers move the param dtype and the reduce-scatters the reduce dtype
    (sharding:in_param_dtype, in_reduce_dtype), not the fp32 shards."""
    if gpus < 2 or plan.sharding not in DATA_PARALLEL:
        return 0
    inv = _tensors(model, plan).inventory
    grads = in_reduce_dtype(plan, inv.grads.total)
    weights = in_param_dtype(plan, inv.base.total + inv.adapters.total)
    gathers = {"zero3": 2, "fsdp": 2, "fsdp_grad_op": 1}.get(plan.sharding, 0)
    volume = gathers * weights + grads if gathers else 2 * grads
    return volume * (gpus - 1) // gpus


def peak_flops(tier: GpuTier, plan: TrainingPlan) -> float:
    """The tier's dense peak for the compute dtype: 16-bit tensor cores, or fp32 for fp32 plans."""
    return (tier.fp32_tflops if plan.dtype == "fp32" else tier.dense_16bit_tflops) * 1e12


class StepWork(NamedTuple):
    """What one step of a plan on `gpus` GPUs does whatever the tier: the FLOPs of a token and the bytes moved."""

    flops: TokenFlops
    memory_bytes: int
    communication_bytes: int
    dequant_bytes: int


def step_work(model: ModelSpec, plan: TrainingPlan, gpus: int, other: StepWork | None = None) -> StepWork:
    """The tier-independent half of step_time (recommend() computes it once per GPU count, not once per tier).
    `other` is the same plan's work on another GPU count: its FLOPs per token and dequantized bytes, which no GPU
    count changes, are taken from it."""
    return StepWork(
        flops=other.flops if other else token_flops(model, plan),
        memory_bytes=memory_floor_bytes(model, plan, gpus),
        communication_bytes=communication_bytes(model, plan, gpus),
        dequant_bytes=other.dequant_bytes if other else dequant_bytes(model, plan),
    )


def step_time(
    model: ModelSpec,
    plan: TrainingPlan,
    tier: GpuTier,
    gpus: int,
    run: RunSize | None = None,
    mfu: float = MFU,
    work: StepWork | None = None,
) -> StepTime | None:
    """The step time of `plan` on `gpus` GPUs of `tier`, and the run's hours; None when the tier has no figures.
    `work` is step_work(model, plan, gpus) when the caller has it already."""
    run = run or RunSize()
    peak, bandwidth = peak_flops(tier, plan), tier.memory_bandwidth_gbs * 1e9
    if peak <= 0 or bandwidth <= 0:
        return None
    work = work or step_work(model, plan, gpus)
    flops = work.flops
    micro = plan.batch_size * plan.seq_len
    parts: dict[Bound, float] = {
        "compute": flops.total * micro / (peak * mfu),
        "memory": work.memory_bytes / bandwidth,
        "communication": work.communication_bytes / (tier.interconnect_gbs * 1e9 or bandwidth),
    }
    dequant = work.dequant_bytes / bandwidth
    bound = max(parts, key=lambda k: parts[k])
    step = parts[bound] + dequant
    tokens = micro * (gpus if plan.sharding in DATA_PARALLEL else 1)  # split layers take turns: one micro-batch
    hours = run.total_tokens / (tokens / step) / 3600
    return StepTime(
        gpu=tier.name,
        gpus=gpus,
        mfu=mfu,
        flops_per_token=flops,
        tokens_per_step=tokens,
        compute_s=parts["compute"],
        memory_s=parts["memory"],
        communication_s=parts["communication"],
        dequant_s=dequant,
        step_s=step,
        bound=bound,
        tokens_per_s=tokens / step,
        hours=hours,
        gpu_hours=hours * gpus,
    )
