"""Layers split across GPUs (sharding none, gpus > 1): which GPU holds what, as `device_map="auto"` places it.

transformers 5.24 (integrations/accelerate.py `_get_device_map`, its own `get_balanced_memory` and
`infer_auto_device_map`) balances the loaded model's bytes over the GPUs and walks the root's modules in order:
embed_tokens, the decoder layers, the final norm, rotary_emb, lm_head (a tied lm_head goes with embed_tokens).
GPU 0 is filled up to per_gpu minus the largest layer it keeps room for (the main device), each later GPU up to
per_gpu, and the last takes the rest; a module that does not fit goes to the next GPU. accelerate 1.16's hooks
(hooks.py `AlignDevicesHook`, big_modeling.py `dispatch_model`) copy each block's inputs to its GPU and the root's
output (logits and loss) back to GPU 0. Measured by placement on virtual GPUs in one CPU process
(app/calibration/layer_split.py, calibration/cpu-matrix-layer-split.toml: 16/32-bit; 4-bit ran with one point of
ten at +5.68 %, the single-device QLoRA backward's own excess, so it stays first-principles). The walk assumes GPUs
larger than per_gpu (the balancing binds, nothing is offloaded), layers of one size, and 16/32-bit or 4-bit weights
(4-bit: bitsandbytes' quantizer sizes the map); int8 plans keep `estimate.gpu_share`'s ⌈L/n⌉ bound (not measured).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from app.core.plan import TrainingPlan
from app.core.spec import ModelSpec
from app.core.step import precision
from app.core.units import FP32

# bytes of one weight element of the dtype the model is loaded in
_LOAD_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANTIZED_ELEMENT = 0.5  # bitsandbytes 4-bit: two values a byte (quantizer_bnb_4bit.py quantized_element_size)
QUANTIZED_MEMORY = 0.90  # bitsandbytes' adjust_max_memory: every device's budget x 0.9 ("buffers ... quantization")
ALLOCATION_GRANULARITY = 512  # the CUDA caching allocator's block (c10/cuda/CUDACachingAllocator.cpp kMinBlockSize)


class GpuPart(NamedTuple):
    """What one GPU of a layer-split plan holds."""

    gpu: int
    layers: int  # decoder layers placed on it
    embed: bool  # embed_tokens (and the batch, the root's output copies)
    head: bool  # lm_head: the logits and the loss are computed here
    tail: bool  # the final norm and rotary_emb (the position embeddings are made here)
    first_layer: bool = True  # it runs decoder layer 0 (whose input, the embeddings' output, may need no gradient)


def splits_layers(plan: TrainingPlan, gpus: int | None = None) -> bool:
    """A plan this module places: sharding none on several GPUs, 16/32-bit or 4-bit weights (not 8-bit); `gpus`
    asks for another count than the plan's (recommend()'s searches)."""
    return plan.sharding == "none" and (plan.gpus if gpus is None else gpus) > 1 and plan.quant != "int8"


class ModuleSizes(NamedTuple):
    """The loaded model's bytes as `compute_module_sizes` counts them, in the walk's order."""

    embed: float
    layer: float  # one decoder layer (every layer the same)
    layers: int
    tail: float  # the final norm and rotary_emb's inv_freq buffer
    head: float  # lm_head; 0 when tied to embed_tokens (compute_module_sizes skips tied keys)
    biggest_leaf: float  # the largest module that holds parameters itself (get_balanced_memory's biggest leaf)


def module_sizes(model: ModelSpec, plan: TrainingPlan) -> ModuleSizes:
    """Parameter bytes in the load dtype (`plan.weight_dtype`) by part of the walk; rotary_emb's inv_freq and
    original_inv_freq are fp32 buffers of head_dim/2 (modeling_rope_utils: `1 / base ** (arange(0, dim, 2) / dim)`). Source:
    transformers/integrations/accelerate.py `compute_module_sizes` (parameters and buffers, numel x element size;
    4-bit: a quantized Linear4bit weight at bitsandbytes' `quantized_element_size` 0.5 byte, quantizers/base.py
    `param_element_size`, quantizer_bnb_4bit.py)."""
    width = _LOAD_BYTES[plan.weight_dtype]
    embed = layer_total = tail = head = leaf = 0.0
    for g in model.groups:
        four_bit = plan.quantized and g.quantizable
        own = sum(p.numel * (QUANTIZED_ELEMENT if four_bit and p.name != "bias" else width) for p in g.params)
        leaf = max(leaf, own)
        if g.in_layers:
            layer_total += own * g.count
        elif g.kind == "embedding":
            embed += own
        elif g.output_layer:
            head += 0 if g.tied else own
        else:
            tail += own * g.count
    tail += 2 * (model.arch.head_dim // 2) * FP32  # inv_freq and original_inv_freq
    layers = model.arch.num_layers
    return ModuleSizes(embed, layer_total / layers, layers, tail, head, leaf)


def balanced_per_gpu(sizes: ModuleSizes, gpus: int) -> float:
    """get_balanced_memory's budget of every GPU but the last: the model's bytes // n, plus 1.25 x the larger of
    the biggest no-split module (a decoder layer) and the biggest leaf. Source: transformers/integrations/
    accelerate.py `get_balanced_memory` (low_zero False: "auto" and "balanced")."""
    total = sizes.embed + sizes.layer * sizes.layers + sizes.tail + sizes.head
    return total // gpus + int(1.25 * max(sizes.layer, sizes.biggest_leaf))


def device_map_parts(model: ModelSpec, plan: TrainingPlan) -> tuple[GpuPart, ...]:
    """What each GPU holds after `infer_auto_device_map`'s walk: modules in order, each on the current GPU while it
    fits (GPU 0, the main device, keeps room for the largest module left, `largest_left`: the one being placed
    leaves the list, which is made again from the modules after it once empty), else on the next; the last GPU is
    unbounded. Source: transformers/integrations/accelerate.py `infer_auto_device_map`,
    `_init_infer_auto_device_map` (`main_devices = [gpus[0], "cpu"]`)."""
    sizes = module_sizes(model, plan)
    n = plan.gpus
    budget = balanced_per_gpu(sizes, n) * (QUANTIZED_MEMORY if plan.quantized else 1)
    rotary = 2 * (model.arch.head_dim // 2) * FP32
    order = [("embed", sizes.embed)] + [("layer", sizes.layer)] * sizes.layers
    order += [("tail", sizes.tail - rotary), ("rotary", rotary), ("head", sizes.head)]
    placed: list[list[str]] = [[] for _ in range(n)]
    gpu, used = 0, 0.0
    reserve, largest = largest_left([size for _, size in order], 0)
    for index, (name, size) in enumerate(order):
        largest.discard(index)  # the module being placed leaves max_layer_names; the largest of the rest once empty
        if not largest:
            reserve, largest = largest_left([size for _, size in order], index + 1)
        while gpu < n - 1 and used + size > budget - (reserve if gpu == 0 else 0):
            gpu, used = gpu + 1, 0.0
        placed[gpu].append(name)
        used += size
    tied = sizes.head == 0
    first = next(g for g, names in enumerate(placed) if "layer" in names)
    return tuple(
        GpuPart(
            gpu=g,
            layers=names.count("layer"),
            embed="embed" in names,
            head=("embed" in names) if tied else ("head" in names),
            tail="tail" in names,
            first_layer=g == first,
        )
        for g, names in enumerate(placed)
    )


def largest_left(sizes: list[float], start: int) -> tuple[float, set[int]]:
    """The largest module from `start` on and the positions of those that size: the room GPU 0 keeps (accelerate's
    `get_max_layer_size`, a decoder layer or a leaf module)."""
    rest = sizes[start:]
    top = max(rest, default=0.0)
    return top, {start + k for k, size in enumerate(rest) if size == top}


def other_fraction(model: ModelSpec, part: GpuPart) -> float:
    """The share of the bytes outside the layers (embeddings, final norm, lm_head) a GPU holds, by elements: the
    embedding's if it holds embed_tokens, the norm's and lm_head's if it holds them (a tied lm_head is the
    embedding itself)."""
    embed = head = tail = 0
    for g in model.groups:
        if g.in_layers:
            continue
        own = sum(p.numel for p in g.params) * g.count
        if g.kind == "embedding":
            embed += own
        elif g.output_layer:
            head += own
        else:
            tail += own
    total = embed + head + tail
    if not total:
        return 0.0
    held = (embed if part.embed else 0) + (head if part.head else 0) + (tail if part.tail else 0)
    return held / total


def rope_copy_bytes(model: ModelSpec, plan: TrainingPlan, part: GpuPart) -> int:
    """Each decoder layer on a GPU without rotary_emb gets its own copy of the position embeddings (cos and sin,
    (1, seq, head_dim) in the activations' dtype), kept through backward: the layer's hook sends its kwargs to its
    GPU (accelerate hooks.py `AlignDevicesHook.pre_forward`, `send_to_device`), apply_rotary_pos_emb saves them for
    the multiplications' backward, a checkpointed layer keeps them as its recompute's arguments. Measured by
    placement (app/calibration/layer_split.py)."""
    if part.tail or not part.layers:
        return 0
    width = precision(plan).residual  # rotary_emb returns cos/sin `.to(x.dtype)`: the hidden states' (QLoRA: fp32)
    copy = plan.seq_len * model.arch.head_dim * width
    return part.layers * 2 * rounded(copy)


def head_input_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """lm_head's saved input when its weight trains (full fine-tuning): the final norm's output, batch x seq x hidden
    in the compute dtype, kept on lm_head's GPU (a copy there when the norm runs elsewhere); the rest of
    `head_saved` stays with the final norm. Measured by placement (app/calibration/layer_split.py)."""
    if plan.method != "full":
        return 0
    return rounded(plan.batch_size * plan.seq_len * model.arch.hidden_size * _LOAD_BYTES[plan.dtype])


def root_output_copy_bytes(model: ModelSpec, plan: TrainingPlan, part: GpuPart) -> int:
    """GPU 0 without lm_head: the root's hook sends the model's output back to the input's GPU, GPU 0 where the loop
    puts the batch (`AlignDevicesHook` with io_same_device, `post_forward`), so the logits (batch x seq x vocab, in
    the logits' dtype: fp32 under QLoRA's upcast lm_head) and the loss are copied there at the forward's end, until
    the loop drops the output; GPU 0 may hold no module at all (4-bit maps leave it empty where embed_tokens does
    not fit beside its reserve). Source: accelerate hooks.py `attach_align_device_hook_on_blocks` (module_name "":
    io_same_device=True), transformers trainer.py (`_prepare_input`: args.device, cuda:0)."""
    if part.head or part.gpu != 0:
        return 0
    logits = plan.batch_size * plan.seq_len * model.arch.vocab_size * precision(plan).logits
    return rounded(logits) + ALLOCATION_GRANULARITY


def rounded(nbytes: int) -> int:
    return math.ceil(nbytes / ALLOCATION_GRANULARITY) * ALLOCATION_GRANULARITY
