"""The time model held against measured step times: the error and MFU formulas, the comparable runs, the quote."""

from __future__ import annotations

from typing import Any

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import recommend, with_time_checks
from app.core.plan import TrainingPlan
from app.core.throughput import RunSize, step_time
from app.core.tiers import find_tier
from app.core.timing import TimedRun, at_measured_mfu, comparable_runs, measured_mfu, time_check, time_error

PEAK = 989.4e12  # H200 dense BF16


def run(measured: float = 1.0, model: float = 0.8, **fields: Any) -> TimedRun:
    values: dict[str, Any] = {
        "gpu": "H200",
        "method": "qlora",
        "checkpointing": True,
        "seq_len": 2048,
        "hidden_size": 4096,
        "measured_step_s": measured,
        "model_step_s": model,
        "flops_per_step": 0.3 * PEAK * measured,  # 30 % MFU
        "peak_flops": PEAK,
    }
    return TimedRun(**{**values, **fields})


def test_the_error_and_the_mfu_are_the_formulas() -> None:
    assert time_error(0.8, 1.0) == pytest.approx(-0.2)  # the run took longer than the model said
    assert time_error(1.5, 1.0) == pytest.approx(0.5)
    assert measured_mfu(4e14, 2.0, 1e15) == pytest.approx(0.2)  # 4e14 FLOPs in 2 s on a 1 PFLOP/s peak
    r = run(measured=2.0, model=1.0)
    assert (r.error, r.mfu) == (pytest.approx(-0.5), pytest.approx(0.3))


def test_the_quote_gives_the_median_error_the_range_and_the_mfu() -> None:
    runs = [run(model=m) for m in (0.7, 0.9, 1.2)]
    check = time_check("H200", runs, 0.4, "H200, same method")
    assert (check.runs, check.median_error, check.min_error, check.max_error) == (
        3,
        pytest.approx(-0.1),
        pytest.approx(-0.3),
        pytest.approx(0.2),
    )
    assert check.median_mfu == pytest.approx(0.3)
    assert check.text == (
        "time model vs 3 measured runs on H200: median \u221210 %, \u221230 % to +20 % "
        "(negative: the runs took longer); measured MFU 30% (model: 40%)"
    )


def test_without_runs_the_quote_says_so_plainly() -> None:
    check = time_check("L40S", [], 0.4)
    assert (check.runs, check.median_error, check.median_mfu) == (0, None, None)
    assert check.text == "no measured step times yet for L40S: the time is the model at 40% MFU"


PLAN = TrainingPlan(method="qlora", seq_len=2048)


def test_the_closest_runs_are_taken_and_the_widening_is_said() -> None:
    exact = run(model=0.5)
    other_size = run(model=0.6, hidden_size=8192 * 2)
    other_seq = run(model=0.7, seq_len=512)
    other_ckpt = run(model=0.9, checkpointing=False)
    never = [run(gpu="H100 80GB"), run(method="lora")]  # another tier or method never counts
    every = [exact, other_size, other_seq, other_ckpt, *never]

    chosen, scope = comparable_runs(every, PLAN, 4096, "H200")
    assert chosen == [exact]
    assert scope == "H200, same method, checkpointing, sequence length within x2, hidden size within x2"
    chosen, scope = comparable_runs([other_size, other_seq, other_ckpt, *never], PLAN, 4096, "H200")
    assert chosen == [other_size] and scope.endswith("; widened: any hidden size within x2")
    chosen, scope = comparable_runs([other_seq, other_ckpt, *never], PLAN, 4096, "H200")
    assert chosen == [other_seq] and "widened: any sequence length within x2 and any hidden size" in scope
    chosen, scope = comparable_runs([other_ckpt, *never], PLAN, 4096, "H200")
    assert chosen == [other_ckpt] and scope.startswith("H200, same method; widened: any checkpointing")
    assert comparable_runs(never, PLAN, 4096, "H200") == ([], "")


def test_a_recommendation_quotes_its_tiers_time_checks() -> None:
    spec = load_spec("meta-llama/Llama-3.1-8B")
    assert spec is not None
    rec = recommend(spec, estimate(spec, PLAN))
    assert all(f.time_check is not None and f.time_check.runs == 0 for f in rec.tiers)
    (only,) = rec.quoted_time_checks  # none measured: the recommended tier's 'none yet'
    assert only.gpu == rec.recommended and only.text.startswith("no measured step times yet")

    measured = time_check("H200", [run(model=0.9)], 0.4, "H200, same method")
    checked = with_time_checks(rec, {"H200": measured})
    assert [f.time_check for f in checked.tiers if f.gpu == "H200"] == [measured]
    assert [f for f in checked.tiers if f.gpu != "H200"] == [f for f in rec.tiers if f.gpu != "H200"]
    assert checked.quoted_time_checks == (only, measured)  # the recommended tier first, then tiers with runs
    assert with_time_checks(rec, {}) is rec


def test_the_measured_mfu_re_times_the_run_only_from_three_runs() -> None:
    spec, h200 = load_spec("meta-llama/Llama-3.1-8B"), find_tier("H200")
    assert spec is not None and h200 is not None
    two = time_check("H200", [run(), run()], 0.4)
    assert at_measured_mfu(two, spec, PLAN, h200, 1, RunSize()) == two  # too few runs: nothing re-timed
    three = time_check("H200", [run(), run(), run()], 0.4)
    timed = at_measured_mfu(three, spec, PLAN, h200, 1, RunSize())
    expected = step_time(spec, PLAN, h200, 1, RunSize(), mfu=0.3)
    assert expected is not None and timed.hours_at_measured_mfu == pytest.approx(expected.hours)
    assert timed.text.endswith(f"at the measured MFU this run would take {expected.hours:,.1f} h (not applied)")
