"""The config cache, offline mode, one fetch for concurrent callers, and the client's lifecycle."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticSerializationError

from app.errors import HubUnavailable, OfflineMiss
from app.hub.cache import CacheEntry, ConfigCache
from app.hub.client import FetchedConfig, HubClient, fetch_config_sync
from app.hub.ids import parse_model_ref
from app.settings import Settings

SHA = "0123456789abcdef0123456789abcdef01234567"


async def _fetch(settings: Settings, text: str, **kwargs: Any) -> FetchedConfig:
    async with HubClient(settings, **kwargs) as client:
        return await client.fetch_config(parse_model_ref(text))


def fetch(settings: Settings, text: str, **kwargs: Any) -> FetchedConfig:
    return asyncio.run(_fetch(settings, text, **kwargs))


def _entry(**overrides: Any) -> CacheEntry:
    values: dict[str, Any] = {
        "repo_id": "acme/tiny",
        "revision": "main",
        "sha": SHA,
        "config": {"model_type": "llama"},
        "safetensors_total": 10,
        "fetched_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    return CacheEntry(**(values | overrides))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- cache ---------------------------------------------------------------------------------------


def test_online_fetch_writes_the_cache_and_it_reads_back(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", sha=SHA, safetensors_total=77)
    settings = make_settings()
    fetched = fetch(settings, "acme/tiny")
    root = settings.hf_home / "hub" / "gpuplan-configs"
    assert _files(root) == ["models--acme--tiny/main.json"]
    stored = json.loads((root / "models--acme--tiny" / "main.json").read_text())
    assert stored == {
        "format": 1,
        "repo_id": "acme/tiny",
        "revision": "main",
        "sha": SHA,
        "config": fetched.config,
        "safetensors_total": 77,
        "fetched_at": fetched.fetched_at.isoformat().replace("+00:00", "Z"),
    }
    assert ConfigCache(root).get("acme/tiny", "main") == CacheEntry.model_validate(stored)


def test_put_writes_atomically_and_get_round_trips(tmp_path) -> None:
    cache = ConfigCache(tmp_path / "c")
    path = cache.put(_entry())
    assert path == tmp_path / "c" / "models--acme--tiny" / "main.json"
    assert cache.get("acme/tiny", "main") == _entry()
    cache.put(_entry(sha=None, safetensors_total=None))  # replaces in place
    assert cache.get("acme/tiny", "main") == _entry(sha=None, safetensors_total=None)
    assert _files(tmp_path / "c") == ["models--acme--tiny/main.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    cache = ConfigCache(tmp_path)
    cache.put(_entry())
    with pytest.raises(PydanticSerializationError):
        cache.put(_entry(config={"model_type": object()}))
    assert cache.get("acme/tiny", "main") == _entry()
    cache.path_for("acme/tiny", "v2").mkdir()  # os.replace onto a folder fails after the temp file exists
    with pytest.raises(IsADirectoryError):
        cache.put(_entry(revision="v2"))
    assert _files(tmp_path) == ["models--acme--tiny/main.json"]


def test_cache_file_names_are_safe(tmp_path) -> None:
    cache = ConfigCache(tmp_path)
    assert cache.path_for("acme/tiny", "refs/pr/1") == tmp_path / "models--acme--tiny" / "refs%2Fpr%2F1.json"
    long = cache.path_for("acme/tiny", "r/" * 99 + "r")
    assert long.parent == tmp_path / "models--acme--tiny"
    assert long.name.startswith("sha256-")
    assert len(long.name) < 100
    assert cache.path_for("acme/tiny", ".hidden").name.startswith("sha256-")


def test_damaged_or_foreign_cache_files_are_misses(tmp_path) -> None:
    cache = ConfigCache(tmp_path)
    path = cache.put(_entry())
    path.write_text("{not json")
    assert cache.get("acme/tiny", "main") is None
    path.write_text(_entry(repo_id="other/repo").model_dump_json())
    assert cache.get("acme/tiny", "main") is None
    assert cache.get("acme/absent", "main") is None


def test_an_unwritable_cache_does_not_fail_the_fetch(fake_hub, make_settings, tmp_path) -> None:
    fake_hub.add("acme/tiny")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert fetch(make_settings(hf_home=blocker), "acme/tiny").from_cache is False


# --- offline -------------------------------------------------------------------------------------


def test_offline_serves_a_cached_id_without_any_request(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", sha=SHA, safetensors_total=5)
    online = fetch(make_settings(), "acme/tiny")
    requests_before = fake_hub.count()
    offline_settings = make_settings(hf_hub_offline=True)
    for text in ("acme/tiny", "acme/tiny@main"):
        offline = fetch(offline_settings, text)
        assert offline.from_cache is True
        assert offline.model_dump(exclude={"from_cache", "revision"}) == online.model_dump(
            exclude={"from_cache", "revision"}
        )
    assert fake_hub.count() == requests_before


def test_offline_refuses_an_uncached_id(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny")
    with pytest.raises(OfflineMiss) as caught:
        fetch(make_settings(hf_hub_offline=True), "acme/tiny@v1")
    assert caught.value.detail == (
        "HF_HUB_OFFLINE=1 and acme/tiny@v1 is not in the cache: run `gpuplan fetch acme/tiny@v1` while online, "
        "or unset HF_HUB_OFFLINE"
    )
    assert caught.value.status == 404
    assert fake_hub.count() == 0


def test_online_fetch_always_refreshes_and_never_serves_stale_data(fake_hub, make_settings, sleeps) -> None:
    repo = fake_hub.add("acme/tiny", config={"model_type": "llama", "v": 1}, sha=SHA)
    settings = make_settings(hub_retries=1)
    fetch(settings, "acme/tiny")
    repo.config = {"model_type": "llama", "v": 2}
    assert fetch(settings, "acme/tiny").config["v"] == 2
    assert fake_hub.resolve_count("acme/tiny") == 2
    repo.status = 503
    with pytest.raises(HubUnavailable) as caught:
        fetch(settings, "acme/tiny", sleep=sleeps)
    detail = caught.value.detail
    assert detail.startswith(f"the Hub ({fake_hub.url}) did not give config.json of acme/tiny after 2 attempt(s)")
    assert f"(a cached copy at sha {SHA}, fetched {datetime.now(UTC):%Y-%m-%d} " in detail
    assert detail.endswith(" UTC, exists: set HF_HUB_OFFLINE=1 to use it)")
    assert isinstance(caught.value.__cause__, HubUnavailable)


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_fetches_of_one_id_make_one_request(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", delay=0.3, revisions=("main", "v1"))

    async def scenario() -> list[FetchedConfig]:
        async with HubClient(make_settings()) as client:
            same = [client.fetch_config(parse_model_ref("acme/tiny")) for _ in range(8)]
            other = client.fetch_config(parse_model_ref("acme/tiny@v1"))
            results = await asyncio.gather(*same, other)
            results.append(await client.fetch_config(parse_model_ref("acme/tiny")))  # later: a fresh fetch
            return results

    results = asyncio.run(scenario())
    assert all(r == results[0] for r in results[1:8])
    assert results[8].revision == "v1"
    assert fake_hub.count("/acme/tiny/resolve/main/") == 2
    assert fake_hub.count("/acme/tiny/resolve/v1/") == 1
    assert fake_hub.count("/api/models/acme/tiny?") == 2


def test_concurrent_callers_share_one_failure_and_one_cancel_spares_the_rest(fake_hub, make_settings) -> None:
    fake_hub.add("acme/down", status=500, delay=0.2)
    fake_hub.add("acme/tiny", delay=0.2)

    async def scenario() -> tuple[list[BaseException | FetchedConfig], FetchedConfig]:
        async with HubClient(make_settings(hub_retries=0)) as client:
            down = parse_model_ref("acme/down")
            failures = await asyncio.gather(*(client.fetch_config(down) for _ in range(3)), return_exceptions=True)
            ref = parse_model_ref("acme/tiny")
            quitter = asyncio.create_task(client.fetch_config(ref))
            stayer = asyncio.create_task(client.fetch_config(ref))
            await asyncio.sleep(0.05)
            quitter.cancel()
            return failures, await stayer

    failures, kept = asyncio.run(scenario())
    assert all(isinstance(f, HubUnavailable) for f in failures)
    assert fake_hub.resolve_count("acme/down") == 1
    assert kept.config["model_type"] == "llama"
    assert fake_hub.resolve_count("acme/tiny") == 1


# --- lifecycle -----------------------------------------------------------------------------------


def test_construction_does_nothing_and_closing_an_unused_client_is_fine(make_settings) -> None:
    settings = make_settings()
    client = HubClient(settings)
    assert not settings.hf_home.exists()
    asyncio.run(client.aclose())
    asyncio.run(client.aclose())


def test_aclose_cancels_a_fetch_nobody_awaits(fake_hub, make_settings) -> None:
    fake_hub.add("acme/slow", delay=30)

    async def scenario() -> tuple[asyncio.Task[object], list[asyncio.Task[object]], float]:
        client = HubClient(make_settings())
        waiter = asyncio.create_task(client.fetch_config(parse_model_ref("acme/slow")))
        for _ in range(500):  # until the request is in flight (at most 5 s)
            if fake_hub.resolve_count("acme/slow"):
                break
            await asyncio.sleep(0.01)
        waiter.cancel()
        started = time.monotonic()
        await client.aclose()
        took = time.monotonic() - started
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        return waiter, pending, took

    waiter, pending, took = asyncio.run(scenario())
    assert waiter.cancelled()
    assert pending == []  # the shared fetch behind the waiter was cancelled too, not left running
    assert took < 5  # aclose did not wait out the Hub's 30 s delay
    assert fake_hub.resolve_count("acme/slow") == 1  # the request really was in flight


def test_fetch_config_sync(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", sha=SHA)
    fetched = fetch_config_sync(make_settings(), parse_model_ref("acme/tiny"))
    assert (fetched.sha, fetched.from_cache) == (SHA, False)


def test_importing_the_hub_edge_is_cheap() -> None:
    code = (
        "import sys, app.hub.client, app.hub.remote_code, app.hub.ids, app.hub.cache; "
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
