"""Which modules PEFT adapts, and the LoRA/DoRA parameters it adds, matched exactly as PEFT matches."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.plan import ALL_LINEAR, TrainingPlan
from app.core.spec import ModelSpec, ModuleGroup
from app.errors import PlanError


@dataclass(frozen=True)
class Adapted:
    """One adapted module group and the adapter parameters per instance."""

    group: ModuleGroup
    lora_params: int  # A (r x in) + B (out x r) per instance
    dora_params: int  # magnitude vector (out) per instance

    @property
    def params(self) -> int:
        return self.group.count * (self.lora_params + self.dora_params)


def _matches(group: ModuleGroup, target: str) -> bool:
    # PEFT: `key in target_modules or key.endswith("." + target)`; '*' in our names stands for a layer index
    # and can never be part of a target, so suffix matching on the pattern is exact.
    return group.name == target or group.name.endswith("." + target)


def adapted_groups(model: ModelSpec, plan: TrainingPlan) -> tuple[list[Adapted], list[str]]:
    """The module groups LoRA wraps, and notes (e.g. targets that matched nothing)."""
    if not plan.uses_lora:
        return [], []
    notes: list[str] = []
    if plan.targets == ALL_LINEAR:
        # PEFT's all-linear: every nn.Linear/Conv1D except the output embedding.
        chosen = [g for g in model.groups if g.peft_linear and not g.output_layer]
    else:
        chosen = []
        for target in plan.targets:
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
        if not chosen:
            names = sorted({g.leaf for g in model.groups if g.peft_linear})
            raise PlanError(
                f"none of the targets {list(plan.targets)} exist in {model.id}; its linear layers are {names}"
            )
    r = plan.rank
    adapted = [
        Adapted(
            group=g,
            # LoRA: A is r x in_features, B is out_features x r (embeddings: A r x vocab, B dim x r)
            lora_params=r * g.in_features + g.out_features * r,
            # DoRA: one magnitude per output feature
            dora_params=g.out_features if plan.dora else 0,
        )
        for g in chosen
    ]
    return adapted, notes
