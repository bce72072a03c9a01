"""The command line: output shapes, one-line errors with exit code 2, and no torch for catalog models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_has_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "estimate", "meta-llama/Llama-2-7b-hf", "--json", "--rank", "8", "--targets", "q_proj,v_proj"
    )
    assert code == 0
    data = json.loads(out)
    assert {
        "model",
        "plan",
        "params",
        "breakdown",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "device_bytes",
        "recommendations",
    } <= data.keys()
    assert data["params"] == {
        "base": 6_738_415_616,
        "trainable": 4_194_304,
        "trainable_pct": pytest.approx(0.0622, abs=1e-4),
    }
    assert all({"term", "bytes", "note"} <= t.keys() for t in data["breakdown"])
    assert data["peak_allocated_bytes"] == sum(t["bytes"] for t in data["breakdown"] if t["counted"] == "allocated")


def test_estimate_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "estimate", "Qwen/Qwen2.5-7B", "--method", "lora", "--no-gradient-checkpointing")
    assert code == 0
    assert "peak allocated" in out and "recommended:" in out and "base_weight_bytes" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rank", "0"], "--rank"),
        (["--rank", "abc"], "invalid int value"),
        (["--method", "qlora", "--quant", "none"], "qlora needs a quantized base"),
        (["--optimizer", "lion"], "invalid choice"),
        (["--targets", "nope_proj"], "none of the targets"),
        (["--seq-len", "2000000"], "--seq-len"),
        (["--offload"], "offload needs sharding"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    code, _, err = run(capsys, "estimate", "meta-llama/Llama-2-7b-hf", *args)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_unknown_model_type_in_a_local_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "definitely_not_a_model", "hidden_size": 8}))
    code, _, err = run(capsys, "estimate", str(cfg))
    assert code == 1 and "not known to this transformers version" in err and "Traceback" not in err
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": -5}))
    code, _, err = run(capsys, "estimate", str(cfg))
    assert code == 1 and "hidden_size" in err
    cfg.write_text("{not json")
    code, _, err = run(capsys, "estimate", str(cfg))
    assert code == 1 and "not valid JSON" in err
    code, _, err = run(capsys, "estimate", str(tmp_path / "missing.json"))
    assert code == 2 and "no config file" in err


def test_local_config_estimates_and_is_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("GPUPLAN_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "model_type": "mistral",
                "hidden_size": 512,
                "intermediate_size": 1024,
                "num_hidden_layers": 3,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "vocab_size": 1000,
            }
        )
    )
    try:
        code, out, _ = run(capsys, "estimate", str(cfg), "--json")
        assert code == 0 and json.loads(out)["model"]["model_type"] == "mistral"
        assert len(list((tmp_path / "data" / "inventory").glob("*.json"))) == 1
    finally:
        get_settings.cache_clear()


def test_models_and_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and len(json.loads(out)) >= 50
    code, out, _ = run(capsys, "models", "--family", "gemma 3", "--sort", "params")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["id", "family", "released"]
    assert [line.split()[0] for line in lines[1:]] == [
        "google/gemma-3-1b-it",
        "google/gemma-3-4b-it",
        "google/gemma-3-12b-it",
        "google/gemma-3-27b-it",
    ]
    code, out, _ = run(capsys, "models", "--moe", "--since", "2025-08", "--json")
    assert code == 0 and {r["id"] for r in json.loads(out)} == {"openai/gpt-oss-20b", "openai/gpt-oss-120b"}
    code, _, err = run(capsys, "models", "--since", "2025")
    assert code == 2 and "--since: give a month as YYYY-MM" in err
    code, out, _ = run(capsys, "gpus", "--json")
    names = {g["name"] for g in json.loads(out)}
    assert code == 0 and {"RTX 4090", "A100 80GB", "H100 80GB", "H200", "B200", "MI300X", "T4"} <= names


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_imports_only_stdlib_and_pydantic() -> None:
    mods = _modules_after("import app.core.estimate, app.core.gpus, app.core.plan")
    assert not {"torch", "transformers", "fastapi", "httpx", "sqlalchemy", "jinja2", "peft"} & mods


def test_cli_estimate_of_a_catalog_model_never_imports_torch() -> None:
    mods = _modules_after("from app.cli import main\nmain(['estimate', 'meta-llama/Llama-3.1-8B', '--json'])")
    assert "torch" not in mods and "transformers" not in mods
