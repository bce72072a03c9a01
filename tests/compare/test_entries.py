"""Plans of a comparison: one spelling per surface that round-trips, and errors naming the plan and the field."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest

from app.compare.entries import MAX_PLANS, PlanEntry, ordinal, parse_entries, split_query, split_words
from app.core.plan import TrainingPlan
from app.errors import PlanError
from tests.compare.helpers import CLI_PLANS, PLANS


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
    ]  # fmt: skip


def test_the_cli_words_and_the_permalink_values_give_the_same_plans() -> None:
    from_words = parse_entries(CLI_PLANS)
    from_query = parse_entries(PLANS)
    assert from_words == from_query
    assert [e.gpu for e in from_words] == ["RTX 4090", "A100 80GB", "H100 80GB"]
    full = from_words[2].plan
    assert (full.method, full.optimizer, full.gpus, full.sharding) == ("full", "adamw", 8, "zero3")


def test_a_permalink_round_trips() -> None:
    entries = parse_entries(PLANS)
    url = urlencode([("plan", e.query()) for e in entries])
    values = [v for k, v in parse_qsl(url) if k == "plan"]
    again = parse_entries(values)
    assert again == entries
    assert [e.query() for e in again] == values  # canonical: the same text again
    assert parse_entries([e.text() for e in entries]) == entries  # and the CLI spelling


def test_the_canonical_spelling_leaves_out_defaults_and_the_automatic_quant() -> None:
    entry = PlanEntry(model="m/x", plan=TrainingPlan(method="lora", rank=32))
    assert entry.pairs() == [("model", "m/x"), ("method", "lora"), ("rank", "32")]
    assert split_query(entry.query()) == entry.pairs()


def test_a_gpu_name_may_keep_its_space_unquoted_on_the_command_line() -> None:
    assert split_words("model=a/b gpu=A100 80GB rank=8") == [("model", "a/b"), ("gpu", "A100 80GB"), ("rank", "8")]
    assert split_words("model=a/b gpu='RTX 4090'") == [("model", "a/b"), ("gpu", "RTX 4090")]


def test_every_bad_field_of_every_plan_is_named_with_its_plan() -> None:
    with pytest.raises(PlanError) as caught:
        parse_entries(["model=a/b", "model=a/b&rank=0&gpu=RTX 9999&colour=red", "method=lora"])
    fields = [e["field"] for e in caught.value.errors]
    assert fields == ["plan2.colour", "plan2.gpu", "plan2.rank", "plan3.model"]
    detail = caught.value.detail
    assert detail.startswith("2nd plan: colour: unknown field")
    assert "; 3rd plan: model: name a model" in detail
    assert "known tiers: RTX 3060" in detail


def test_a_plan_rule_spanning_fields_is_named_too() -> None:
    with pytest.raises(PlanError) as caught:
        parse_entries(["model=a/b", "model=a/b&method=lora&quant=nf4"])
    assert caught.value.errors == [
        {"field": "plan2.plan", "message": "method lora trains a 16-bit base: use method qlora for quant nf4"}
    ]


@pytest.mark.parametrize("count", [0, 1, MAX_PLANS + 1])
def test_two_to_six_plans(count: int) -> None:
    with pytest.raises(PlanError) as caught:
        parse_entries(["model=a/b"] * count)
    assert caught.value.errors == [
        {"field": "plan", "message": f"give 2 to 6 plans to compare (one `plan` entry each); got {count}"}
    ]


def test_json_plans_are_strict_and_text_plans_are_not() -> None:
    assert parse_entries([{"model": "a/b"}, {"model": "a/b", "rank": 8}], strict=True)[1].plan.rank == 8
    with pytest.raises(PlanError) as caught:
        parse_entries([{"model": "a/b"}, {"model": "a/b", "gradient_checkpointing": 0}], strict=True, field="plans")
    assert caught.value.errors[0]["field"] == "plan2.gradient_checkpointing"
    assert (
        parse_entries(["model=a/b", "model=a/b&gradient_checkpointing=false"])[1].plan.gradient_checkpointing is False
    )
