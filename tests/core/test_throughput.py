"""The step-time model: one hand-computed figure pinned, and the laws a time model must keep."""

from __future__ import annotations

import pytest

from app.core.plan import TrainingPlan
from app.core.throughput import MFU, RunSize, matmul_params, step_time, token_flops
from app.core.tiers import find_tier
from tests.configs import spec


def test_llama_3_1_8b_full_fine_tune_of_1m_tokens_on_one_h100() -> None:
    """By hand. Llama-3.1-8B: 32 layers of q,o 4096x4096, k,v 1024x4096, gate,up,down 14336x4096, and lm_head
    128256x4096 (the input embedding is a lookup, no matmul):
      N_layers = 32 x (2 x 16,777,216 + 2 x 4,194,304 + 3 x 58,720,256) = 6,979,321,856
      N = N_layers + 525,336,576 = 7,504,658,432
    Per token, seq 2048, checkpointing every layer:
      6N = 45,027,950,592 (forward 2N + backward 4N)
      attention 12 x 32 layers x 4096 (32 heads x 128) x 2048 = 3,221,225,472
      recompute 2 N_layers + attention / 3 = 13,958,643,712 + 1,073,741,824 = 15,032,385,536
      total 63,281,561,600 FLOPs/token
    1M tokens on one H100 SXM (989.4 dense BF16 TFLOPS) at 40 % MFU: 6.32815616e16 / 3.9576e14 = 159.90 s.
    """
    model = spec("meta-llama/Llama-3.1-8B")
    plan = TrainingPlan(method="full", optimizer="adamw")  # bf16, seq 2048 x batch 1, checkpointing, 1 GPU
    assert matmul_params(model).total == 7_504_658_432
    flops = token_flops(model, plan)
    assert (flops.forward + flops.backward, flops.attention, flops.recompute) == (
        45_027_950_592,
        3_221_225_472,
        15_032_385_536,
    )
    assert flops.total == 63_281_561_600
    h100 = find_tier("H100 80GB")
    assert h100 is not None and h100.dense_16bit_tflops == 989.4 and MFU == 0.40
    time = step_time(model, plan, h100, 1, RunSize(train_tokens=1_000_000))
    assert time is not None and time.bound == "compute"
    assert time.hours * 3600 == pytest.approx(63_281_561_600 * 1_000_000 / (989.4e12 * 0.40))
    assert time.hours * 3600 == pytest.approx(159.90, abs=0.01)
    assert time.tokens_per_s == pytest.approx(6_254, abs=1)


def test_lora_does_no_weight_gradients_of_the_frozen_base() -> None:
    model = spec("meta-llama/Llama-3.1-8B")
    full = token_flops(model, TrainingPlan(method="full", gradient_checkpointing=False))
    lora = token_flops(model, TrainingPlan(method="lora", gradient_checkpointing=False))
    n = matmul_params(model).total
    assert full.backward == 4 * n and lora.backward == 2 * n and lora.forward == full.forward
    assert lora.adapters == 6 * 41_943_040  # r=16 on all-linear: the adapters PEFT reports as trainable
    assert lora.total < full.total and lora.recompute == full.recompute == 0


def test_qlora_pays_for_dequantization_and_checkpointing_for_the_recompute() -> None:
    model, h100 = spec("meta-llama/Llama-3.1-8B"), find_tier("H100 80GB")
    assert h100 is not None
    qlora = step_time(model, TrainingPlan(), h100, 1)
    lora = step_time(model, TrainingPlan(method="lora"), h100, 1)
    plain = step_time(model, TrainingPlan(method="lora", gradient_checkpointing=False), h100, 1)
    assert qlora and lora and plain
    assert qlora.dequant_s > 0 and lora.dequant_s == 0 and qlora.step_s > lora.step_s > plain.step_s


def test_time_scales_with_tokens_and_data_parallel_gpus() -> None:
    model, a100 = spec("Qwen/Qwen2.5-7B"), find_tier("A100 80GB")
    assert a100 is not None
    plan = TrainingPlan(method="lora")
    one = step_time(model, plan, a100, 1, RunSize(train_tokens=10_000_000))
    three_epochs = step_time(model, plan, a100, 1, RunSize(train_tokens=10_000_000, epochs=3))
    ddp = step_time(model, plan.model_copy(update={"gpus": 4, "sharding": "ddp"}), a100, 4)
    split = step_time(model, plan.model_copy(update={"gpus": 4}), a100, 4)  # layers split: GPUs take turns
    base = step_time(model, plan, a100, 1)
    assert one and three_epochs and ddp and split and base
    assert three_epochs.hours == pytest.approx(3 * one.hours)
    assert base.hours / 4 <= ddp.hours < base.hours and ddp.communication_s > 0
    assert split.hours == pytest.approx(base.hours) and split.gpu_hours == pytest.approx(4 * base.hours)


def test_small_steps_hit_the_memory_floor() -> None:
    model, l4 = spec("meta-llama/Llama-3.1-8B"), find_tier("L4")
    assert l4 is not None
    tiny = step_time(model, TrainingPlan(method="lora", seq_len=8, gradient_checkpointing=False), l4, 1)
    assert tiny is not None and tiny.bound == "memory" and tiny.memory_s > tiny.compute_s
