"""The issue's must-show, end to end: the real `gpuplan` CLI against a local Hub stand-in via HF_ENDPOINT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub.conftest import FakeHub

ROOT = Path(__file__).resolve().parents[2]


def gpuplan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GPUPLAN_"))}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def env(fake_hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "GPUPLAN_DATA_DIR": str(tmp_path / "data"),
        "GPUPLAN_HUB_TIMEOUT": "5",
        "GPUPLAN_HUB_RETRIES": "1",
        "NO_PROXY": "*",
    }


def test_ungated_gated_unknown_and_offline(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.add("acme/tiny-llama")
    fake_hub.add("acme/gated-llama", token="hf_right")

    ok = gpuplan(env, "estimate", "acme/tiny-llama", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["model"]["source"] == "hub" and data["model"]["revision"]
    assert data["params"]["base"] > 0 and data["peak_allocated_bytes"] > 0
    # the stand-in's model info claims 123,456 parameters: the estimate says the two counts disagree
    assert any("the Hub reports 123,456 parameters" in note for note in data["notes"])

    gated = gpuplan(env, "estimate", "acme/gated-llama")
    assert gated.returncode != 0
    assert "gated" in gated.stderr and "HF_TOKEN" in gated.stderr and len(gated.stderr.strip().splitlines()) == 1

    wrong = gpuplan({**env, "HF_TOKEN": "hf_wrong"}, "estimate", "acme/gated-llama")
    assert wrong.returncode != 0 and "token rejected" in wrong.stderr

    with_token = gpuplan({**env, "HF_TOKEN": "hf_right"}, "estimate", "acme/gated-llama", "--json")
    assert with_token.returncode == 0, with_token.stderr

    unknown = gpuplan(env, "estimate", "acme/no-such-model")
    assert unknown.returncode != 0 and "not found" in unknown.stderr

    fetched = gpuplan(env, "fetch", "acme/tiny-llama")
    assert fetched.returncode == 0 and "LlamaForCausalLM" in fetched.stdout

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    requests_before = fake_hub.count()
    cached = gpuplan(offline, "estimate", "acme/tiny-llama", "--json")
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout)["params"] == data["params"]
    uncached = gpuplan(offline, "estimate", "acme/never-fetched")
    assert uncached.returncode != 0 and "HF_HUB_OFFLINE=1" in uncached.stderr
    assert fake_hub.count() == requests_before  # offline never asked the Hub


def test_bad_ids_are_refused_before_any_request(fake_hub: FakeHub, env: dict[str, str]) -> None:
    for bad in ("https://evil.example/x/y", "a/b/../c", "org/na me", "org/name\n"):
        out = gpuplan(env, "estimate", bad)
        assert out.returncode == 2, (bad, out.stderr)
    assert fake_hub.count() == 0


def test_web_resolution_never_reads_local_files(tmp_path: Path) -> None:
    import asyncio

    from app.errors import ModelIdError
    from app.resolver import resolve_model
    from app.settings import Settings

    secret = tmp_path / "config.json"
    secret.write_text("{}")
    for name in (str(secret), "../../etc/passwd", "./config.json"):
        with pytest.raises(ModelIdError):
            asyncio.run(resolve_model(name, Settings(hf_endpoint="http://127.0.0.1:9"), allow_files=False))
