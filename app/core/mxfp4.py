"""MXFP4 checkpoints (gpt-oss): the experts as the integration keeps them, and what a training run gets instead.

A checkpoint whose config carries `quantization_config: {quant_method: mxfp4}` stores its fused experts as e2m1
pairs packed in uint8 `*_blocks` and one uint8 e8m0 scale per 32 values `*_scales`. transformers keeps them so
(`Mxfp4Config(dequantize=False)`, its default) only on a GPU of compute capability 7.5+ with triton and the `kernels`
package; without them, and on the CPU without `use_kernels`, `Mxfp4HfQuantizer` dequantizes at load
(validate_environment / _process_model_before_weight_loading set `dequantize = True`). Kept, the model cannot be
trained: `Mxfp4HfQuantizer.is_trainable` is False, so Trainer refuses it (trainer_utils.py
validate_quantization_for_training: "... quantized with mxfp4 but that quantization method do not support training",
transformers#39969), and the experts run through the triton kernels' `matmul_ogs`, which has no backward
(transformers#40170: "we only have kernels for forward passes"). Source: transformers 5.24.0
quantizers/quantizer_mxfp4.py and integrations/mxfp4.py; 4.57.6 the same (its is_trainable is False too).
"""

from __future__ import annotations

from app.core.plan import Mxfp4, TrainingPlan
from app.core.quant import ceil_div
from app.core.spec import ModelSpec
from app.core.units import FP32, UINT8
from app.errors import PlanError, StackRefusal

# one uint8 e8m0 scale per 32 values along the contraction dimension; two e2m1 values per uint8 of the blocks
MXFP4_GROUP = 32
VALUES_PER_BYTE = 2


def mxfp4_weight_bytes(experts: int, rows: int, cols: int) -> int:
    """One fused expert projection kept in MXFP4, `cols` its contraction width: blocks `E·rows·cols/2` uint8 and
    scales `E·rows·⌈cols/32⌉` uint8. Source: transformers 4.57.6 integrations/mxfp4.py Mxfp4GptOssExperts.__init__
    (gate_up_proj_blocks (E, 2i, h/32, 16), gate_up_proj_scales (E, 2i, h/32), down_proj_blocks (E, h, i/32, 16),
    down_proj_scales (E, h, i/32), all uint8); 5.24 allocates the blocks as gate_up_proj (E, 2i, h/2) and down_proj
    (E, h, i/2) uint8 and swizzles the checkpoint's scales of the same shape."""
    blocks = experts * rows * ceil_div(cols, VALUES_PER_BYTE) * UINT8
    scales = experts * rows * ceil_div(cols, MXFP4_GROUP) * UINT8
    return blocks + scales


def kept_expert_bytes(model: ModelSpec) -> int:
    """Every decoder layer's experts as the MXFP4 integration keeps them: gate_up (2i rows over h) and down (h rows
    over i) in MXFP4 (`mxfp4_weight_bytes`) and their biases in fp32, `E·(2i+h)·4` (Mxfp4GptOssExperts allocates
    gate_up_proj_bias (E, 2i) and down_proj_bias (E, h) as float32)."""
    arch = model.arch
    e, h, i = arch.num_experts, arch.hidden_size, arch.intermediate_size
    one = mxfp4_weight_bytes(e, 2 * i, h) + mxfp4_weight_bytes(e, h, i) + e * (2 * i + h) * FP32
    return arch.num_layers * one


def dequantized_expert_bytes(model: ModelSpec, width: int) -> int:
    """The same experts dequantized to `width` bytes a value (their parameters as the inventory counts them)."""
    return sum(g.count * g.numel for g in model.groups if g.leaf == "experts" and g.in_layers) * width


def check_mxfp4(model: ModelSpec, mxfp4: Mxfp4) -> None:
    """`keep` needs a checkpoint published in MXFP4, and transformers cannot train one kept so: StackRefusal with the
    nearest plan it trains, `dequantize` (Mxfp4Config(dequantize=True), as the gpt-oss fine-tuning cookbook loads
    it), and what keeping would have saved."""
    if mxfp4 == "dequantize":
        return
    if not model.arch.mxfp4_experts:
        raise PlanError(
            f"mxfp4 keep keeps the experts of a checkpoint published in MXFP4 (gpt-oss); {model.id} has no mxfp4 "
            "quantization_config: leave mxfp4 at dequantize"
        )
    kept, bf16 = kept_expert_bytes(model), dequantized_expert_bytes(model, 2)
    raise StackRefusal(
        "transformers (5.24 and 4.57) cannot train a model whose experts stay in MXFP4: Mxfp4HfQuantizer.is_trainable "
        "is False, so Trainer refuses it (validate_quantization_for_training, transformers#39969), and the triton "
        f"matmul_ogs kernels have no backward (transformers#40170); kept, the experts would take {kept / 2**30:.2f} GiB "
        f"instead of {bf16 / 2**30:.2f} GiB in bf16: use mxfp4 dequantize (Mxfp4Config(dequantize=True), the gpt-oss "
        "fine-tuning cookbook's load)",
        field="mxfp4",
        accepted="dequantize",
    )


def mxfp4_notes(model: ModelSpec, plan: TrainingPlan) -> list[str]:
    """What loading a checkpoint published in MXFP4 means for this (accepted, so dequantized) plan."""
    if not model.arch.mxfp4_experts:
        return []
    notes: list[str] = []
    if plan.method == "qlora":
        notes.append(
            "this checkpoint is published in MXFP4, and transformers refuses a BitsAndBytesConfig for it (quantizers/"
            "auto.py merge_quantization_configs: 'The model is quantized with Mxfp4Config but you are passing a "
            "BitsAndBytesConfig config'): this QLoRA plan is for a bf16 copy of the weights (a dequantized re-upload); "
            "the published checkpoint trains as lora or full fine-tuning with mxfp4 dequantize"
        )
    if plan.stack == "transformers-4" and plan.weight_dtype == "fp32":
        notes.append(
            "transformers 4.57 loads a checkpoint published in MXFP4 in bf16 when no torch_dtype is given "
            "(quantizers/quantizer_mxfp4.py update_dtype) and dequantizes its experts to bf16 whatever the dtype "
            "(integrations/mxfp4.py dequantize: convert_moe_packed_tensors' default dtype); they are counted in fp32 here"
        )
    return notes
