"""Which modules PEFT adapts, and the LoRA/DoRA parameters it adds, matched exactly as PEFT matches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from app.core.plan import ALL_LINEAR, TrainingPlan
from app.core.result import Adjustment
from app.core.spec import ModelSpec, ModuleGroup
from app.errors import PlanError, StackRefusal

# PEFT maps the v4 names of transformers-5 fused MoE layers to parameters it wraps (ParamWrapper), and
# all-linear adds them: transformers_weight_conversion._MOE_TARGET_MODULE_MAPPING / _MOE_FUSED_TARGETS.
MOE_PARAM_TARGETS = {
    "mixtral": {"gate": "weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"},
}
# fused gate_up gets rank_pattern 2r so gate and up keep rank r each
FUSED_PARAMS = {"gate_up_proj"}
# plan fields PEFT may refuse for a model (StackRefusal), each replaced by the value it accepts
REFUSABLE = ("dropout", "dora")


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
    moe = MOE_PARAM_TARGETS.get(model.arch.model_type, {})
    wrapped: dict[str, set[str]] = {}  # group name -> parameter names PEFT wraps
    if lora.targets == ALL_LINEAR:
        # PEFT's all-linear: every nn.Linear/Conv1D except the output embedding (+ fused MoE parameters)
        chosen = [g for g in model.groups if g.peft_linear and not g.output_layer]
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
    adapted = [_linear(g, lora) for g in chosen]
    adapted += [_wrapped(g, wrapped[g.name], lora) for g in model.groups if g.name in wrapped]
    return tuple(adapted), tuple(notes)


def accepted_plan(model: ModelSpec, plan: TrainingPlan) -> tuple[TrainingPlan, tuple[Adjustment, ...]]:
    """The nearest plan the real stack accepts, and what changed: each setting PEFT refuses (StackRefusal) is set
    to the value it takes, one at a time. A strict plan is refused instead, with PEFT's reason.
    """
    if not (plan.uses_lora and (plan.dropout > 0 or plan.dora)):
        return plan, ()  # the only settings PEFT refuses here (REFUSABLE) are off: nothing to check
    adjustments: list[Adjustment] = []
    for _ in range(len(REFUSABLE) + 1):
        try:
            adapted_modules(model, lora_key(plan))
        except StackRefusal as refusal:
            if plan.strict:
                raise StackRefusal(
                    f"{refusal.detail} (strict plan; without strict gpuplan answers for {refusal.field}="
                    f"{refusal.accepted})",
                    field=refusal.field,
                    accepted=refusal.accepted,
                ) from None
            requested = getattr(plan, refusal.field)
            plan = plan.model_copy(update={refusal.field: refusal.accepted})
            adjustments.append(
                Adjustment(field=refusal.field, requested=requested, used=refusal.accepted, why=refusal.detail)
            )
            continue
        return plan, tuple(adjustments)
    raise PlanError(f"no plan near this one is accepted by PEFT on {model.id}")
