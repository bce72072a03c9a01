"""The CLI's verdict line, the no-count-holds-it answer, the method's optimizer default and --safe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.settings import get_settings

LLAMA = "meta-llama/Llama-2-7b-hf"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GPUPLAN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("GPUPLAN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_a_plan_no_count_holds_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "estimate", LLAMA, "--seq-len", "1048576", "--batch-size", "4096")
    assert code == 0
    assert "verdict: DOES NOT FIT: Does not fit: no GPU count of any tier up to 32 holds it under sharding none" in out
    code, out = run(capsys, "estimate", LLAMA, "--seq-len", "1048576", "--batch-size", "4096", "--json")
    verdict = json.loads(out)["verdict"]
    assert verdict["state"] == "does_not_fit" and verdict["gpu"] is None and verdict["max_gpus"] == 32


def test_the_verdict_line_and_tiers_wording(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "estimate", LLAMA)
    assert code == 0 and "verdict: FITS WITH THE HEADROOM KEPT FREE: Fits on 1 ×" in out
    rtx3060 = next(line for line in out.splitlines() if line.startswith("RTX 3060 "))
    assert "left after the 10% reserve" in rtx3060 or "over budget by" in rtx3060


def test_full_fine_tuning_defaults_to_adamw(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "estimate", LLAMA, "--method", "full", "--json")
    assert json.loads(out)["plan"]["optimizer"] == "adamw"
    _, out = run(capsys, "estimate", LLAMA, "--method", "full", "--optimizer", "sgd", "--json")
    assert json.loads(out)["plan"]["optimizer"] == "sgd"


def test_safe_judges_on_the_band_from_the_seeded_store(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out = run(capsys, "estimate", LLAMA, "--safe", "--json")
    assert code == 0
    data = json.loads(out)
    band = data["uncertainty"]["band"]
    assert band is not None and band["source"] == "cpu" and band["runs"] >= 3  # the shipped CPU matrix
    assert data["recommendations"]["safety_factor"] == pytest.approx(
        max(1.0, band["high_bytes"] / data["device_bytes"])
    )
    assert (data_dir / "gpuplan.sqlite3").exists()
    _, table = run(capsys, "estimate", LLAMA, "--safe")
    assert "likely " in table and "comparable runs, CPU reference tracker" in table
    _, plain = run(capsys, "estimate", LLAMA, "--json")
    assert json.loads(plain)["uncertainty"] is None and json.loads(plain)["safe_answer"] is False
