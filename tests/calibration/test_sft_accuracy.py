"""The SFTTrainer loop measured for real in CI: cheap points of calibration/cpu-matrix-sft.toml, held to bounds.

For every method, one point of each checkpointing variant (off, non-reentrant, reentrant), some with gradient
accumulation 1 and some with 4, the choice of least work (`point_work`, which counts every micro-batch), runs
through trl.SFTTrainer: nine small points (27 s of training on an idle 2-core CPU, 38-64 s under load). Every point must be within +-5 % and the median
within +-2 %. The table goes to artifacts/accuracy-sft-ci.md, and to docs/accuracy-sft-ci.md when GPUPLAN_WRITE_DOCS=1;
the full matrix ships as data (test_shipped_accuracy.py re-estimates it).
"""

from __future__ import annotations

import functools
import itertools
import os
import statistics
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


def cheapest_variants(points: list[Point]) -> list[Point]:
    """Per method, one point of each checkpointing variant, with gradient accumulation 1 for some and 4 for the
    others: of every such choice the one of least work (`point_work`, which counts every micro-batch)."""
    best = {k: v for k, v in ((k, _cheapest_of(points, k)) for k in _keys(points)) if v is not None}
    chosen: list[Point] = []
    for method in sorted({p.plan.method for p in points}):
        combos = [
            [best[(method, ckpt, accum)] for ckpt, accum in zip(CHECKPOINTING, accums, strict=True)]
            for accums in itertools.product((False, True), repeat=len(CHECKPOINTING))
            if len(set(accums)) == 2 and all((method, c, a) in best for c, a in zip(CHECKPOINTING, accums, strict=True))
        ]
        chosen += min(combos, key=lambda combo: sum(point_work(p) for p in combo))
    return chosen


CHECKPOINTING = ("off", "non-reentrant", "reentrant")


def _key(point: Point) -> tuple[str, str, bool]:
    return point.plan.method, checkpointing(point), point.plan.grad_accum_steps > 1


def _keys(points: list[Point]) -> set[tuple[str, str, bool]]:
    return {_key(p) for p in points}


def _cheapest_of(points: list[Point], key: tuple[str, str, bool]) -> Point | None:
    return min((p for p in points if _key(p) == key), key=point_work, default=None)


@pytest.fixture(scope="module")
def cheap_points() -> list[Point]:
    """Nine points of SPEC: every method x checkpointing variant, each method with accumulation 1 and 4."""
    return cheapest_variants(expand(load_spec(SPEC)))


def test_the_matrix_runs_through_sft_trainer_and_covers_the_recipe_axes(cheap_points: list[Point]) -> None:
    spec = load_spec(SPEC)
    assert spec.loop == "sft" and spec.defaults["loop"] == "sft"
    assert {p.plan.loop for p in expand(spec)} == {"sft"}
    assert len(cheap_points) == 9
    assert {(p.plan.method, checkpointing(p)) for p in cheap_points} == {
        (m, c) for m in ("qlora", "lora", "full") for c in CHECKPOINTING
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
        f"trl 1.16.0: its fused LM head, `peft_config=`, bf16 LoRA weights over a quantized base): one point of "
        f"each method x checkpointing variant of `calibration/cpu-matrix-sft.toml`, each method with gradient "
        f"accumulation 1 and 4, the choice of least work ({len(records)} points), written by `tests/calibration/test_sft_accuracy.py`. "
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
