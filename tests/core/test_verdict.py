"""One verdict per plan: its three states, its words and GPU counts agree with the recommendation and the tiers."""

from __future__ import annotations

import math

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import TierFit, fit_state, recommend
from app.core.plan import TrainingPlan
from app.core.prices import PriceTable
from app.core.spec import ModelSpec
from app.core.units import GIB
from app.core.verdict import Verdict, left_text, verdict

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"


def spec(model_id: str) -> ModelSpec:
    found = load_spec(model_id)
    assert found is not None
    return found


def judge(model_id: str, **plan: object) -> tuple[Verdict, object]:
    model = spec(model_id)
    est = estimate(model, TrainingPlan.model_validate(plan))
    rec = recommend(model, est)
    found = verdict(model, est, rec)
    assert found is not None
    return found, rec


def test_fit_state_has_three_bands() -> None:
    assert fit_state(90, usable_bytes=100, budget=90) == "fits"
    assert fit_state(91, usable_bytes=100, budget=90) == "tight"
    assert fit_state(100, usable_bytes=100, budget=90) == "tight"
    assert fit_state(101, usable_bytes=100, budget=90) == "does_not_fit"


def _tier(judged: int, budget: int = 90 * GIB, usable: int = 100 * GIB) -> TierFit:
    return TierFit(
        gpu="X",
        usable_bytes=usable,
        fits=judged <= budget,
        headroom_bytes=usable - judged,
        budget_bytes=budget,
        judged_bytes=judged,
        state=fit_state(judged, usable, budget),
        gpus_needed=1,
    )


def test_headroom_left_says_what_the_verdict_used() -> None:
    assert left_text(_tier(80 * GIB), 0.1) == "10.00 GiB left after the 10% reserve"
    assert left_text(_tier(95 * GIB), 0.1) == "tight: 5.00 GiB into the 10% reserve"
    assert left_text(_tier(103 * GIB), 0.1) == "over budget by 13.00 GiB"  # positive usable-left never shown as room


def test_tiers_wording_matches_each_tiers_state_on_real_plans() -> None:
    for plan in ({}, {"method": "lora", "seq_len": 110_000}, {"method": "full"}):
        _, rec = judge(MIXTRAL, **plan)
        for t in rec.tiers:  # type: ignore[attr-defined]
            text = left_text(t, 0.1)
            assert t.fits == (t.state == "fits") == ("left after" in text), (t.gpu, text)
            assert (t.state == "tight") == text.startswith("tight")
            assert (t.state == "does_not_fit") == text.startswith("over budget by")


def test_a_plan_that_fits_says_so_with_the_gpus_it_is_priced_on() -> None:
    found, rec = judge("meta-llama/Llama-2-7b-hf")
    assert found.state == "fits" and found.label == "fits with the headroom kept free"
    assert (found.gpu, found.gpus) == (rec.recommended, rec.recommended_gpus) == (rec.options[0].gpu, 1)  # type: ignore[attr-defined]
    assert found.text.startswith(f"Fits on 1 × {rec.recommended}, the cheapest run")  # type: ignore[attr-defined]


def test_tight_when_only_the_headroom_reserve_holds_it() -> None:
    found, rec = judge(MIXTRAL, method="lora", seq_len=110_000)  # 180.3 GiB: MI300X 192 GiB, budget 172.8
    assert found.state == "tight" and found.gpu == "MI300X" and found.gpus == 1
    assert "only inside the 10% headroom reserve (7.51 GiB of it used)" in found.text
    assert f"with the reserve kept it needs {rec.recommended_gpus} × {rec.recommended}" in found.text  # type: ignore[attr-defined]


def test_does_not_fit_gives_the_multi_gpu_answer() -> None:
    found, rec = judge(MIXTRAL, method="full")
    assert found.state == "does_not_fit" and found.label == "does not fit"
    assert (
        found.text == f"Does not fit on 1 GPU of any tier; needs {rec.recommended_gpus} × MI300X under sharding none."
    )  # type: ignore[attr-defined]


def test_no_count_within_the_limits_says_so() -> None:
    found, rec = judge("meta-llama/Llama-2-7b-hf", seq_len=1_048_576, batch_size=4096)
    assert rec.recommended is None  # type: ignore[attr-defined]
    assert found.state == "does_not_fit" and found.gpu is None and found.max_gpus == 32  # one layer per GPU at most
    assert "no GPU count of any tier up to 32 holds it under sharding none" in found.text
    sharded, _ = judge("meta-llama/Llama-2-7b-hf", seq_len=1_048_576, batch_size=4096, sharding="zero3")
    assert sharded.max_gpus == 4096 and "up to 4,096" in sharded.text


def test_the_headline_and_the_tiers_table_agree_on_gpu_counts() -> None:
    # 8 GPUs planned, fewer would do: the headline names the planned 8 and says the tiers' fewest
    found, rec = judge(MIXTRAL, method="full", gpus=8, sharding="zero3")
    tier = next(t for t in rec.tiers if t.gpu == found.gpu)  # type: ignore[attr-defined]
    assert found.gpus == 8 == tier.option.gpus and found.fewest_gpus == tier.gpus_needed < 8
    assert f"Fits on 8 × {found.gpu}" in found.text and f"{tier.gpus_needed} would already hold it" in found.text


def test_a_tie_goes_to_the_older_generation_with_one_line_why() -> None:
    # Llama-2-70B QLoRA without prices: A100 80GB (81,920 MiB) and H100 80GB (81,559 MiB) both hold it on one GPU
    model = spec("meta-llama/Llama-2-70b-hf")
    est = estimate(model, TrainingPlan())
    rec = recommend(model, est, prices=PriceTable(prices=()))
    found = verdict(model, est, rec)
    assert found is not None and rec.recommended == "A100 80GB"
    assert [o.gpu for o in rec.options[:2]] == ["A100 80GB", "H100 80GB"]
    assert "the smallest GPU that holds it" in found.text
    assert found.tie_break == (
        "A100 80GB over H100 80GB: the same 80 GB marketed size, so the older (2020), cheaper generation"
    )


def test_the_safe_answer_judges_on_the_bands_upper_end() -> None:
    model = spec(MIXTRAL)
    est = estimate(model, TrainingPlan(method="lora", seq_len=90_000))  # 165.5 GiB: fits MI300X's 172.8 budget
    plain = recommend(model, est)
    safe = recommend(model, est, safety_factor=1.06)  # 175.4 GiB judged: inside the reserve
    assert verdict(model, est, plain).state == "fits"  # type: ignore[union-attr]
    assert verdict(model, est, safe).state == "tight" and safe.safety_factor == 1.06  # type: ignore[union-attr]
    mi300x = next(t for t in safe.tiers if t.gpu == "MI300X")
    assert mi300x.judged_bytes == math.ceil(est.device_bytes * 1.06) and mi300x.state == "tight"
    assert recommend(model, est, safety_factor=0.5).safety_factor == 1.0  # never below the estimate


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_cpu_plans_have_no_gpu_verdict(method: str) -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    est = estimate(model, TrainingPlan(method=method, device="cpu", optimizer="adamw"))
    assert verdict(model, est, None) is None
