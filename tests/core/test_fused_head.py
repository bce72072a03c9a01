"""TRL SFTTrainer's loop (`loop sft`): the fused LM head term and bf16 LoRA weights over a quantized base.

Golden numbers are the formulas of app/core/fused_head.py worked by hand for Llama-3.1-8B (h 4096, V 128,256);
the CPU tracker measured them through the real SFTTrainer (tests/calibration/test_sft_accuracy.py).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.catalog import load_spec
from app.core.activations import logits_bytes
from app.core.estimate import estimate
from app.core.evidence import term_evidence
from app.core.fused_head import VOCAB_CHUNK, sft_fused_head_bytes, sft_hidden_saved_bytes
from app.core.plan import TrainingPlan
from app.core.quant import rounded

LLAMA = "meta-llama/Llama-3.1-8B"


def _terms(plan: TrainingPlan) -> dict[str, int]:
    return {t.term: t.bytes for t in estimate(load_spec(LLAMA), plan).breakdown}


def test_cuda_forward_is_the_tile_buffer_the_compact_hidden_states_and_the_statistics() -> None:
    """seq 2048, batch 1, LoRA bf16 on CUDA: N = 2047 positions, one 2047 x 32768 bf16 buffer, `hidden[mask]`
    (2047 x 4096 bf16), 7 fp32 statistics, int64 labels and the bool mask; backward: the buffer, fp32
    grad_hidden and its bf16 cast (lm_head frozen: no weight gradient), and what the forward left saved."""
    plan = TrainingPlan(method="lora", seq_len=2048)
    n = 2047
    forward, backward = sft_fused_head_bytes(load_spec(LLAMA), plan)
    statistics = 7 * rounded(n * 4) + rounded(n * 8) + rounded(n)
    assert forward == rounded(n * VOCAB_CHUNK * 2) + n * 4096 * 2 + statistics
    saved = 2 * rounded(n * 4) + rounded(n * 8)
    assert backward == rounded(n * VOCAB_CHUNK * 2) + n * 4096 * 4 + n * 4096 * 2 + saved


def test_sft_replaces_the_logits_and_only_that_for_a_large_vocabulary() -> None:
    """Llama 3's 128,256-token vocabulary at seq 4096 x 4: the Trainer's `12·T·V` backward is ~25 GB; the fused
    head's tile buffer is 4096 x 32768 bf16 (256 MiB) whatever the vocabulary."""
    trainer = TrainingPlan(method="lora", seq_len=4096, batch_size=4)
    sft = trainer.model_copy(update={"loop": "sft"})
    spec = load_spec(LLAMA)
    assert max(logits_bytes(spec, trainer)) > 20 * 1024**3
    assert max(logits_bytes(spec, sft)) < 2 * 1024**3
    assert (
        estimate(load_spec(LLAMA), sft).peak_allocated_bytes < estimate(load_spec(LLAMA), trainer).peak_allocated_bytes
    )
    same = ("base_weight_bytes", "lora_adapter_bytes", "optimizer_state_bytes")
    assert {k: _terms(sft)[k] for k in same} == {k: _terms(trainer)[k] for k in same}


def test_the_head_saves_the_final_hidden_states_unless_lm_head_already_does() -> None:
    spec = load_spec(LLAMA)
    lora = TrainingPlan(method="lora", seq_len=1024, loop="sft")
    assert sft_hidden_saved_bytes(spec, lora) == 1024 * 4096 * 2
    assert sft_hidden_saved_bytes(spec, lora.model_copy(update={"loop": "trainer"})) == 0
    full = TrainingPlan(method="full", seq_len=1024, loop="sft")
    assert sft_hidden_saved_bytes(spec, full) == 0  # a trained lm_head keeps its input already


def test_quantized_bases_get_bf16_lora_weights_under_sft_only() -> None:
    """SFTTrainer casts LoRA A/B to bf16 over a quantized base: adapters, their gradients and AdamW states halve."""
    qlora = TrainingPlan(optimizer="adamw", loop="sft")
    trainer, sft = _terms(qlora.model_copy(update={"loop": "trainer"})), _terms(qlora)
    assert sft["lora_adapter_bytes"] * 2 == trainer["lora_adapter_bytes"]
    assert sft["optimizer_state_bytes"] * 2 == trainer["optimizer_state_bytes"]
    lora = TrainingPlan(method="lora", loop="sft")
    assert (
        _terms(lora)["lora_adapter_bytes"] == _terms(lora.model_copy(update={"loop": "trainer"}))["lora_adapter_bytes"]
    )


def test_the_full_fine_tuning_backward_holds_the_fp32_weight_gradient_and_its_cast() -> None:
    spec = load_spec(LLAMA)
    lora = TrainingPlan(method="lora", seq_len=512, loop="sft")
    full = TrainingPlan(method="full", seq_len=512, loop="sft")
    v, h = spec.arch.vocab_size, spec.arch.hidden_size
    assert sft_fused_head_bytes(spec, full)[1] - sft_fused_head_bytes(spec, lora)[1] == v * h * (4 + 2)


def test_evidence_and_plan_rules() -> None:
    cpu = TrainingPlan(method="lora", loop="sft", device="cpu", optimizer="adamw")
    assert term_evidence("logits_peak_bytes", cpu) == "measured-cpu"
    assert term_evidence("logits_peak_bytes", cpu.model_copy(update={"device": "cuda"})) == "first-principles"
    with pytest.raises(ValidationError, match="keep_logits and fused_cross_entropy"):
        TrainingPlan(loop="sft", keep_logits=True)
    with pytest.raises(ValidationError, match="keep_logits and fused_cross_entropy"):
        TrainingPlan(loop="sft", fused_cross_entropy=True)
