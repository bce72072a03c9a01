"""GPU tiers: boundary cases of the recommendation, and plan validation messages."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.core.estimate import estimate
from app.core.gpus import GPU_TIERS, GpuTier, budget_bytes, find_tier, first_passing, recommend, split_counts
from app.core.plan import TrainingPlan
from app.core.prices import PriceTable
from tests.configs import spec


def test_fit_boundary_is_inclusive_and_exact() -> None:
    tier = GpuTier(name="X", segment="consumer", memory_gb=1, usable_bytes=1000)
    assert budget_bytes(tier, 0.10) == 900
    assert budget_bytes(tier, 0.0) == 1000
    # a fraction whose budget is not whole: the floored budget is the same test as device <= usable x (1 - h)
    assert budget_bytes(tier, 0.0995) == 900 and 900 <= 1000 * (1 - 0.0995) < 901


def test_monotone_search_finds_the_first_passing_value() -> None:
    probes: list[int] = []

    def at_least_37(n: int) -> bool:
        probes.append(n)
        return n >= 37

    assert first_passing(at_least_37, 1, 4096) == 37
    assert len(probes) <= 12  # bisection: log2 of the range
    assert first_passing(at_least_37, 36, 37) == 37 and first_passing(at_least_37, 1, 2) == 2


def test_small_qlora_recommends_the_cheapest_run_among_the_tiers_that_run_it() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    rec = recommend(model, estimate(model, TrainingPlan()))
    assert rec.recommended_gpus == 1
    costs = [o.cost_usd for o in rec.options if o.cost_usd is not None]
    assert costs and costs == sorted(costs) and rec.options[0].cost_usd == min(costs)
    assert (rec.recommended, rec.recommended_gpus) == (rec.options[0].gpu, rec.options[0].gpus)
    chosen = next(f for f in rec.tiers if f.gpu == rec.recommended)
    assert chosen.fits and chosen.runs and chosen.option == rec.options[0]
    # every option runs the plan: a bf16 plan offers neither T4 nor V100, which say why
    assert {"T4", "V100 32GB"}.isdisjoint(o.gpu for o in rec.options)
    assert rec.fastest is not None and all((rec.fastest.hours or 0) <= (o.hours or 0) for o in rec.options)


def test_without_prices_the_smallest_tier_that_runs_it_is_recommended() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    rec = recommend(model, estimate(model, TrainingPlan()), prices=PriceTable(prices=()))
    best = next(t for t in GPU_TIERS if t.name == rec.recommended)
    runnable = [f for f in rec.tiers if f.fits and f.runs]
    sizes = {t.name: t.memory_gb for t in GPU_TIERS}
    assert best.memory_gb == min(sizes[f.gpu] for f in runnable)
    assert all(o.cost_usd is None for o in rec.options) and "no prices" in rec.ranking


def test_ties_go_to_the_older_cheaper_generation() -> None:
    """Equal marketed size without prices: A100 80GB (2020) before H100 80GB (2022), though the driver reports the
    H100 as 361 MiB smaller."""
    model = spec("meta-llama/Llama-2-7b-hf")
    tiers = (find_tier("H100 80GB"), find_tier("A100 80GB"))
    assert None not in tiers
    rec = recommend(model, estimate(model, TrainingPlan()), tiers=tiers, prices=PriceTable(prices=()))  # type: ignore[arg-type]
    assert rec.recommended == "A100 80GB"


def test_full_70b_needs_many_gpus_under_zero3_and_none_under_ddp() -> None:
    model = spec("meta-llama/Llama-2-70b-hf")
    plan = TrainingPlan(method="full", optimizer="adamw", sharding="zero3")
    rec = recommend(model, estimate(model, plan))
    h100 = next(f for f in rec.tiers if f.gpu == "H100 80GB")
    assert not h100.fits and h100.gpus_needed is not None and h100.gpus_needed > 8
    # one GPU fewer than needed does not fit, the count needed does
    tier = find_tier("H100 80GB")
    assert tier is not None
    at = estimate(model, plan.model_copy(update={"gpus": h100.gpus_needed})).device_bytes
    below = estimate(model, plan.model_copy(update={"gpus": h100.gpus_needed - 1})).device_bytes
    assert at <= budget_bytes(tier, 0.10) < below
    ddp_plan = TrainingPlan(method="full", optimizer="adamw", sharding="ddp")
    ddp = recommend(model, estimate(model, ddp_plan))
    assert all(f.gpus_needed is None and f.reason for f in ddp.tiers)
    assert ddp.recommended is None


def test_find_tier_is_forgiving_about_case_and_spaces() -> None:
    assert find_tier("rtx4090") is not None and find_tier("H100 80gb") is not None and find_tier("nope") is None


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"method": "qlora", "quant": "none"}, "qlora needs a quantized base"),
        ({"method": "lora", "quant": "nf4"}, "use method qlora"),
        ({"offload": True}, "offload needs sharding"),
        ({"targets": "q_proj,,v_proj"}, "non-empty module name"),
        ({"targets": "q_proj;rm -rf"}, "is not a module name"),
        ({"seq_len": 0}, "greater than or equal to 1"),
        ({"rank": 5000}, "less than or equal to 4096"),
    ],
)
def test_plan_errors_say_what_to_fix(kw: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingPlan(**kw)
    assert fragment in str(info.value)


def test_targets_that_match_nothing_or_unsupported_modules() -> None:
    from app.errors import PlanError

    with pytest.raises(PlanError, match="none of the targets"):
        estimate(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(targets="qkv_proj"))
    with pytest.raises(PlanError, match="LoRA cannot adapt"):
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(targets="experts"))
    # PEFT refuses dropout (and DoRA) on the fused experts all-linear wraps with ParamWrapper: a strict plan is
    # refused (tests/core/test_stack_adjustments.py: otherwise answered for the nearest accepted plan)
    with pytest.raises(PlanError, match="dropout"):
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(targets="all-linear", dropout=0.05, strict=True))
    with pytest.raises(PlanError, match="DoRA"):
        plan = TrainingPlan(targets="all-linear", dropout=0, dora=True, strict=True)
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), plan)
    est = estimate(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(targets="q_proj,qkv_proj"))
    assert any("qkv_proj" in n for n in est.notes)


@pytest.mark.parametrize("layers", [1, 2, 5, 32, 40, 61, 80])
def test_split_counts_are_the_fewest_gpus_for_each_layers_per_gpu_value(layers: int) -> None:
    limit = min(32, layers)
    counts = split_counts(layers, limit)
    by_share: dict[int, int] = {}
    for n in range(1, limit + 1):
        by_share.setdefault(-(-layers // n), n)  # the first (fewest) n for each ⌈L/n⌉
    assert counts == tuple(sorted(by_share.values())) and counts[0] == 1


@pytest.mark.parametrize(
    "plan",
    [
        TrainingPlan(rank=2048, seq_len=8192),
        TrainingPlan(method="lora", seq_len=4096),
        TrainingPlan(method="full", seq_len=2048, gpus=4),  # the plan's own count splits the search
        TrainingPlan(method="full", seq_len=2048, gpus=9),  # between two split counts (8 and 11 of 32 layers)
        TrainingPlan(quant="int8", seq_len=4096),  # int8 keeps the ⌈L/n⌉ law
    ],
)
def test_layer_split_gpu_counts_match_a_linear_scan(plan: TrainingPlan) -> None:
    """recommend()'s answer is the first of 1..L that fits: for int8 plans it bisects only the split counts, the
    per-GPU bytes depending on n only through ⌈L/n⌉ (the law split_counts stands on); other plans follow
    device_map="auto"'s balancing (app/core/layer_split.py), which that law does not hold for, and scan every count."""
    model = spec("meta-llama/Llama-2-7b-hf")
    layers = model.arch.num_layers
    per_gpu = {n: estimate(model, plan.model_copy(update={"gpus": n})).device_bytes for n in range(1, layers + 1)}
    for n, nbytes in per_gpu.items():
        assert plan.quant != "int8" or nbytes == per_gpu[-(-layers // -(-layers // n))]
    rec = recommend(model, estimate(model, plan))
    for tier_fit in rec.tiers:
        budget = budget_bytes(find_tier(tier_fit.gpu) or GPU_TIERS[0], rec.headroom)
        fitting = [n for n, nbytes in per_gpu.items() if nbytes <= budget]
        assert tier_fit.gpus_needed == (min(fitting) if fitting else None), tier_fit.gpu


@pytest.mark.parametrize(
    "plan",
    [
        TrainingPlan(),
        TrainingPlan(method="full", optimizer="adamw", gpus=8, sharding="zero3", offload=True),
        TrainingPlan(method="lora", gpus=4, seq_len=8192),
        TrainingPlan(method="full", optimizer="paged_adamw_8bit", grad_accum_steps=4, keep_logits=True),
        TrainingPlan(device="cpu", optimizer="adamw", checkpoint_every=2),
    ],
)
def test_device_bytes_is_the_estimates_device_bytes(plan: TrainingPlan) -> None:
    """recommend()'s GPU-count searches read device_bytes(); it must be estimate()'s number to the byte."""
    from app.core.estimate import device_bytes

    for name in ("meta-llama/Llama-2-7b-hf", "mistralai/Mixtral-8x7B-v0.1"):
        model = spec(name)
        assert device_bytes(model, plan) == estimate(model, plan).device_bytes


@pytest.mark.parametrize(
    "plan",
    [
        TrainingPlan(method="full", optimizer="adamw", gpus=8, sharding="fsdp"),
        TrainingPlan(method="full", optimizer="adamw", gpus=2, sharding="zero3", seq_len=4096),
        TrainingPlan(method="lora", gpus=16, sharding="zero2"),
    ],
)
def test_sharded_gpu_counts_match_a_linear_scan(plan: TrainingPlan) -> None:
    """With sharding the search starts from the plan's own count (at most it when it fits, else above it): the
    answer is still the first count that fits, scanned one by one up to 64."""
    model = spec("meta-llama/Llama-2-7b-hf")
    per_gpu = {n: estimate(model, plan.model_copy(update={"gpus": n})).device_bytes for n in range(1, 65)}
    rec = recommend(model, estimate(model, plan))
    for tier_fit in rec.tiers:
        budget = budget_bytes(find_tier(tier_fit.gpu) or GPU_TIERS[0], rec.headroom)
        fitting = [n for n, nbytes in per_gpu.items() if nbytes <= budget]
        if fitting:
            assert tier_fit.gpus_needed == min(fitting), tier_fit.gpu
        else:  # zero2 keeps whole weights: some small tiers never fit
            assert tier_fit.gpus_needed is None or tier_fit.gpus_needed > 64, tier_fit.gpu


def _random_plans(count: int, seed: int) -> list[TrainingPlan]:
    """Valid plans drawn over the fields that change a multi-GPU estimate (invalid draws are skipped)."""
    import random

    rng = random.Random(seed)
    plans: list[TrainingPlan] = []
    while len(plans) < count:
        fields = {
            "method": rng.choice(["qlora", "lora", "full"]),
            "sharding": rng.choice(["none", "ddp", "fsdp", "fsdp_grad_op", "zero2", "zero3"]),
            "gpus": rng.choice([1, 2, 3, 8]),
            "fsdp_version": rng.choice([1, 2]),
            "offload": rng.choice([False, False, True]),
            "gradient_checkpointing": rng.choice([True, False]),
            "seq_len": rng.choice([512, 4096]),
            "rank": rng.choice([8, 256]),
            "optimizer": rng.choice(["adamw", "paged_adamw_32bit", "sgd"]),
            "dtype": rng.choice(["bf16", "fp16"]),
        }
        if fields["fsdp_version"] == 1:
            fields["fsdp_backward_prefetch"] = "backward_pre"
        try:
            plans.append(TrainingPlan(**fields))
        except ValidationError:
            continue
    return plans


@pytest.mark.parametrize("plan", _random_plans(24, seed=7), ids=lambda p: f"{p.method}-{p.sharding}-{p.gpus}")
def test_gpu_counts_are_device_bytes_on_each_count(plan: TrainingPlan) -> None:
    """GpuCounts (recommend()'s searches) builds the layer stack once for one GPU and once for several: its bytes
    must be device_bytes() of the plan on that count, to the byte, for every sharding (it fails once an activation
    term reads the GPU count otherwise)."""
    from app.core.estimate import GpuCounts, device_bytes
    from app.errors import PlanError

    for name in ("meta-llama/Llama-2-7b-hf", "mistralai/Mixtral-8x7B-v0.1"):
        model = spec(name)
        counts = GpuCounts(model, plan)
        for n in (1, 2, 3, 5, 8, 16, 64):
            other = plan.model_copy(update={"gpus": n})
            try:
                expected = device_bytes(model, other)
            except PlanError as exc:
                with pytest.raises(PlanError, match=re.escape(str(exc))):
                    counts(n)
                continue
            assert counts(n) == expected, (name, n)


def test_galloping_finds_the_first_passing_value_or_none() -> None:
    from app.core.gpus import galloping, known_window

    for answer in range(1, 12):
        asked: list[int] = []

        def passes(i: int, answer: int = answer, asked: list[int] = asked) -> bool:
            asked.append(i)
            return i >= answer

        assert galloping(passes, 0, 10) == (answer if answer <= 10 else None)
        assert len(set(asked)) <= 7
    assert galloping(lambda i: True, 0, 10) == 1  # one step above the failing index asks one value
    # what other tiers' searches judged bounds this one: count 3 (index 2) failed, count 8 (index 7) passed
    counts = (1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 32)
    assert known_window(counts, 100, {3: 120, 8: 90, 10: 50}) == (2, 7)  # 10 is no split count: ignored
    assert known_window(counts, 100, {1: 150}) == (0, None)
