"""Which modules PEFT adapts, and the LoRA/DoRA parameters it adds, matched exactly as PEFT matches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

from app.core.mxfp4 import check_mxfp4
from app.core.plan import ALL_LINEAR, Attn, Mxfp4, TrainingPlan
from app.core.result import Adjustment
from app.core.spec import ModelSpec, ModuleGroup
from app.errors import PlanError, StackRefusal

# PEFT maps the v4 names of transformers-5 fused MoE layers to parameters it wraps (ParamWrapper), and
# all-linear adds them (peft 0.21 utils/transformers_weight_conversion.py: _MOE_TARGET_MODULE_MAPPING, line 332,
# and _MOE_FUSED_TARGETS, line 348), for the model types whose conversion pattern is one of those
# (_convert_peft_config_moe, line 414: `_MODEL_TO_CONVERSION_PATTERN.get(model_type)`, transformers'
# conversion_mapping.py table plus PEFT's own "mixtral" entry, line 45). A model type absent from that table,
# "qwen2_moe" itself included, is not converted: its fused experts are not adapted.
_MIXTRAL_STYLE = {"gate": "weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"}
_QWEN2_MOE_STYLE = {"gate": "weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}
_CONVERTED = {
    "mixtral": ("mixtral", "minimax", "minimax_m2"),
    "qwen2_moe": (
        "afmoe", "beam", "cohere2_moe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe",
        "exaone_moe", "flex_olmo", "glm4_moe", "glm4_moe_lite", "glm4v_moe", "glm_moe_dsa", "hunyuan_v1_moe",
        "longcat_flash", "mellum", "olmoe", "qwen3_moe", "qwen3_next", "qwen3_omni_moe", "qwen3_omni_moe_text",
        "qwen3_omni_moe_thinker", "sarvam_mla", "solar_open",
    ),
}  # fmt: skip
MOE_PARAM_TARGETS: dict[str, dict[str, str]] = {
    model_type: _MIXTRAL_STYLE if style == "mixtral" else _QWEN2_MOE_STYLE
    for style, model_types in _CONVERTED.items()
    for model_type in model_types
}
# fused gate_up gets rank_pattern 2r so gate and up keep rank r each
FUSED_PARAMS = {"gate_up_proj"}
# plan fields PEFT may refuse for a model (StackRefusal), each replaced by the value it accepts
REFUSABLE = ("dropout", "dora", "targets", "attn", "mxfp4", "fsdp_version")


class LoraKey(NamedTuple):
    """The plan fields the adapters depend on (what PEFT's LoraConfig sees); hashable, so a cache key."""

    uses_lora: bool
    targets: tuple[str, ...] | Literal["all-linear"]
    rank: int
    dora: bool
    dropout: bool  # dropout > 0: PEFT wraps the input in nn.Dropout


def lora_key(plan: TrainingPlan) -> LoraKey:
    return LoraKey(plan.uses_lora, plan.targets, plan.rank, plan.dora, plan.dropout > 0)


@dataclass(frozen=True)
class Adapted:
    """One adapted module group and the shapes of the adapter tensors one instance gets."""

    group: ModuleGroup
    shapes: tuple[tuple[int, ...], ...]  # lora_A, lora_B (and DoRA magnitude) per instance
    wrapped_params: tuple[str, ...] = ()  # ParamWrapper: the module parameters adapted in place

    @property
    def params(self) -> int:
        return self.group.count * sum(math.prod(s) for s in self.shapes)


def _linear(group: ModuleGroup, lora: LoraKey) -> Adapted:
    r = lora.rank
    # LoRA: A is r x in_features, B is out_features x r (embeddings: A r x vocab, B dim x r); DoRA: one magnitude per output
    shapes = [(r, group.in_features), (group.out_features, r)] + ([(group.out_features,)] if lora.dora else [])
    return Adapted(group=group, shapes=tuple(shapes))


def _wrapped(group: ModuleGroup, names: set[str], lora: LoraKey) -> Adapted:
    """PEFT ParamWrapper on 2-D (router) or 3-D (experts, E x out x in) parameters: A (r*E, in), B (out, r*E)."""
    # peft/tuners/lora/layer.py ParamWrapper.__init__ (0.21): "does not work with lora_dropout != 0" / "use_dora=True"
    if lora.dropout:
        raise StackRefusal(
            f"PEFT cannot apply LoRA dropout to {group.name} ({group.cls}, adapted through ParamWrapper): "
            "set dropout to 0, or target the attention projections only",
            field="dropout",
            accepted=0.0,
        )
    if lora.dora:
        raise StackRefusal(
            f"PEFT's ParamWrapper on {group.name} does not support DoRA: turn DoRA off or target attention only",
            field="dora",
            accepted=False,
        )
    shapes: list[tuple[int, ...]] = []
    wrapped = []
    for p in group.params:
        if p.name not in names:
            continue
        experts, out_f, in_f = p.shape if len(p.shape) == 3 else (1, *p.shape)
        r = lora.rank * (2 if p.name in FUSED_PARAMS else 1) * experts
        shapes += [(r, in_f), (out_f, r)]
        wrapped.append(p.name)
    return Adapted(group=group, shapes=tuple(shapes), wrapped_params=tuple(wrapped))


def _matches(group: ModuleGroup, target: str) -> bool:
    # PEFT: `key in target_modules or key.endswith("." + target)`; '*' in our names stands for a layer index
    # and can never be part of a target, so suffix matching on the pattern is exact.
    return group.name == target or group.name.endswith("." + target)


def adapted_groups(model: ModelSpec, plan: TrainingPlan) -> tuple[list[Adapted], list[str]]:
    """The module groups LoRA wraps, and notes (e.g. targets that matched nothing)."""
    adapted, notes = adapted_modules(model, lora_key(plan))
    return list(adapted), list(notes)


def adapted_modules(model: ModelSpec, lora: LoraKey) -> tuple[tuple[Adapted, ...], tuple[str, ...]]:
    """adapted_groups for the plan's LoRA fields only: the module groups LoRA wraps, and notes."""
    if not lora.uses_lora:
        return (), ()
    notes: list[str] = []
    # transformers 4's per-expert nn.Linears (app/core/stack.py) are wrapped like any linear: nothing to convert
    moe = {} if model.arch.experts == "linear" else MOE_PARAM_TARGETS.get(model.arch.model_type, {})
    wrapped: dict[str, set[str]] = {}  # group name -> parameter names PEFT wraps
    if lora.targets == ALL_LINEAR:
        # PEFT's all-linear: every nn.Linear/Conv1D except the output embedding (+ fused MoE parameters); on a
        # converted MoE model the leaf names the mapping renames are moved to the experts' parameters, so linears
        # of those names (a dense layer's or a shared expert's gate_proj/up_proj/down_proj) get no LoRA
        chosen = [g for g in model.groups if g.peft_linear and not g.output_layer and g.leaf not in moe]
        skipped = sorted({g.leaf for g in model.groups if g.peft_linear and g.leaf in moe})
        if skipped:
            notes.append(
                f"PEFT maps {', '.join(skipped)} to the fused experts' parameters on {model.arch.model_type}, so the "
                "dense and shared-expert MLP linears of those names get no LoRA (peft _convert_peft_config_moe)"
            )
        requested = set(moe)
    else:
        requested = {t for t in lora.targets if t in moe}
        chosen = []
        for target in lora.targets:
            if target in moe:
                continue
            hits = [g for g in model.groups if _matches(g, target)]
            if not hits:
                notes.append(f"target {target!r} matches no module of {model.id}; PEFT ignores it")
            for g in hits:
                if g.kind not in ("linear", "embedding"):
                    raise PlanError(
                        f"target {target!r} matches {g.name} ({g.cls}), which LoRA cannot adapt; "
                        "target linear layers such as q_proj,v_proj or use all-linear"
                    )
                if g not in chosen:
                    chosen.append(g)
    _check_fused_pairs(moe, requested)
    for target in requested:
        param = moe[target]
        for g in model.groups:
            if g.in_layers and not g.peft_linear and any(p.name == param for p in g.params):
                if param == "weight" and g.leaf != target:
                    continue
                wrapped.setdefault(g.name, set()).add(param)
    if lora.targets != ALL_LINEAR and not chosen and not wrapped:
        linear = sorted({g.leaf for g in model.groups if g.peft_linear})
        raise PlanError(f"none of the targets {list(lora.targets)} exist in {model.id}; its linear layers are {linear}")
    _check_lora_safe(model, chosen, lora)
    adapted = [_linear(g, lora) for g in chosen]
    adapted += [_wrapped(g, wrapped[g.name], lora) for g in model.groups if g.name in wrapped]
    return tuple(adapted), tuple(notes)


def _check_lora_safe(model: ModelSpec, chosen: list[ModuleGroup], lora: LoraKey) -> None:
    """PEFT's lora.Linear adds the adapter to its base layer's output, so it cannot wrap an nn.Linear subclass whose
    forward returns a tuple (Llama 4's router, `lora_unsafe`): the step fails. The nearest plan targets the rest."""
    unsafe = sorted({g.leaf for g in chosen if g.leaf in model.arch.lora_unsafe})
    if not unsafe:
        return
    rest = tuple(dict.fromkeys(g.leaf for g in chosen if g.leaf not in model.arch.lora_unsafe))
    if not rest:
        raise PlanError(f"PEFT cannot wrap {', '.join(unsafe)} of {model.id} with LoRA: target other linear layers")
    raise StackRefusal(
        f"PEFT's LoRA layer cannot wrap {', '.join(unsafe)} ({model.arch.architecture}: an nn.Linear whose forward "
        "returns a tuple, so the training step fails): target the other linear layers",
        field="targets",
        accepted=rest,
    )


def _check_fused_pairs(moe: dict[str, str], requested: set[str]) -> None:
    """PEFT refuses to target one half of a fused parameter (e.g. gate_proj without up_proj for gate_up_proj)."""
    for param in sorted(FUSED_PARAMS):
        halves = {t for t, p in moe.items() if p == param}
        present = halves & requested
        if present and present != halves:
            raise PlanError(
                f"PEFT cannot target {', '.join(sorted(present))} without {', '.join(sorted(halves - present))}: "
                f"they are fused into {param}; target both, or neither"
            )


def check_attention(model: ModelSpec, attn: Attn) -> None:
    """transformers refuses an attention implementation a model class does not support (`_supports_sdpa`,
    `_supports_flash_attn`: Gemma 2 and gpt-oss have no SDPA path, Llama 4 no flash_attention_2); the nearest it
    runs is sdpa where it can, else eager (what transformers itself falls back to when none is asked for)."""
    arch = model.arch
    supported = {"sdpa": arch.sdpa, "flash_attention_2": arch.flash_attention, "eager": True}
    if supported[attn]:
        return
    accepted = "sdpa" if arch.sdpa else "eager"
    raise StackRefusal(
        f"transformers has no {attn} attention for {arch.architecture} (its _supports_"
        f"{'sdpa' if attn == 'sdpa' else 'flash_attn'} is False): use attn {accepted}",
        field="attn",
        accepted=accepted,
    )


def _needs_check(model: ModelSpec, plan: TrainingPlan) -> bool:
    arch = model.arch
    lora = plan.uses_lora and (plan.dropout > 0 or plan.dora or bool(arch.lora_unsafe) or _fsdp1(plan))
    return lora or not (arch.sdpa and arch.flash_attention) or plan.mxfp4 != "dequantize"


def _fsdp1(plan: TrainingPlan) -> bool:
    return plan.fsdp_version == 1 and plan.sharding in ("fsdp", "fsdp_grad_op") and plan.gpus > 1


def fsdp1_refusal(model: ModelSpec, plan: TrainingPlan) -> StackRefusal | None:
    """LoRA on fused MoE expert parameters (PEFT's ParamWrapper) under FSDP1: the wrapper adapts the parameter in
    place, and FSDP1's FlatParameter (use_orig_params: the parameters become views into its shard) hands it a
    piece of another size: the first forward fails ("inconsistent tensor size, expected tensor [16] and src [512]"),
    measured on CPU ranks (mixtral, all-linear, FULL_SHARD and SHARD_GRAD_OP, with and without checkpointing, every
    backward prefetch). FSDP2 (fully_shard, a DTensor per parameter) runs it (+0.47 % on the same plan). QLoRA under
    SHARD_GRAD_OP: `fsdp1_qlora_refusal`."""
    if not (plan.uses_lora and _fsdp1(plan)):
        return None
    if (qlora := fsdp1_qlora_refusal(plan)) is not None:
        return qlora
    try:
        adapted, _ = adapted_modules(model, lora_key(plan))
    except StackRefusal:
        return None  # the adapters' own refusal comes first (_refusal)
    wrapped = sorted({a.group.name for a in adapted if a.wrapped_params})
    if not wrapped:
        return None
    return StackRefusal(
        f"PEFT's ParamWrapper ({', '.join(wrapped)}: LoRA on fused expert parameters) fails under FSDP1's flat "
        "parameters: use fsdp_version 2, or target the attention projections only",
        field="fsdp_version",
        accepted=2,
    )


def fsdp1_qlora_refusal(plan: TrainingPlan) -> StackRefusal | None:
    """QLoRA under FSDP1's SHARD_GRAD_OP (sharding fsdp_grad_op): bitsandbytes' Linear4bit.forward sets its weight
    again as a Params4bit carrying the module's quant state (`fix_4bit_weight_quant_state_from_module`: FSDP1's views
    are plain tensors), and SHARD_GRAD_OP keeps the unsharded views from forward to backward, where FSDP1 checks that
    no parameter changed: the first backward fails ("FSDP does not support changing the parameters between forward
    and backward for HandleShardingStrategy.SHARD_GRAD_OP"), measured on CPU ranks (llama and mistral, 2 ranks, with
    and without checkpointing). FULL_SHARD reshards after forward and runs it; so does FSDP2. Source:
    bitsandbytes 0.50.2 nn/modules.py, torch 2.13 distributed/fsdp/_flat_param.py (`_writeback_orig_params`)."""
    if plan.method != "qlora" or plan.sharding != "fsdp_grad_op" or not _fsdp1(plan):
        return None
    return StackRefusal(
        "QLoRA under FSDP1's SHARD_GRAD_OP fails in the first backward: bitsandbytes' Linear4bit re-wraps its weight "
        "in forward and SHARD_GRAD_OP's kept unsharded views refuse a changed parameter; use fsdp_version 2, or "
        "sharding fsdp",
        field="fsdp_version",
        accepted=2,
    )


def accepted_plan(model: ModelSpec, plan: TrainingPlan) -> tuple[TrainingPlan, tuple[Adjustment, ...]]:
    """The nearest plan the real stack accepts, and what changed: each setting transformers or PEFT refuses
    (StackRefusal) is set to the value it takes, one at a time. A strict plan is refused instead, with the reason.
    """
    if not _needs_check(model, plan):
        return plan, ()  # none of the settings the stack refuses here (REFUSABLE) applies: nothing to check
    adjustments: list[Adjustment] = []
    for _ in range(len(REFUSABLE) + 1):
        refusal = _refusal(model, plan.attn, lora_key(plan), plan.mxfp4) or fsdp1_refusal(model, plan)
        if refusal is not None:
            if plan.strict:
                raise StackRefusal(
                    f"{refusal.detail} (strict plan; without strict gpuplan answers for {refusal.field}="
                    f"{_shown(refusal.accepted)})",
                    field=refusal.field,
                    accepted=refusal.accepted,
                ) from None
            requested = getattr(plan, refusal.field)
            update = {refusal.field: refusal.accepted}
            if refusal.field == "fsdp_version":  # FSDP2 has no backward prefetch option (TrainingPlan's rule)
                update["fsdp_backward_prefetch"] = "none"
            plan = plan.model_copy(update=update)
            adjustments.append(
                Adjustment(field=refusal.field, requested=requested, used=refusal.accepted, why=refusal.detail)
            )
            continue
        return plan, tuple(adjustments)
    raise PlanError(f"no plan near this one is accepted by PEFT on {model.id}")


@lru_cache(maxsize=1024)
def _refusal(model: ModelSpec, attn: Attn, lora: LoraKey, mxfp4: Mxfp4) -> StackRefusal | None:
    """The first setting transformers or PEFT refuses for these plan fields, or None (cached: estimate() is called in
    loops, and a refusal is the same every time)."""
    try:
        check_mxfp4(model, mxfp4)
        check_attention(model, attn)
        adapted_modules(model, lora)
    except StackRefusal as refusal:
        return refusal
    return None


def _shown(value: object) -> object:
    return ",".join(value) if isinstance(value, tuple) else value
