"""The command line's time and cost: --train-tokens/--epochs, the ranked options, and the gpus table's facts."""

from __future__ import annotations

import json

import pytest

from app.cli import main, token_count


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("100M", 100_000_000), ("2.5B", 2_500_000_000), ("1e9", 10**9), ("500k", 500_000), ("1_000", 1000)],
)
def test_token_counts(text: str, tokens: int) -> None:
    assert token_count(text) == tokens


def test_the_table_ranks_options_by_cost_with_dated_prices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--train-tokens", "10M", "--epochs", "3")
    assert code == 0
    lines = out.splitlines()
    recommended = next(line for line in lines if line.startswith("recommended: 1 x "))
    assert "(as of 20" in recommended and "$" in recommended
    assert any(line.startswith("fastest: ") for line in lines)
    assert any(
        "30,000,000 training tokens" not in line and "10,000,000 training tokens x 3 epochs" in line for line in lines
    )
    t4 = next(line for line in lines if line.startswith("T4 "))
    assert "cannot run: no bf16 (use fp16, or a GPU from Ampere on); with dtype=fp16 it fits" in t4


def test_json_carries_the_run_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--train-tokens", "1M", "--json")
    rec = json.loads(out)["recommendations"]
    assert code == 0 and rec["time_model"]["train_tokens"] == 1_000_000 and rec["options"]


def test_bad_run_sizes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--train-tokens", "lots")
    assert code == 2 and "not a token count" in err
    code, _, err = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--epochs", "0")
    assert code == 2 and "--epochs" in err and len(err.strip().splitlines()) == 1


def test_gpus_lists_the_facts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpus")
    t4 = next(line for line in out.splitlines() if line.startswith("T4 "))
    assert code == 0 and "Turing" in t4 and " 7.5 " in t4 and " no " in t4
    code, out, _ = run(capsys, "gpus", "--json")
    h100 = next(g for g in json.loads(out) if g["name"] == "H100 80GB")
    assert h100["flash_attention_3"] and h100["dense_16bit_tflops"] == 989.4 and h100["sources"]
