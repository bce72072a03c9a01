"""What a GPU tier can run: no bf16 plan is ever offered a T4 or V100, fp16 plans may be; each blocker names its fix."""

from __future__ import annotations

from datetime import date

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.catalog import catalog_ids
from app.core.capabilities import blockers, cannot_run, fixed_plan
from app.core.estimate import estimate
from app.core.gpus import GPU_TIERS, find_tier, recommend
from app.core.plan import TrainingPlan
from app.core.prices import Price, PriceTable
from app.core.spec import ModelSpec
from tests.configs import spec

NO_BF16 = {"T4", "V100 32GB"}
MODELS = st.sampled_from(catalog_ids())
PLANS = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["qlora", "lora", "full"]),
        "gradient_checkpointing": st.booleans(),
        "optimizer": st.sampled_from(["adamw", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "sgd"]),
        "attn": st.sampled_from(["sdpa", "flash_attention_2", "eager"]),
        "seq_len": st.sampled_from([256, 1024, 2048, 8192]),
        "batch_size": st.sampled_from([1, 4]),
        "gpus": st.sampled_from([1, 2, 8]),
        "sharding": st.sampled_from(["none", "ddp", "zero3"]),
        "dropout": st.just(0.0),
        "targets": st.sampled_from(["all-linear", "q_proj,v_proj"]),
    }
)


def _valid(model: ModelSpec, kw: dict) -> bool:
    return kw["targets"] == "all-linear" or any(g.leaf in kw["targets"].split(",") for g in model.groups)


def _cheap(gpu: str) -> PriceTable:
    """A price table in which `gpu` is nearly free, so it wins wherever it may."""
    row = Price(gpu=gpu, usd=0.0001, provider="test", as_of=date(2026, 1, 1), source="test")
    return PriceTable(prices=(row,))


@settings(max_examples=40, deadline=None)
@given(MODELS, PLANS)
def test_no_bf16_plan_ever_recommends_a_t4_or_v100(model_id: str, kw: dict) -> None:
    model = spec(model_id)
    assume(_valid(model, kw))
    est = estimate(model, TrainingPlan(**kw, dtype="bf16"))
    for cheap in ("T4", "V100 32GB"):  # even when they would be the cheapest by far
        rec = recommend(model, est, prices=_cheap(cheap))
        assert rec.recommended not in NO_BF16
        assert NO_BF16.isdisjoint(o.gpu for o in rec.options)
        for f in rec.tiers:
            if f.gpu in NO_BF16:
                assert not f.runs and f.option is None
                assert f.cannot_run is not None and f.cannot_run.startswith(
                    "cannot run: no bf16 (use fp16, or a GPU from Ampere on)"
                )
                assert f.runs_with is not None and f.runs_with.get("dtype") == "fp16"


@settings(max_examples=25, deadline=None)
@given(MODELS, PLANS)
def test_fp16_plans_may_run_on_a_t4_and_v100(model_id: str, kw: dict) -> None:
    model = spec(model_id)
    assume(_valid(model, kw) and kw["attn"] != "flash_attention_2")
    est = estimate(model, TrainingPlan(**kw, dtype="fp16"))
    rec = recommend(model, est, prices=_cheap("T4"))
    t4 = next(f for f in rec.tiers if f.gpu == "T4")
    assert t4.runs and t4.cannot_run is None
    assert next(f for f in rec.tiers if f.gpu == "V100 32GB").runs
    if t4.option is not None:  # it holds the plan on some count of T4s: it is offered, and wins when cheapest
        assert any(o.gpu == "T4" for o in rec.options)
        assert rec.recommended == "T4"


def test_a_small_fp16_qlora_is_recommended_a_t4_when_it_is_the_cheapest() -> None:
    model = spec("Qwen/Qwen2.5-0.5B")
    rec = recommend(model, estimate(model, TrainingPlan(dtype="fp16")), prices=_cheap("T4"))
    assert (rec.recommended, rec.recommended_gpus) == ("T4", 1)


def test_each_blocker_names_the_setting_that_would_make_it_run() -> None:
    llama = spec("meta-llama/Llama-3.1-8B")
    t4, v100, mi300x = find_tier("T4"), find_tier("V100 32GB"), find_tier("MI300X")
    assert t4 and v100 and mi300x
    plan = TrainingPlan(attn="flash_attention_2")
    found = blockers(t4, plan, llama.arch.head_dim)
    assert [b.fact for b in found] == ["bf16", "flash_attention_2"]
    assert cannot_run(found) == (
        "cannot run: no bf16 (use fp16, or a GPU from Ampere on); "
        "no FlashAttention-2 (it needs Ampere or newer) (use sdpa)"
    )
    assert fixed_plan(plan, found) == TrainingPlan(attn="sdpa", dtype="fp16")
    # LLM.int8() needs compute capability 7.5: a V100 (7.0) runs the plan with nf4 instead
    int8 = blockers(v100, TrainingPlan(quant="int8", dtype="fp16"), llama.arch.head_dim)
    assert [(b.fact, b.fix) for b in int8] == [("int8_matmul", {"quant": "nf4"})]
    # ROCm's FlashAttention-2 backward takes head dims up to 128 (flash-attention README)
    assert blockers(mi300x, plan, 128) == ()
    assert [b.fact for b in blockers(mi300x, plan, 256)] == ["fa2_max_backward_head_dim"]


def test_every_tier_states_its_facts_and_their_sources() -> None:
    for tier in GPU_TIERS:
        assert tier.compute_capability and tier.architecture != "unknown" and tier.launched >= 2018
        assert tier.dense_16bit_tflops > 0 and tier.fp32_tflops > 0 and tier.memory_bandwidth_gbs > 0
        assert tier.interconnect and tier.interconnect_gbs > 0 and tier.bitsandbytes_note
        assert any("flash-attention" in s for s in tier.sources) and any("bitsandbytes" in s for s in tier.sources)
        assert tier.bf16 == (tier.name not in NO_BF16)
        assert tier.flash_attention_3 == tier.architecture.startswith("Hopper")  # FlashAttention-3: Hopper only
