"""`gpuplan compare`: --plan words or a --file of plans, the same numbers as the API, one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from app.cli import main
from tests.compare.helpers import CLI_PLANS, GPUS, MODEL, PLAN_FIELDS, expected, headline_texts, needs_pdf


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _plan_args(plans: list[str]) -> list[str]:
    return [arg for plan in plans for arg in ("--plan", plan)]


def test_the_table_has_a_headline_per_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compare", *_plan_args(CLI_PLANS))
    assert code == 0, err
    lines = out.splitlines()
    for i in range(3):
        assert lines[i].startswith(f"{i + 1}. {MODEL}: ") and f"× {GPUS[i]}" in lines[i]
        assert all(fragment in lines[i] for fragment in headline_texts(i)), lines[i]
    assert any(line.startswith("permalink: /compare?plan=") for line in lines)


def test_json_from_a_yaml_file_is_the_apis_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plans = [{"model": MODEL, **fields, "gpu": gpu} for fields, gpu in zip(PLAN_FIELDS, GPUS, strict=True)]
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump({"plans": plans, "train_tokens": 200_000_000}))
    code, out, err = run(capsys, "compare", "--file", str(path), "--json")
    assert code == 0, err
    body = json.loads(out)
    assert [p["device_bytes"] for p in body["plans"]] == [expected(i)[0] for i in range(3)]
    assert body["run"]["train_tokens"] == 200_000_000
    assert "train_tokens=200000000" in body["permalink"]


def test_markdown_and_svg_to_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "compare", *_plan_args(CLI_PLANS[:2]), "--format", "md")
    assert code == 0 and out.startswith("# GPU memory plans compared")
    target = tmp_path / "c.svg"
    code, _, err = run(capsys, "compare", *_plan_args(CLI_PLANS[:2]), "--format", "svg", "-o", str(target))
    assert code == 0 and target.read_text().count('class="plan"') == 2 and "wrote" in err


@needs_pdf
def test_pdf_needs_an_output_file_and_writes_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "compare", *_plan_args(CLI_PLANS[:2]), "--format", "pdf")
    assert code == 2 and "--output" in err
    target = tmp_path / "c.pdf"
    code, _, err = run(capsys, "compare", *_plan_args(CLI_PLANS[:2]), "--format", "pdf", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes().startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("plans", "fragment"),
    [
        ([CLI_PLANS[0], f"model={MODEL} rank=0"], "2nd plan: rank: Input should be greater than or equal to 1"),
        ([CLI_PLANS[0], f"model={MODEL} gpu=RTX 9999"], "2nd plan: gpu: unknown GPU tier 'RTX 9999'"),
        ([CLI_PLANS[0]], "give 2 to 6 plans to compare"),
        ([CLI_PLANS[0]] * 7, "got 7"),
        ([CLI_PLANS[0], "lora"], "2nd plan: cannot read 'lora': write each field as name=value"),
    ],
)
def test_bad_plans_give_one_line_naming_the_plan(
    capsys: pytest.CaptureFixture[str], plans: list[str], fragment: str
) -> None:
    code, out, err = run(capsys, "compare", *_plan_args(plans))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_a_bad_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    path.write_text('{"plans": 3}')
    code, _, err = run(capsys, "compare", "--file", str(path))
    assert code == 2 and "give a list of plans" in err
