"""gpt-oss's MXFP4 experts: kept bytes against the integration's own tensors, and the plan a training run gets."""

from __future__ import annotations

import json
import subprocess

import pytest

from app.core.estimate import estimate
from app.core.mxfp4 import kept_expert_bytes, mxfp4_weight_bytes
from app.core.plan import TrainingPlan
from app.errors import CalibrationError, PlanError, StackRefusal
from tests.configs import spec

GPT_OSS = "openai/gpt-oss-20b"
# gpt-oss has no SDPA path and its experts take no LoRA dropout: the plan the stack runs but for mxfp4
RUNS = {"method": "lora", "dropout": 0.0, "attn": "eager", "targets": "q_proj,k_proj,v_proj,o_proj"}

# Builds the integration's expert module for the model's widths on the meta device and prints each parameter's
# shape and element size (the same script runs under transformers 5.24 and 4.57.6).
EXPERTS_SCRIPT = """
import json, sys, torch
from transformers import GptOssConfig
from transformers.integrations.mxfp4 import Mxfp4GptOssExperts
with torch.device("meta"):
    module = Mxfp4GptOssExperts(GptOssConfig(**json.loads(sys.argv[1])))
print(json.dumps({n: [list(p.shape), p.element_size()] for n, p in module.named_parameters()}))
"""


def _widths() -> dict[str, int]:
    arch = spec(GPT_OSS).arch
    return {
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_local_experts": arch.num_experts,
    }


def _tensor_bytes(params: dict[str, list[object]]) -> int:
    total = 0
    for shape, size in params.values():
        n = 1
        for d in shape:  # type: ignore[attr-defined]
            n *= d
        total += n * size  # type: ignore[operator]
    return total


def test_kept_bytes_are_the_tensors_transformers_4_allocates() -> None:
    """4.57.6 Mxfp4GptOssExperts registers blocks, scales and fp32 biases as parameters: all of one layer's bytes."""
    from app.calibration.stacks import stack_python

    try:
        python = stack_python("transformers-4")
    except CalibrationError as missing:
        pytest.skip(str(missing))
    out = subprocess.run(
        [str(python), "-c", EXPERTS_SCRIPT, json.dumps(_widths())], capture_output=True, text=True, check=True
    )
    params = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(params) >= {"gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales"}
    model = spec(GPT_OSS)
    assert kept_expert_bytes(model) == model.arch.num_layers * _tensor_bytes(params)


def test_kept_bytes_are_the_tensors_transformers_5_allocates_and_loads() -> None:
    """5.24 Mxfp4GptOssExperts registers the packed blocks (uint8, two values a byte) and fp32 biases; the scales come
    from the checkpoint, one uint8 per 32 values, i.e. per 16 block bytes (Mxfp4ReverseDeserialize:
    `blocks.reshape(*scales.shape, -1)` of the checkpoint's (E, rows, cols/32, 16) blocks)."""
    pytest.importorskip("torch")
    import sys

    out = subprocess.run(
        [sys.executable, "-c", EXPERTS_SCRIPT, json.dumps(_widths())], capture_output=True, text=True, check=True
    )
    params = json.loads(out.stdout.strip().splitlines()[-1])
    blocks = {n: p for n, p in params.items() if n in ("gate_up_proj", "down_proj")}
    assert all(size == 1 for _, size in blocks.values())
    scales = _tensor_bytes(blocks) // 16
    model = spec(GPT_OSS)
    assert kept_expert_bytes(model) == model.arch.num_layers * (_tensor_bytes(params) + scales)


def test_one_projection_is_half_a_byte_a_value_plus_a_scale_per_32() -> None:
    # gpt-oss-20b's gate_up: 32 experts x 5760 rows over 2880 inputs
    assert mxfp4_weight_bytes(32, 5760, 2880) == 32 * 5760 * (1440 + 90)
    assert mxfp4_weight_bytes(1, 1, 33) == 17 + 2  # a partial group still takes a byte and a scale


def test_kept_experts_are_answered_dequantized_with_the_reason_and_the_bytes() -> None:
    model = spec(GPT_OSS)
    kept = estimate(model, TrainingPlan(**RUNS, mxfp4="keep"))
    assert [(a.field, a.requested, a.used) for a in kept.adjustments] == [("mxfp4", "keep", "dequantize")]
    why = kept.adjustments[0].why
    assert "is_trainable" in why and "#40170" in why and f"{kept_expert_bytes(model) / 2**30:.2f} GiB" in why
    dequantized = estimate(model, TrainingPlan(**RUNS))
    assert dequantized.adjustments == () and kept.peak_allocated_bytes == dequantized.peak_allocated_bytes


def test_full_fine_tuning_of_kept_experts_is_answered_too_and_strict_refuses() -> None:
    full = estimate(spec(GPT_OSS), TrainingPlan(method="full", attn="eager", mxfp4="keep"))
    assert [a.field for a in full.adjustments] == ["mxfp4"] and full.plan.mxfp4 == "dequantize"
    with pytest.raises(StackRefusal) as caught:
        estimate(spec(GPT_OSS), TrainingPlan(**RUNS, mxfp4="keep", strict=True))
    assert caught.value.field == "mxfp4" and caught.value.accepted == "dequantize"
    assert "without strict" in caught.value.detail


def test_keep_needs_a_checkpoint_published_in_mxfp4() -> None:
    assert spec("openai/gpt-oss-120b").arch.mxfp4_experts and not spec("Qwen/Qwen3-30B-A3B").arch.mxfp4_experts
    with pytest.raises(PlanError, match="no mxfp4 quantization_config") as caught:
        estimate(spec("Qwen/Qwen3-30B-A3B"), TrainingPlan(mxfp4="keep"))
    assert not isinstance(caught.value, StackRefusal)  # not a stack refusal: nothing to answer instead


def test_qlora_on_the_published_checkpoint_says_transformers_refuses_bitsandbytes() -> None:
    notes = estimate(spec(GPT_OSS), TrainingPlan(dropout=0.0)).notes
    assert any("merge_quantization_configs" in n and "bf16 copy" in n for n in notes)
    assert not any("merge_quantization_configs" in n for n in estimate(spec(GPT_OSS), TrainingPlan(**RUNS)).notes)
    four = TrainingPlan(**RUNS, autocast=True, stack="transformers-4")
    assert any("dequantizes its experts to bf16" in n for n in estimate(spec(GPT_OSS), four).notes)
