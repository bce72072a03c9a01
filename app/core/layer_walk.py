"""Backward, layer by layer, when only some decoder layers are checkpointed (transformers 5 `every_n_layers`).

With every layer checkpointed the backward of every layer looks alike, and the estimate's last and first layers'
moments bound it. With `checkpoint_every` n > 1 they do not: the unchecked layers keep their whole saved set until
their own backward, which then needs no recompute, and a checkpointed layer's recompute runs only once the layers
above it have freed theirs. `walk_moments` is each layer's moment, from the top down.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from app.core.activations import LayerActivations, LayerStack, kept_layers, kind_layers
from app.core.plan import TrainingPlan


class DeviceInputs(NamedTuple):
    """How many checkpointed layer inputs are on the device: through the step, and at layer 0's backward."""

    through: int
    at_end: int


def device_checkpoint_inputs(plan: TrainingPlan, kept: int) -> DeviceInputs:
    """The checkpointed layer inputs on the device. Without checkpoint_offload every kept one (layer 0's alone at
    the end). With it (transformers 5 `activation_checkpointing_enable(offload=True)`: each checkpoint runs under
    torch.autograd.graph.save_on_cpu, which packs the inputs the checkpoint saves into host copies) the device
    keeps layer 0's input — the model's forward holds `inputs_embeds` until it returns, and with a frozen
    embedding (LoRA/QLoRA) enable_input_require_grads makes it a leaf its AccumulateGrad node holds through
    backward — beside the running layer's input (forward) or its copy back from the host for the recompute
    (backward): `min(kept, 2)` in forward, `1 + leaf` in backward. Measured on CPU by placement
    (app/calibration/offload.py `host_saved_checkpoints`). Source: transformers 5 modeling_utils
    `_activation_checkpointing_enable`, `enable_input_require_grads`; torch/autograd/graph.py `save_on_cpu`;
    torch.utils.checkpoint `_NoopSaveInputs` (the inputs are saved under the outer hooks)."""
    if not plan.checkpoint_offload:
        return DeviceInputs(kept, 1)
    leaf = 1 if plan.method != "full" else 0
    return DeviceInputs(max(min(kept, 2), 1 + leaf), 1 + leaf)


def host_checkpoint_bytes(plan: TrainingPlan, kept: int, layer_input: int) -> int:
    """checkpoint_offload: the host copies save_on_cpu packs, every checkpointed layer's input `kept·T·h·a_res`
    (pinned host RAM, `offloaded_bytes`); the position embeddings go in as keyword arguments, which the checkpoint
    does not save. Measured on CPU by placement (the host peak)."""
    return kept * layer_input if plan.gradient_checkpointing and plan.checkpoint_offload else 0


class KindMoment(NamedTuple):
    """The backward of one decoder layer after the last one's: what the layers at and below it keep (the layers above
    have freed theirs), the gradients made so far, and the layer's own transient bytes."""

    activations: int
    grads: int
    transient: int


def kind_backward_bytes(layer: LayerActivations, plan: TrainingPlan, layers: int, checkpointed: bool = True) -> int:
    """layer_transient_bytes in backward of one layer kind: with checkpointing the recomputed layers' saved set (their
    inputs are the checkpointed ones, counted once) plus the larger of the backward moments and the recompute's
    end; without, the backward moments alone.
    """
    if not plan.gradient_checkpointing or not checkpointed:  # a layer that is not checkpointed: no recompute
        return layer.backward_transient
    _, recomputed = kept_layers(plan, layers)
    return recomputed * (layer.saved - layer.input_in_saved) + max(layer.backward_transient, layer.recompute_transient)


class Walk(NamedTuple):
    """checkpoint_every > 1: the last layer's own transient, layer 0's, and the moments of the layers between."""

    last: int  # the top layer's layer_transient_bytes (no recompute when it is not checkpointed)
    first: int  # layer 0's (always checkpointed: 0 % n == 0)
    moments: tuple[KindMoment, ...]  # layers L-2 … 1, each its own moment
    forward: tuple[tuple[int, int], ...]  # each layer's forward: (activation_bytes, layer_transient_bytes)


def layer_kinds_by_index(stack: LayerStack) -> tuple[int, ...]:
    """Each decoder layer's kind (an index into `stack.kinds`), from `kind_layers`."""
    kinds = [0] * stack.layers
    for kind, indices in enumerate(kind_layers(stack)):
        for i in indices:
            kinds[i] = kind
    return tuple(kinds)


def kept_by_layer(stack: LayerStack, plan: TrainingPlan) -> tuple[int, ...]:
    """What each decoder layer keeps from its forward to its backward under `checkpoint_every` n: a checkpointed one
    (index a multiple of n) its input `T·h·a_res`, an unchecked one its kind's saved set, scaled as `stack.saved`
    counts the extras (q/k norms, sliding masks) only on the layers that have them. Source: transformers 5
    modeling_utils._set_gradient_checkpointing (`layer_index % every_n_layers == 0`)."""
    kinds = layer_kinds_by_index(stack)
    saved = [stack.kinds[k][1].saved for k in kinds]
    scale = stack.saved / max(1, sum(saved))
    n, offloaded = plan.checkpoint_every, plan.checkpoint_offload
    # checkpoint_offload: a checkpointed layer's input is in host RAM, but layer 0's (device_checkpoint_inputs)
    checked = [0 if offloaded and i else stack.first.layer_input for i in range(stack.layers)]
    return tuple(checked[i] if i % n == 0 else math.ceil(saved[i] * scale) for i in range(stack.layers))


def walk_moments(
    stack: LayerStack, plan: TrainingPlan, grads: int, head_grads: int, layer_grads: int, accumulated: int
) -> Walk:
    """checkpoint_every n > 1, each decoder layer j's backward: the layers at and below it keep what `kept_by_layer`
    says, `Σ_{i≤j} kept_i + masks`, the layers above have freed theirs (an unchecked layer's saved set goes with its
    backward; a checkpointed one's recompute starts only then); lm_head's and the layers above j's gradients are
    made (`grads − (j+1)·G_layer`, at least lm_head's; with accumulation every gradient and the layer's being made);
    its own transient is the recompute and its backward moments when checkpointed, else the backward moments alone
    (`kind_backward_bytes`). Measured with the tracker through the Trainer: an unchecked top layer has no recompute
    (the topmost checkpointed layer's recompute runs after the unchecked layers above it are freed)."""
    kinds, kept, n = layer_kinds_by_index(stack), kept_by_layer(stack, plan), plan.checkpoint_every
    own = [kind_backward_bytes(stack.kinds[k][1], plan, stack.layers, i % n == 0) for i, k in enumerate(kinds)]
    running = stack.first.layer_input if plan.checkpoint_offload else 0  # the copy back from the host
    moments = []
    for j in range(stack.layers - 2, 0, -1):
        made = accumulated + layer_grads if accumulated else max(head_grads, grads - (j + 1) * layer_grads)
        moments.append(KindMoment(sum(kept[: j + 1]) + running + stack.masks, made, own[j]))
    return Walk(last=own[-1], first=own[0], moments=tuple(moments), forward=forward_walk(stack, plan, kept))


def forward_walk(stack: LayerStack, plan: TrainingPlan, kept: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """checkpoint_every n > 1, each decoder layer j's forward: the layers before it keep what they keep
    (`kept_by_layer`), j its own, `Σ_{i≤j} kept_i + masks`, beside j's running intermediates: a checkpointed
    layer's `forward_transient` (it saves nothing), an unchecked one's `forward_unchecked` (it saves as it runs,
    as without checkpointing). Measured with the tracker through the Trainer (an unchecked eager-attention top
    layer: its scores are saved, not a transient beside a saved set)."""
    kinds, n = layer_kinds_by_index(stack), plan.checkpoint_every
    running = stack.first.layer_input if plan.checkpoint_offload else 0  # checkpoint_offload: the running input
    return tuple(
        (
            sum(kept[: j + 1]) + running + stack.masks,
            stack.kinds[k][1].forward_transient if j % n == 0 else stack.kinds[k][1].forward_unchecked,
        )
        for j, k in enumerate(kinds)
    )
