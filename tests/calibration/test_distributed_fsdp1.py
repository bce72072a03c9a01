"""FSDP1 on real gloo ranks: a world-size-2 subset of calibration/cpu-matrix-multi-fsdp1.toml, run here.

Each point spawns 2 CPU ranks that wrap the model in FullyShardedDataParallel as accelerate does
(app/calibration/fsdp1.py) and run 2 training steps; estimate() for the same plan (fsdp_version 1, gpus=2) must be
within ±5 % of the worst rank's peak, the median within 2 %. The FSDP1 units' memory is
app/core/fsdp1.py's; its differences from FSDP2 are checked on the estimate alone below.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from app.calibration.compare import compare_to, spec_for, to_record
from app.calibration.matrix import expand, load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.inventory.cache import cached_spec
from app.store.models import MeasurementRecord
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "calibration" / "cpu-matrix-multi-fsdp1.toml"
FAMILIES = load_spec(SPEC).families
BASE = {"device": "cpu", "optimizer": "adamw", "dtype": "bf16", "gpus": 2, "seq_len": 32, "fsdp_version": 1}
PRE = {"fsdp_backward_prefetch": "pre"}  # the shipped matrix's prefetch
# FULL_SHARD full fine-tuning with checkpointing (MHA); SHARD_GRAD_OP LoRA without (GQA, PEFT's wrap policy), both
# under BACKWARD_PRE; then calibration/cpu-matrix-multi-fsdp1-prefetch.toml's moments at 3 layers: full fine-tuning
# without prefetch (transformers' default: the layer before the last at its reduce-scatter) and LoRA under
# BACKWARD_POST (the layer before prefetched late in the last layer's backward)
POINTS: list[tuple[str, dict[str, Any]]] = [
    ("llama", {**PRE, "method": "full", "sharding": "fsdp", "gradient_checkpointing": True}),
    ("mistral", {**PRE, "method": "lora", "sharding": "fsdp_grad_op", "gradient_checkpointing": False, "rank": 8}),
    ("llama", {"method": "full", "sharding": "fsdp", "gradient_checkpointing": True, "layers": 3}),
    (
        "mistral",
        {"method": "lora", "sharding": "fsdp", "gradient_checkpointing": False, "rank": 8, "layers": 3}
        | {"fsdp_backward_prefetch": "post", "targets": "all-linear"},
    ),
]


@pytest.fixture(scope="module")
def measured(request: pytest.FixtureRequest, machine: MachineProbe) -> list[MeasurementRecord]:
    from app.calibration.distributed import run_distributed

    records = []
    for family, point in POINTS:
        fields = dict(point)
        config = {**FAMILIES[family].config, "num_hidden_layers": fields.pop("layers", 2)}
        plan = TrainingPlan(**{**BASE, **fields})
        started = time.perf_counter()
        measurement = run_distributed(config, plan, steps=2, fp32_matmuls=machine.fp32_matmuls, timeout_s=240)
        comparison, _ = compare_to(measurement, spec_for(measurement, family))
        records.append(to_record(measurement, comparison, model_id=family, source="ci-multi-fsdp1", split="holdout"))
        report(
            request.config,
            f"FSDP1 {family} {plan.method} {plan.sharding} prefetch {plan.fsdp_backward_prefetch} x2: error {comparison.error_pct:+.2f} % "
            f"in {time.perf_counter() - started:.0f} s",
        )
    return records


def test_fsdp1_estimate_holds_the_worst_rank_within_5_percent(measured: list[MeasurementRecord]) -> None:
    errors = [r.error_pct for r in measured]
    assert max(abs(e) for e in errors) <= 5.0, errors
    assert statistics.median(abs(e) for e in errors) <= 2.0, errors
    for record in measured:
        assert record.plan["fsdp_version"] == 1
        assert record.measured_peak_bytes == max(record.env["rank_peak_bytes"])


def _tiny(**fields: Any) -> tuple[int, dict[str, int]]:
    spec = cached_spec(FAMILIES["llama"].config, model_id="llama", source="file", cache_dir=None)
    est = estimate(spec, TrainingPlan(**{**BASE, "method": "full", "gradient_checkpointing": False, **fields}))
    return est.peak_allocated_bytes, {p.name: p.bytes for p in est.phases}


def test_fsdp1_gathers_no_copy_out_and_keeps_the_root_so_its_forward_is_below_fsdp2s() -> None:
    """FSDP1's all-gather writes into the FlatParameter the views read (no copy-out beside it) and the root stays
    gathered: its forward holds `R + W_l` where FSDP2 wrapped as accelerate <= 1.13 did (fsdp_units layers, the root
    holding everything outside the layers) holds `R + 3W_l` at a layer's copy-out."""
    for sharding in ("fsdp", "fsdp_grad_op"):
        _, one = _tiny(sharding=sharding)
        _, two = _tiny(sharding=sharding, fsdp_version=2, fsdp_units="layers")
        assert one["forward"] < two["forward"], sharding
        assert one["load"] == two["load"] and one["optimizer"] == two["optimizer"]


def test_without_prefetch_a_full_fsdp1_backward_holds_one_layer_where_backward_pre_holds_two() -> None:
    """transformers' Trainer passes no prefetch (`fsdp_config.backward_prefetch` absent): one layer gathered in a
    layer's backward, so the estimate is below BACKWARD_PRE's by about a layer's FlatParameter; BACKWARD_POST
    prefetches only once a layer is done, so full fine-tuning under it is no higher than BACKWARD_PRE."""
    config = {**FAMILIES["llama"].config, "num_hidden_layers": 4}
    spec = cached_spec(config, model_id="llama", source="file", cache_dir=None)
    peaks = {}
    for prefetch in ("none", "pre", "post"):
        plan = TrainingPlan(**{**BASE, "method": "full", "sharding": "fsdp", "fsdp_backward_prefetch": prefetch})
        peaks[prefetch] = estimate(spec, plan).peak_allocated_bytes
    h, i = config["hidden_size"], config["intermediate_size"]
    layer_bytes = 2 * (4 * h * h + 3 * h * i)  # one MHA layer's projections in bf16, unsharded
    assert 0 < peaks["pre"] - peaks["none"] <= layer_bytes
    assert peaks["none"] <= peaks["post"] <= peaks["pre"]


def test_lora_under_backward_post_holds_two_layers_late_in_the_last_layers_backward() -> None:
    """Under LoRA BACKWARD_PRE prefetches an adapter's unit (tiny), BACKWARD_POST the layer before, from the last
    layer's first adapter unit's post-backward on: without checkpointing its estimate is above no prefetch's."""
    spec = cached_spec(FAMILIES["mistral"].config, model_id="mistral", source="file", cache_dir=None)
    peaks = {}
    for prefetch in ("none", "pre", "post"):
        fields = {"method": "lora", "sharding": "fsdp", "fsdp_backward_prefetch": prefetch}
        fields |= {"gradient_checkpointing": False, "rank": 8, "dropout": 0.0}  # as measured (mistral-ab12da74)
        peaks[prefetch] = estimate(spec, TrainingPlan(**{**BASE, **fields})).peak_allocated_bytes
    assert peaks["post"] > peaks["none"]


def test_backward_prefetch_is_fsdp1s_only() -> None:
    assert TrainingPlan().fsdp_backward_prefetch == "none"
    with pytest.raises(ValueError, match="fsdp_backward_prefetch is FSDP1's"):
        TrainingPlan(sharding="fsdp", gpus=2, fsdp_backward_prefetch="pre")


def test_fsdp_version_is_a_plan_field_of_fsdp_only() -> None:
    assert TrainingPlan().fsdp_version == 2
    with pytest.raises(ValueError, match="fsdp_version 1 selects FSDP1"):
        TrainingPlan(sharding="ddp", gpus=2, fsdp_version=1)
    with pytest.raises(ValueError, match="FSDP1's CPU offload is not modelled"):
        TrainingPlan(sharding="fsdp", gpus=2, fsdp_version=1, offload=True)


def test_the_fsdp1_spec_expands_to_exactly_the_points_it_shipped() -> None:
    from app.calibration.multi_report import _point_id, load_records

    shipped = sorted(_point_id(r) for r in load_records(("cpu-matrix-multi-fsdp1",)))
    assert shipped == sorted(p.id for p in expand(load_spec(SPEC)))
    assert {r.plan["fsdp_version"] for r in load_records(("cpu-matrix-multi-fsdp1",))} == {1}


def test_fsdp1_terms_are_measured_on_cpu_ranks_qlora_too_but_not_under_backward_post() -> None:
    """calibration/cpu-matrix-multi-fsdp1-qlora.toml ran QLoRA under FULL_SHARD with no or BACKWARD_PRE prefetch."""
    from app.core.evidence import term_evidence

    plan = TrainingPlan(**{**BASE, "method": "lora", "sharding": "fsdp"})
    assert term_evidence("allgather_buffer_bytes", plan) == "measured-cpu-ranks"
    for prefetch in ("none", "pre"):
        qlora = TrainingPlan(**{**BASE, "method": "qlora", "sharding": "fsdp", "fsdp_backward_prefetch": prefetch})
        assert term_evidence("allgather_buffer_bytes", qlora) == "measured-cpu-ranks"
    post = TrainingPlan(**{**BASE, "method": "qlora", "sharding": "fsdp", "fsdp_backward_prefetch": "post"})
    assert term_evidence("allgather_buffer_bytes", post) == "first-principles"


def test_qlora_under_fsdp1_keeps_its_norms_embeddings_and_head_in_the_compute_dtype() -> None:
    """The frameworks' FSDP1 QLoRA skips prepare_model_for_kbit_training's fp32 upcast (one dtype per FlatParameter):
    the non-quantized weights are bf16, half FSDP2's fp32, and the logits are bf16; FSDP2 keeps the upcast."""
    from app.core.adapters import lora_key
    from app.core.step import kbit_upcast, precision
    from app.core.tensors import base_key, plan_tensors
    from app.core.units import BF16, FP32

    spec = cached_spec(FAMILIES["llama"].config, model_id="llama", source="file", cache_dir=None)
    fsdp1 = TrainingPlan(**{**BASE, "method": "qlora", "sharding": "fsdp"})
    fsdp2 = fsdp1.model_copy(update={"fsdp_version": 2, "fsdp_backward_prefetch": "none"})
    assert (kbit_upcast(fsdp1), kbit_upcast(fsdp2)) == (False, True)
    assert (precision(fsdp1).logits, precision(fsdp2).logits) == (BF16, FP32)
    other = [plan_tensors(spec, base_key(p), lora_key(p)).inventory.base.other for p in (fsdp1, fsdp2)]
    assert other[1] == pytest.approx(2 * other[0], rel=0.01)  # each tensor rounded to the allocator granularity


def test_qlora_under_fsdp1_shard_grad_op_is_refused_and_answered_as_fsdp2() -> None:
    """bitsandbytes re-wraps its weight in forward; SHARD_GRAD_OP's kept views refuse it in the first backward."""
    from app.calibration.distributed import check_distributed_plan
    from app.errors import CalibrationError

    check_distributed_plan(TrainingPlan(**{**BASE, "method": "qlora", "sharding": "fsdp"}))  # FULL_SHARD runs
    grad_op = TrainingPlan(**{**BASE, "method": "qlora", "sharding": "fsdp_grad_op"})
    with pytest.raises(CalibrationError, match="QLoRA under FSDP1's SHARD_GRAD_OP fails in the first backward"):
        check_distributed_plan(grad_op)
    spec = cached_spec(FAMILIES["llama"].config, model_id="llama", source="file", cache_dir=None)
    est = estimate(spec, grad_op)
    assert (est.plan.fsdp_version, est.plan.sharding) == (2, "fsdp_grad_op")
    assert [a.field for a in est.adjustments] == ["fsdp_version"]
