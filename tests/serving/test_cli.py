"""`gpuplan inference`: the table, --json, generated flags, and bad flags as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from tests.configs import TINY_LLAMA


def test_the_table_names_every_term_and_the_vllm_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inference", "meta-llama/Llama-3.1-8B", "--context", "8192"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["kv_cache_bytes", "1,073,741,824"] for line in out.splitlines())
    assert "[first-principles]" in out and "modelled: vLLM v0.33.0" in out and "recommended:" in out


def test_json_carries_the_plan_from_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inference", "google/gemma-2-9b", "--engine", "transformers", "--context", "8192", "--concurrency", "2"]
    argv += ["--kv-dtype", "fp8", "--adapters", "2", "--adapter-rank", "32", "--tp", "2", "--json"]
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert (
        body["plan"] | {"engine": "transformers", "context": 8192, "concurrency": 2, "kv_dtype": "fp8"} == body["plan"]
    )
    assert body["plan"]["adapters"] == 2 and body["plan"]["adapter_rank"] == 32 and body["plan"]["tp"] == 2
    assert any(t["term"] == "lora_adapter_bytes" for t in body["breakdown"])


def test_bad_flags_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inference", "meta-llama/Llama-3.1-8B", "--context", "0", "--block-size", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--context" in err and "--block-size" in err
    assert main(["inference", "meta-llama/Llama-3.1-8B", "--engine", "tgi"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["inference", "meta-llama/Llama-3.1-8B", "--tp", "3"]) == 2
    assert "32 attention heads" in capsys.readouterr().err


def test_every_serving_field_has_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from app.serving.plan import ServingPlan

    assert main(["inference", "--help"]) == 0
    helptext = capsys.readouterr().out
    for name in ServingPlan.model_fields:
        assert "--" + name.replace("_", "-") in helptext


def test_a_local_config_gives_its_attention_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**TINY_LLAMA, "model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 64}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["inference", str(path), "--engine", "transformers", "--context", "512", "--json"]) == 0
    layout = json.loads(capsys.readouterr().out)["layout"]
    assert layout["kinds"] == ["sliding", "sliding"] and layout["vllm_kinds"] == ["full", "full"]
    assert layout["window"] == 64 and layout["source"] == "config.json"
