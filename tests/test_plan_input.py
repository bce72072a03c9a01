"""The one plan-input adapter: every TrainingPlan field is a flag, one reader, one error list; --from and --strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import _parser, main
from app.core.plan import TrainingPlan
from app.errors import PlanError
from app.plan_input import build_plan, plan_fields, read_values

EXAMPLES = Path(__file__).resolve().parent / "recipes" / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_plan_field_is_a_flag_of_estimate_and_calibrate() -> None:
    parser = _parser()
    for command in ("estimate", "calibrate"):
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        dests = {a.dest for a in sub._actions}
        # calibrate's --loop names the harness's loop (plain, trainer, sft); sft also sets the plan's loop
        harness = {"loop"} if command == "calibrate" else set()
        assert set(TrainingPlan.model_fields) - harness <= dests, command
    calibrate = parser._subparsers._group_actions[0].choices["calibrate"]  # type: ignore[union-attr]
    loop = next(a for a in calibrate._actions if "--loop" in a.option_strings)
    assert (loop.dest, tuple(loop.choices or ())) == ("harness_loop", ("plain", "trainer", "sft"))


def test_flags_carry_the_fields_choices_and_defaults() -> None:
    fields = {f.name: f for f in plan_fields()}
    assert fields["optimizer"].choices == (
        "adamw",
        "adamw_8bit",
        "paged_adamw_32bit",
        "paged_adamw_8bit",
        "sgd",
        "adafactor",
    )
    assert (fields["rank"].kind, fields["rank"].low) == ("int", "1")
    assert fields["strict"].kind == "bool" and fields["strict"].default is False
    assert fields["seq_len"].flag == "--seq-len"


def test_repeated_targets_are_joined_and_empty_values_mean_the_default() -> None:
    values = read_values([("targets", "q_proj"), ("targets", "v_proj"), ("rank", ""), ("nonsense", "1"), ("rank", "8")])
    assert values == {"targets": "q_proj,v_proj", "rank": "8"}
    assert build_plan(values).targets == ("q_proj", "v_proj")


def test_every_bad_value_is_in_one_error_list() -> None:
    with pytest.raises(PlanError) as caught:
        build_plan({"rank": "0", "seq_len": "many", "optimizer": "lion"}, naming="flag")
    assert {e["field"] for e in caught.value.errors} == {"--rank", "--seq-len", "--optimizer"}
    assert caught.value.detail.count(";") == 2


def test_the_cli_reports_every_bad_flag_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "estimate", "meta-llama/Llama-2-7b-hf", "--rank", "0", "--batch-size", "0")
    assert code == 2 and err.count("\n") == 1
    assert "--rank" in err and "--batch-size" in err


def test_from_a_config_equals_the_same_plan_as_flags(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(EXAMPLES / "axolotl-llama3-qlora.yml")
    code, out, _ = run(capsys, "estimate", "meta-llama/Meta-Llama-3-8B", "--from", config, "--json")
    assert code == 0
    imported = json.loads(out)
    flags = ["--method", "qlora", "--rank", "32", "--alpha", "16", "--seq-len", "4096", "--batch-size", "2"]
    flags += ["--attn", "flash_attention_2", "--optimizer", "paged_adamw_32bit", "--targets", "all-linear"]
    flags += ["--grad-accum-steps", "4", "--reentrant"]  # gradient_accumulation_steps; axolotl's default
    code, out, _ = run(capsys, "estimate", "meta-llama/Meta-Llama-3-8B", *flags, "--json")
    assert json.loads(out)["peak_allocated_bytes"] == imported["peak_allocated_bytes"]
    assert imported["recipe"]["formats"][0]["format"] == "axolotl"


def test_flags_override_the_config_and_the_text_report_lists_what_is_not_modelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(EXAMPLES / "axolotl-llama3-qlora.yml")
    code, out, _ = run(capsys, "estimate", "meta-llama/Meta-Llama-3-8B", "--from", config, "--seq-len", "1024")
    assert code == 0
    assert "seq 1024 x batch 2" in out
    assert "not modelled: axolotl-llama3-qlora.yml: bf16='auto'" in out  # bf16 only where the GPU has it


def test_a_missing_config_or_model_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "estimate", "--from", str(tmp_path / "nope.yml"))
    assert code == 2 and "nope.yml" in err and err.count("\n") == 1
    bnb = str(EXAMPLES / "bnb-nf4.json")
    code, _, err = run(capsys, "estimate", "--from", bnb)
    assert code == 2 and "name a model" in err


def test_moe_with_the_default_plan_answers_the_nearest_accepted_plan_unless_strict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "estimate", "mistralai/Mixtral-8x7B-v0.1")
    assert code == 0
    assert out.splitlines()[2].startswith("changed dropout: 0.05 -> 0 (the stack refuses")
    code, _, err = run(capsys, "estimate", "mistralai/Mixtral-8x7B-v0.1", "--dropout", "0.05", "--strict")
    assert code == 2 and "PEFT cannot apply LoRA dropout" in err and "strict" in err
