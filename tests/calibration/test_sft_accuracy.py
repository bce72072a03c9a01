"""The SFTTrainer loop measured for real in CI: cheap points of calibration/cpu-matrix-sft.toml, held to bounds.

For every method x checkpointing (off, non-reentrant, reentrant) the matrix has, its cheapest point (by `point_work`,
which counts every micro-batch) runs through trl.SFTTrainer, and for every method the cheapest point with gradient
accumulation 4 too: about 12 small points, ~45 s on an idle CPU. Every point must be within +-5 % and the median
within +-2 %. The table goes to artifacts/accuracy-sft-ci.md, and to docs/accuracy-sft-ci.md when GPUPLAN_WRITE_DOCS=1;
the full matrix ships as data (test_shipped_accuracy.py re-estimates it).
"""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from app.calibration.budget import point_work
from app.calibration.commands import ACCURACY_INTRO
from app.calibration.compare import to_record
from app.calibration.matrix import Point, expand, load_spec, run_points
from app.calibration.report import accuracy_markdown
from app.core.plan import TrainingPlan
from app.errors import CalibrationError
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "calibration" / "cpu-matrix-sft.toml"


def checkpointing(point: Point) -> str:
    plan = point.plan
    return ("reentrant" if plan.reentrant else "non-reentrant") if plan.gradient_checkpointing else "off"


def _cheapest(points: list[Point], key: Callable[[Point], tuple[object, ...]]) -> list[Point]:
    by_key: dict[tuple[object, ...], Point] = {}
    for point in points:
        best = by_key.get(key(point))
        if best is None or point_work(point) < point_work(best):
            by_key[key(point)] = point
    return [by_key[k] for k in sorted(by_key, key=str)]


@pytest.fixture(scope="module")
def cheap_points() -> list[Point]:
    """The cheapest point of each method x checkpointing of SPEC, and of each method with accumulation 4."""
    points = expand(load_spec(SPEC))
    accumulating = [p for p in points if p.plan.grad_accum_steps > 1]
    chosen = _cheapest(points, lambda p: (p.plan.method, checkpointing(p)))
    chosen += [p for p in _cheapest(accumulating, lambda p: (p.plan.method,)) if p not in chosen]
    return chosen


def test_the_matrix_runs_through_sft_trainer_and_covers_the_recipe_axes(cheap_points: list[Point]) -> None:
    spec = load_spec(SPEC)
    assert spec.loop == "sft" and spec.defaults["loop"] == "sft"
    assert {p.plan.loop for p in expand(spec)} == {"sft"}
    assert {(p.plan.method, checkpointing(p)) for p in cheap_points} == {
        (m, c) for m in ("qlora", "lora", "full") for c in ("off", "non-reentrant", "reentrant")
    }
    assert {(p.plan.method, p.plan.grad_accum_steps > 1) for p in cheap_points} >= {
        (m, a) for m in ("qlora", "lora", "full") for a in (False, True)
    }


def test_the_sft_loop_refuses_a_plan_of_another_loop() -> None:
    """loop sft measures SFTTrainer's fused LM head: a plan estimated with the Trainer's logits is refused before
    any model is built, and so is the other way round."""
    from app.calibration.harness import check_plan

    plan = TrainingPlan(method="lora", device="cpu", optimizer="adamw", seq_len=16)
    with pytest.raises(CalibrationError, match="loop sft"):
        check_plan(plan, 2, "sft")
    with pytest.raises(CalibrationError, match="loop sft"):
        check_plan(plan.model_copy(update={"loop": "sft"}), 2, "trainer")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sft_loop_within_5_percent_and_median_within_2(
    cheap_points: list[Point], machine: MachineProbe, request: pytest.FixtureRequest
) -> None:
    run = functools.partial(run_points, fp32_matmuls=machine.fp32_matmuls, loop="sft")
    results = list(run(cheap_points))
    for result in results:
        report(
            request.config,
            f"  sft   {result.point.id} {result.point.plan.method} accum {result.point.plan.grad_accum_steps} "
            f"{checkpointing(result.point)} {result.comparison.error_pct:+.2f} % "
            f"({result.measurement.duration_s:.1f} s)",
        )
    assert {r.measurement.env.loop for r in results} == {"sft"}
    records = [
        to_record(r.measurement, r.comparison, model_id=r.point.family, source="ci-sft", split=r.point.split)
        for r in results
    ]
    text = accuracy_markdown(
        records,
        title="Accuracy through trl.SFTTrainer (CPU tracker)",
        intro=ACCURACY_INTRO + f" These points ran through TRL's real `SFTTrainer` (`app/calibration/sft_loop.py`, "
        f"trl 1.16.0: its fused LM head, `peft_config=`, bf16 LoRA weights over a quantized base): the cheapest "
        f"point of each method x checkpointing variant of `calibration/cpu-matrix-sft.toml`, and of each method "
        f"with gradient accumulation 4 ({len(records)} points), written by `tests/calibration/test_sft_accuracy.py`. "
        f"The whole matrix: `gpuplan accuracy --source cpu-matrix-sft` (docs/accuracy-sft.md).",
    )
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "accuracy-sft-ci.md").write_text(text)
    if os.environ.get("GPUPLAN_WRITE_DOCS") == "1":
        (ROOT / "docs" / "accuracy-sft-ci.md").write_text(text)
    worst = max(results, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    errors = [r.comparison.error_pct for r in results]
    assert abs(statistics.median(errors)) <= 2.0
    assert statistics.median(abs(e) for e in errors) <= 2.0
