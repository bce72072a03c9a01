"""The MoE load-balancing loss measured for real: two cheap points, each run with and without
`output_router_logits` (plan.router_aux_loss, which the harness sets on the config), held to ±5 % and the
measured growth to the modelled term (`router_aux_loss_bytes`)."""

from __future__ import annotations

import pytest

from app.calibration.compare import compare_to, spec_for
from app.calibration.harness import run_measurement
from app.core.plan import TrainingPlan
from tests.calibration.conftest import MachineProbe, report

# the reduced widths of calibration/cpu-matrix.toml (mixtral) and cpu-matrix-2025.toml (qwen3_moe)
MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
}
QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 256,
    "intermediate_size": 688,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "vocab_size": 2048,
}
POINTS = [
    (MIXTRAL, {"method": "lora", "gradient_checkpointing": False, "seq_len": 512}),  # forward peak: every layer's
    (QWEN3_MOE, {"method": "qlora", "gradient_checkpointing": True, "seq_len": 128}),  # layer 0's backward: one
]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("config", "fields"), POINTS, ids=["mixtral-lora-nockpt-512", "qwen3_moe-qlora-ckpt-128"])
def test_the_aux_loss_points_within_5_percent_and_their_growth_is_the_term(
    config: dict[str, object], fields: dict[str, object], machine: MachineProbe, request: pytest.FixtureRequest
) -> None:
    plan = TrainingPlan(device="cpu", optimizer="adamw", dropout=0.0, rank=8, **fields)  # type: ignore[arg-type]
    with_aux = plan.model_copy(update={"router_aux_loss": True})
    off = run_measurement(config, plan, fp32_matmuls=machine.fp32_matmuls)
    on = run_measurement(config, with_aux, fp32_matmuls=machine.fp32_matmuls)
    assert on.config.get("output_router_logits") is True, "the harness sets the config flag"
    spec = spec_for(on, "calibration")
    comparison, est = compare_to(on, spec)
    term = sum(t.bytes for t in est.breakdown if t.term == "router_aux_loss_bytes")
    grown = on.peak_allocated_bytes - off.peak_allocated_bytes
    report(
        request.config,
        f"  aux loss {config['model_type']} {fields}: +{grown} B measured, term {term} B, "
        f"{comparison.error_pct:+.2f} %",
    )
    assert grown > 0, "output_router_logits keeps more"
    assert term == pytest.approx(grown, rel=0.05)
    assert abs(comparison.error_pct) <= 5.0, comparison
