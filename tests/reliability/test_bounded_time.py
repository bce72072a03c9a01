"""Issue 12, "bounded time and fair sharing": one deadline per request, Hub retries inside it, inventory builds in
a bounded pool with a timeout and size caps, and a readiness endpoint that reports saturation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.catalog import load_spec
from app.core.spec import ModelSpec
from app.errors import Overloaded
from app.inventory.pool import BuildPool
from tests.hub.conftest import LLAMA_CONFIG, FakeHub
from tests.webapp import assert_problem

ESTIMATE = "/api/v1/estimate"


def timed(client: TestClient, path: str, **params: Any) -> tuple[Any, float]:
    start = time.monotonic()
    response = client.get(path, params=params)
    return response, time.monotonic() - start


@pytest.fixture
def hub_app(make_app: Callable[..., FastAPI], fake_hub: FakeHub) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        values = {"hub_retries": 3, "hub_timeout": 2.0, "request_deadline": 4.0, **overrides}
        return make_app(hub_url=fake_hub.url, **values)

    return make


def test_model_info_429_with_an_hour_retry_after_costs_nothing(
    hub_app: Callable[..., FastAPI], fake_hub: FakeHub
) -> None:
    fake_hub.add("acme/busy-info", info_status=429, retry_after="3600")
    with TestClient(hub_app(request_deadline=20.0)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/busy-info")
    assert response.status_code == 200 and seconds < 10  # (the first build in a session starts the forkserver)
    assert fake_hub.info_count("acme/busy-info") == 1  # gave up at once instead of sleeping 30 s per retry


def test_config_429_with_an_hour_retry_after_answers_503_at_once(
    hub_app: Callable[..., FastAPI], fake_hub: FakeHub
) -> None:
    fake_hub.add("acme/busy", status=429, retry_after="3600")
    with TestClient(hub_app()) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/busy")
    body = assert_problem(response, 503, "hub-unavailable")
    assert "asked to retry after 3600 s" in body["detail"] and seconds < 2


def test_a_retry_after_beyond_the_time_left_gives_up(hub_app: Callable[..., FastAPI], fake_hub: FakeHub) -> None:
    fake_hub.add("acme/busy", status=503, retry_after="2")
    with TestClient(hub_app(request_deadline=3.0)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/busy")
    body = assert_problem(response, 503, "hub-unavailable")
    assert "left of the request deadline (GPUPLAN_REQUEST_DEADLINE)" in body["detail"]
    assert seconds < 3.0 and fake_hub.resolve_count("acme/busy") == 2


def test_a_slow_model_info_is_given_up_within_its_share(hub_app: Callable[..., FastAPI], fake_hub: FakeHub) -> None:
    fake_hub.add("acme/slow-info", info_delay=60)
    with TestClient(hub_app(request_deadline=8.0, hub_timeout=30.0)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/slow-info")
    # the info may take half the time left (4 s); the config and the inventory get the rest
    assert response.status_code == 200 and 3.5 < seconds < 8
    assert "the Hub reports" not in response.text  # no safetensors cross-check note: the info never came


def test_a_dripping_config_answers_within_the_deadline(hub_app: Callable[..., FastAPI], fake_hub: FakeHub) -> None:
    fake_hub.add("acme/drip", drip=0.2)
    with TestClient(hub_app(request_deadline=3.0, hub_timeout=1.0)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/drip")
    body = assert_problem(response, response.status_code)
    assert response.status_code in (503, 504) and seconds < 3.5 and "config.json of acme/drip" in body["detail"]


def test_a_slow_config_answers_within_the_deadline(hub_app: Callable[..., FastAPI], fake_hub: FakeHub) -> None:
    fake_hub.add("acme/slow", delay=60)
    with TestClient(hub_app(request_deadline=3.0, hub_timeout=10.0)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/slow")
    assert response.status_code in (503, 504) and seconds < 3.5
    body = assert_problem(response, response.status_code)
    assert "request deadline" in body["detail"] and "config.json of acme/slow" in body["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_hidden_layers", 1024), ("num_hidden_layers", 4096), ("hidden_size", 65_536), ("vocab_size", 10**7)],
)
def test_configs_beyond_the_size_caps_are_422_at_once(
    hub_app: Callable[..., FastAPI], fake_hub: FakeHub, field: str, value: int
) -> None:
    fake_hub.add("acme/huge", config={**LLAMA_CONFIG, field: value})
    with TestClient(hub_app()) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/huge")
    body = assert_problem(response, 422, "malformed-config")
    assert f"{field}={value}" in body["detail"] and "cap" in body["detail"] and seconds < 2


def test_the_catalog_fits_the_caps() -> None:
    from app import catalog
    from app.inventory.builder import _check_values

    for model_id in catalog.catalog_ids():
        entry = catalog.load_entry(model_id)
        assert entry is not None
        _check_values(entry.effective_config)


def test_a_build_past_its_timeout_is_killed_and_answered_422(
    hub_app: Callable[..., FastAPI], fake_hub: FakeHub
) -> None:
    fake_hub.add("acme/odd", config={**LLAMA_CONFIG, "hidden_size": 72})  # a config no test has built yet
    with TestClient(hub_app(inventory_build_timeout=0.001)) as client:
        response, seconds = timed(client, ESTIMATE, model="acme/odd")
    body = assert_problem(response, 422, "malformed-config")
    assert "took longer than 0.001 s" in body["detail"] and seconds < 3


def slow_runner(seconds: float) -> Callable[[dict[str, Any], float], ModelSpec]:
    def run(config: dict[str, Any], timeout_s: float) -> ModelSpec:
        time.sleep(seconds)
        spec = load_spec("meta-llama/Llama-3.2-1B")
        assert spec is not None
        return spec

    return run


def test_the_pool_caps_builds_queues_a_few_and_refuses_the_rest() -> None:
    async def scenario() -> None:
        pool = BuildPool(workers=1, queue=1, timeout_s=10, runner=slow_runner(0.3))
        first = asyncio.create_task(pool.spec({"n": 1}, model_id="a", source="hub", cache_dir=None))
        same = asyncio.create_task(pool.spec({"n": 1}, model_id="a2", source="hub", cache_dir=None))
        queued = asyncio.create_task(pool.spec({"n": 2}, model_id="b", source="hub", cache_dir=None))
        await asyncio.sleep(0.1)
        stats = pool.stats()
        assert (stats.running, stats.waiting, stats.saturated) == (1, 1, True)
        with pytest.raises(Overloaded, match="every inventory build slot is busy"):
            await pool.spec({"n": 3}, model_id="c", source="hub", cache_dir=None)
        results = await asyncio.gather(first, same, queued)
        assert [r.id for r in results] == ["a", "a2", "b"]  # a2 shared a's build
        assert pool.stats().running == 0 and not pool.stats().saturated
        await pool.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_readyz_reports_saturation_while_a_build_runs(hub_app: Callable[..., FastAPI], fake_hub: FakeHub) -> None:
    fake_hub.add("acme/tiny", config={**LLAMA_CONFIG, "vocab_size": 1001})  # not built (cached) by another test
    app = hub_app(request_deadline=10.0)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        pool = BuildPool(workers=1, queue=0, timeout_s=10, runner=slow_runner(1.5))
        app.state.builds = app.state.planner.builds = pool
        worker = threading.Thread(target=client.get, args=(ESTIMATE,), kwargs={"params": {"model": "acme/tiny"}})
        worker.start()
        deadline = time.monotonic() + 5
        while pool.stats().running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = assert_problem(client.get("/readyz"), 503, "overloaded")
        assert "saturated" in busy["detail"]
        # meanwhile catalog estimates are not held up by the build
        response, seconds = timed(client, ESTIMATE, model="meta-llama/Llama-3.1-8B", rank=7)
        assert response.status_code == 200 and seconds < 1.0
        worker.join(timeout=10)
        assert client.get("/readyz").status_code == 200


def test_past_the_deadline_a_request_answers_504_naming_what_it_waited_for(
    hub_app: Callable[..., FastAPI], fake_hub: FakeHub
) -> None:
    fake_hub.add("acme/tiny", config={**LLAMA_CONFIG, "vocab_size": 1002})
    app = hub_app(request_deadline=1.0)
    with TestClient(app) as client:
        app.state.builds = app.state.planner.builds = BuildPool(1, 4, 10, runner=slow_runner(3))
        response, seconds = timed(client, ESTIMATE, model="acme/tiny", rank=9)
        body = assert_problem(response, 504, "deadline-exceeded")
        assert "the inventory build of acme/tiny" in body["detail"] and seconds < 1.5
        page, _ = timed(client, "/plan", model="acme/tiny")
        assert page.status_code == 504 and page.headers["content-type"].startswith("text/html")


def _planner() -> Any:
    from app.service import NoCounts, Planner
    from app.settings import Settings

    return Planner(Settings(), hub=None, metrics=NoCounts())


def test_a_models_cheap_uncached_plans_run_on_the_event_loop_and_its_first_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker-thread hand-over costs more than a cheap plan: after a model's first uncached plan (a thread)
    showed it cheap, its others run inline; one that took longer than INLINE_PLAN_S sends the next to a thread."""
    import app.service as service
    from app.core.plan import TrainingPlan

    hops: list[int] = []
    real = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any) -> Any:
        hops.append(threading.get_ident())
        return await real(func, *args)

    monkeypatch.setattr(service.asyncio, "to_thread", counting)
    planner, model = _planner(), load_spec("meta-llama/Llama-2-7b-hf")
    assert model is not None

    async def plans(*ranks: int) -> None:
        for rank in ranks:
            planned = await planner.plan_async(model, TrainingPlan(rank=rank))
            assert planned.estimate.plan.rank == rank

    asyncio.run(plans(8, 9, 10))
    assert len(hops) == 1
    monkeypatch.setattr(service, "INLINE_PLAN_S", 0.0)  # every plan now "took too long"
    asyncio.run(plans(11, 12))
    assert len(hops) == 3
    asyncio.run(plans(11))  # a cache hit needs no thread either way
    assert len(hops) == 3
