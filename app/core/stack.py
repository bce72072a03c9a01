"""The software stack as an input: a model as transformers 4 builds it, from the inventory transformers 5 built.

The inventories are built by the installed transformers 5, where MoE experts are one fused module of 3-D
parameters (`gate_up_proj` E x 2i x h, `down_proj` E x h x i) that bitsandbytes does not quantize
(bitsandbytes#1849) and PEFT adapts through ParamWrapper. transformers 4.4x-4.57 built the same weights as an
`nn.ModuleList` of per-expert MLPs of `nn.Linear`s, with an `nn.Linear` router: bitsandbytes quantizes them (only
the output embedding is kept, `get_keys_to_not_convert`) and PEFT wraps them like any linear (all-linear takes them).
Each rewrite below is read off transformers 4.57.6 (models/<type>/modeling_<type>.py), checked on the meta device.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from app.core.plan import Stack
from app.core.spec import ModelSpec, ModuleGroup, ParamShape


class SplitExperts(NamedTuple):
    """How transformers 4 lays out one family's experts: the MoE block's attribute name, the per-expert linears'
    names for the gate, up and down projections, and whether the router is an nn.Linear."""

    block: str
    gate: str
    up: str
    down: str
    linear_router: bool


# transformers 4.57.6: MixtralSparseMoeBlock (block_sparse_moe, gate nn.Linear, experts[*].w1/w3/w2),
# Qwen3MoeSparseMoeBlock (mlp, gate nn.Linear, experts[*].gate_proj/up_proj/down_proj), DeepseekV3MoE (mlp,
# DeepseekV3TopkRouter: a bare weight, experts[*].gate_proj/up_proj/down_proj). gpt-oss (GptOssExperts), Llama 4
# (Llama4TextExperts) and Granite MoE (ParallelExperts) were fused 3-D parameters in transformers 4 already.
TF4_EXPERTS: dict[str, SplitExperts] = {
    "mixtral": SplitExperts("block_sparse_moe", "w1", "w3", "w2", linear_router=True),
    "qwen3_moe": SplitExperts("mlp", "gate_proj", "up_proj", "down_proj", linear_router=True),
    "deepseek_v3": SplitExperts("mlp", "gate_proj", "up_proj", "down_proj", linear_router=False),
}
STACK_LABELS: dict[Stack, str] = {
    "transformers-5": "transformers 5 (5.24, peft 0.21, bitsandbytes 0.50: the calibration stack)",
    "transformers-4": "transformers 4 (4.4x-4.57, peft 0.17, bitsandbytes 0.48: MoE experts as nn.Linear)",
}


def routed_expert(group: ModuleGroup) -> bool:
    """A routed expert's weights (a token passes through k of E): fused 3-D parameters, or transformers 4's
    per-expert linears as `stack_model` names them (`….experts.*.<name>`)."""
    return any(len(p.shape) == 3 for p in group.params) or ".experts.*." in group.name


@lru_cache(maxsize=256)
def stack_model(model: ModelSpec, stack: Stack) -> ModelSpec:
    """The model as `stack` builds it: the same parameters, laid out in that stack's modules."""
    split = TF4_EXPERTS.get(model.arch.model_type) if stack == "transformers-4" else None
    if split is None or model.arch.experts != "grouped":
        return model
    groups: list[ModuleGroup] = []
    for group in model.groups:
        groups += _tf4_groups(group, split, model.arch.num_experts)
    # 4.57's Mixtral casts the routing weights back to the hidden dtype before scaling the experts' output
    routing_fp32 = model.arch.routing_fp32 and model.arch.model_type != "mixtral"
    arch = model.arch.model_copy(update={"experts": "linear", "routing_fp32": routing_fp32})
    return model.model_copy(update={"groups": tuple(groups), "arch": arch})


def _tf4_groups(group: ModuleGroup, split: SplitExperts, experts: int) -> list[ModuleGroup]:
    """One transformers-5 group as transformers 4's modules: fused experts become three per-expert linears, a
    router its nn.Linear (when it was one); every other group is unchanged but for the MoE block's name."""
    layer, _, leaf = group.name.rpartition(".")
    if not layer.endswith(".mlp") or leaf not in ("experts", "gate"):
        return [group]
    block = layer.rpartition(".")[0] + "." + split.block
    if leaf == "gate":
        if not split.linear_router or group.weight is None:
            return [group.model_copy(update={"name": f"{block}.gate"})]
        out_f, in_f = group.weight.shape
        return [_linear(f"{block}.gate", group.count, in_f, out_f)]
    shapes = {p.name: p.shape for p in group.params}
    _, two_i, h = shapes["gate_up_proj"]
    i = two_i // 2
    count = group.count * experts
    name = f"{block}.experts.*"
    return [
        _linear(f"{name}.{split.gate}", count, h, i),
        _linear(f"{name}.{split.up}", count, h, i),
        _linear(f"{name}.{split.down}", count, i, h),
    ]


def _linear(name: str, count: int, in_features: int, out_features: int) -> ModuleGroup:
    return ModuleGroup(
        name=name,
        cls="Linear",
        kind="linear",
        count=count,
        params=(ParamShape(name="weight", shape=(out_features, in_features)),),
        in_layers=True,
        quantizable=True,
        peft_linear=True,
        in_features=in_features,
        out_features=out_features,
    )
