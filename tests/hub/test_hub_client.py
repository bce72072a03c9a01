"""HubClient against a real fake Hub on loopback: success, every error path, retries and redirects."""

from __future__ import annotations

import asyncio
import re
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.errors import GatedModel, HubError, HubUnavailable, MalformedConfig, ModelNotFound
from app.hub.client import FetchedConfig, HubClient, backoff_seconds, retry_after_seconds
from app.hub.ids import parse_model_ref
from app.settings import Settings

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
CONFIG = {"model_type": "llama", "hidden_size": 64}


async def _fetch(settings: Settings, text: str, **kwargs: Any) -> FetchedConfig:
    async with HubClient(settings, **kwargs) as client:
        return await client.fetch_config(parse_model_ref(text))


def fetch(settings: Settings, text: str, **kwargs: Any) -> FetchedConfig:
    return asyncio.run(_fetch(settings, text, **kwargs))


# --- success -------------------------------------------------------------------------------------


def test_fetch_returns_config_sha_and_safetensors_total(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", config=CONFIG, sha=SHA, safetensors_total=1234)
    before = datetime.now(UTC)
    fetched = fetch(make_settings(), "acme/tiny")
    assert fetched.model_dump(exclude={"fetched_at"}) == {
        "repo_id": "acme/tiny",
        "revision": None,
        "sha": SHA,
        "config": CONFIG,
        "safetensors_total": 1234,
        "from_cache": False,
    }
    assert before <= fetched.fetched_at <= datetime.now(UTC)
    assert [seen.path for seen in fake_hub.requests] == [
        "/acme/tiny/resolve/main/config.json",
        "/api/models/acme/tiny?expand=sha&expand=safetensors",
    ]


def test_revision_with_slashes_is_quoted_in_both_urls(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", revisions=("refs/pr/1",))
    fetched = fetch(make_settings(), "acme/tiny@refs/pr/1")
    assert fetched.revision == "refs/pr/1"
    assert [seen.path for seen in fake_hub.requests] == [
        "/acme/tiny/resolve/refs%2Fpr%2F1/config.json",
        "/api/models/acme/tiny/revision/refs%2Fpr%2F1?expand=sha&expand=safetensors",
    ]


def test_token_is_sent_as_bearer_when_set_and_not_otherwise(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny")
    fetch(make_settings(hf_token="hf_secret"), "acme/tiny")
    fetch(make_settings(), "acme/tiny")
    assert [seen.authorization for seen in fake_hub.requests] == ["Bearer hf_secret"] * 2 + [None] * 2


def test_config_with_auto_map_is_returned_not_refused(fake_hub, make_settings) -> None:
    config = {"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    fake_hub.add("acme/custom", config=config)
    assert fetch(make_settings(), "acme/custom").config == config


def test_sha_comes_from_model_info_when_the_header_is_missing(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", sha=SHA, commit_header=False)
    assert fetch(make_settings(), "acme/tiny").sha == SHA


def test_model_info_at_another_commit_drops_the_cross_check(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", sha=SHA, info_sha=OTHER_SHA, safetensors_total=99)
    fetched = fetch(make_settings(), "acme/tiny")
    assert (fetched.sha, fetched.safetensors_total) == (SHA, None)


@pytest.mark.parametrize(
    "behaviour",
    [
        {"info_status": 500},
        {"info_status": 429, "retry_after": "1"},
        {"info_body": b"<html>oops</html>"},
        {"info_body": b"[1, 2]"},
        {"info_body": b'{"sha": 5, "safetensors": {"total": "many"}}'},
        {"info_body": b'{"safetensors": {"total": true}}'},
        {"info_status": 418},
    ],
)
def test_model_info_failures_do_not_fail_the_fetch(fake_hub, make_settings, sleeps, behaviour) -> None:
    fake_hub.add("acme/tiny", sha=SHA, **behaviour)
    fetched = fetch(make_settings(), "acme/tiny", sleep=sleeps)
    assert (fetched.config["model_type"], fetched.sha, fetched.safetensors_total) == ("llama", SHA, None)


# --- HTTP errors ---------------------------------------------------------------------------------


def test_404_is_model_not_found(fake_hub, make_settings) -> None:
    with pytest.raises(ModelNotFound) as caught:
        fetch(make_settings(), "acme/missing")
    assert caught.value.detail == f"model acme/missing not found on the Hub ({fake_hub.url}): check the id"
    assert fake_hub.count() == 1  # no retry on 404


def test_unknown_revision_says_so(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny")
    with pytest.raises(ModelNotFound, match=r"^revision v9 of model acme/tiny not found on the Hub"):
        fetch(make_settings(), "acme/tiny@v9")


def test_repo_without_config_json_says_so(fake_hub, make_settings) -> None:
    fake_hub.add("acme/adapter", status=404, error_code="EntryNotFound")
    with pytest.raises(ModelNotFound, match=r"^model acme/adapter has no config.json on the Hub"):
        fetch(make_settings(), "acme/adapter")


def test_model_info_404_fails_the_fetch(fake_hub, make_settings) -> None:
    fake_hub.add("acme/tiny", info_status=404)
    with pytest.raises(ModelNotFound, match="check the id"):
        fetch(make_settings(), "acme/tiny")


def test_gated_without_token(fake_hub, make_settings) -> None:
    fake_hub.add("acme/gated", token="hf_right")
    with pytest.raises(GatedModel) as caught:
        fetch(make_settings(), "acme/gated")
    assert caught.value.detail.startswith("this model is gated: accept its license on the Hub and set HF_TOKEN")
    assert "acme/gated, HTTP 401" in caught.value.detail


def test_private_or_missing_without_token_is_401_and_says_both(fake_hub, make_settings) -> None:
    with pytest.raises(GatedModel, match="also answers 401 for private and non-existent repos"):
        fetch(make_settings(), "private/thing")


def test_gated_with_the_right_token_succeeds(fake_hub, make_settings) -> None:
    fake_hub.add("acme/gated", token="hf_right")
    assert fetch(make_settings(hf_token="hf_right"), "acme/gated").config["model_type"] == "llama"


def test_gated_with_a_wrong_token_is_token_rejected(fake_hub, make_settings) -> None:
    fake_hub.add("acme/gated", token="hf_right")
    with pytest.raises(GatedModel) as caught:
        fetch(make_settings(hf_token="hf_wrong"), "acme/gated")
    assert caught.value.detail.startswith(
        f"the Hub ({fake_hub.url}) refused HF_TOKEN for acme/gated (HTTP 403): token rejected: "
    )
    assert "hf_wrong" not in caught.value.detail


def test_unexpected_status_is_a_plain_hub_error(fake_hub, make_settings) -> None:
    fake_hub.add("acme/teapot", status=418)
    with pytest.raises(HubError) as caught:
        fetch(make_settings(), "acme/teapot")
    assert type(caught.value) is HubError
    assert caught.value.detail == f"the Hub ({fake_hub.url}) answered HTTP 418 for acme/teapot"


# --- malformed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ({"body": b"<html>not json</html>"}, "it is not valid JSON"),
        ({"body": b"\xff\xfe\x00{"}, "it is not valid JSON"),
        ({"body": b"[1, 2, 3]"}, "it is a JSON list, not an object, for acme/bad"),
        ({"body": b'"llama"'}, "it is a JSON str, not an object"),
        ({"body": b"[" * 2000 + b"]" * 2000}, "it is not valid JSON"),
        ({"body": b" " * 5000}, "it is 5000 bytes, over the 4096-byte limit (GPUPLAN_HUB_MAX_CONFIG_BYTES)"),
        ({"body": b" " * 5000, "content_length": False}, "it is more than 4096 bytes, over the 4096-byte limit"),
    ],
)
def test_malformed_config(fake_hub, make_settings, behaviour, message) -> None:
    fake_hub.add("acme/bad", **behaviour)
    with pytest.raises(MalformedConfig) as caught:
        fetch(make_settings(), "acme/bad")
    assert caught.value.detail.startswith("config.json is malformed: ")
    assert message in caught.value.detail
    assert fake_hub.count() == 1  # never retried


# --- retries -------------------------------------------------------------------------------------


def test_5xx_is_retried_with_exponential_backoff_then_unavailable(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/down", status=503)
    with pytest.raises(HubUnavailable) as caught:
        fetch(make_settings(hub_retries=3), "acme/down", sleep=sleeps)
    assert caught.value.detail == (
        f"the Hub ({fake_hub.url}) did not give config.json of acme/down after 4 attempt(s) (last: HTTP 503): "
        "try again later"
    )
    assert fake_hub.resolve_count("acme/down") == 4
    assert sleeps.waits == [0.5, 1.0, 2.0]


def test_no_retries_when_set_to_zero(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/down", status=500)
    with pytest.raises(HubUnavailable, match=r"after 1 attempt\(s\) \(last: HTTP 500\)"):
        fetch(make_settings(hub_retries=0), "acme/down", sleep=sleeps)
    assert (fake_hub.count(), sleeps.waits) == (1, [])


def test_a_transient_5xx_recovers(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/flaky", status=502, fail_times=2)
    assert fetch(make_settings(), "acme/flaky", sleep=sleeps).sha is not None
    assert fake_hub.resolve_count("acme/flaky") == 3
    assert sleeps.waits == [0.5, 1.0]


def test_429_honours_retry_after(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/busy", status=429, fail_times=2, retry_after="7")
    assert fetch(make_settings(), "acme/busy", sleep=sleeps).config["model_type"] == "llama"
    assert sleeps.waits == [7.0, 7.0]


def test_429_with_a_retry_after_beyond_the_cap_gives_up_at_once(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/busy", status=429, retry_after="3600")
    with pytest.raises(
        HubUnavailable, match=r"HTTP 429 .* asked to retry after 3600 s \(more than gpuplan waits, 30 s\)"
    ):
        fetch(make_settings(), "acme/busy", sleep=sleeps)
    assert sleeps.waits == []
    assert fake_hub.resolve_count("acme/busy") == 1


def test_read_timeout_is_retried_then_unavailable(fake_hub, make_settings, sleeps) -> None:
    fake_hub.add("acme/slow", delay=30)
    with pytest.raises(HubUnavailable, match=r"after 2 attempt\(s\) \(last: timed out after 0.2 s\)"):
        fetch(make_settings(hub_timeout=0.2, hub_retries=1), "acme/slow", sleep=sleeps)
    assert fake_hub.resolve_count("acme/slow") == 2
    assert sleeps.waits == [0.5]


def test_connection_refused_is_retried_then_unavailable(make_settings, sleeps) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(hf_endpoint=f"http://127.0.0.1:{port}", hub_retries=1)
    with pytest.raises(HubUnavailable) as raised:
        fetch(settings, "acme/tiny", sleep=sleeps)
    assert sleeps.waits == [0.5]
    # no network: say so, and the two ways to answer anyway (the cache and catalog, or the config.json itself)
    assert raised.value.detail == (
        f"the Hub (http://127.0.0.1:{port}) cannot be reached from this machine (connection failed: ConnectError, "
        "2 attempt(s)) for config.json of acme/tiny: set HF_HUB_OFFLINE=1 to answer from the Hub cache and the "
        "bundled catalog only, or give the model's config.json instead (its path on the command line, or the "
        'planner\'s "give its config.json" box)'
    )
    assert "try again later" not in raised.value.detail


def test_retry_after_parsing() -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("9999") == 9999.0  # the caller decides: beyond MAX_RETRY_WAIT_S it gives up
    assert 15.0 <= (retry_after_seconds(soon) or 0) <= 20.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert [retry_after_seconds(v) for v in (None, "", "soon", "nan")] == [None] * 4
    assert [backoff_seconds(n) for n in (0, 1, 2, 10)] == [0.5, 1.0, 2.0, 30.0]


# --- redirects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [False, True])
def test_redirect_to_its_own_host_is_followed(fake_hub, make_settings, absolute) -> None:
    fake_hub.add("acme/renamed-to", config={"model_type": "mistral"})
    location = "/acme/renamed-to/resolve/main/config.json"
    fake_hub.add("acme/renamed-from", redirect_to=fake_hub.url + location if absolute else location)
    fetched = fetch(make_settings(hf_token="hf_x"), "acme/renamed-from")
    assert fetched.config == {"model_type": "mistral"}
    assert fake_hub.resolve_count("acme/renamed-to") == 1
    assert all(seen.authorization == "Bearer hf_x" for seen in fake_hub.requests)


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("http://127.0.0.2:{port}/acme/tiny/resolve/main/config.json", "http://127.0.0.2"),
        ("https://evil.example/config.json", "https://evil.example"),
        ("//evil.example/config.json", "http://evil.example"),
        ("http://localhost:{port}/acme/tiny/resolve/main/config.json", "http://localhost"),
    ],
)
def test_redirect_to_another_host_is_refused(fake_hub, make_settings, location, host) -> None:
    port = fake_hub.url.rsplit(":", 1)[1]
    fake_hub.add("acme/tiny")
    fake_hub.add("acme/moved", redirect_to=location.format(port=port))
    with pytest.raises(HubUnavailable) as caught:
        fetch(make_settings(), "acme/moved")
    assert caught.value.detail == (
        f"refused a redirect from {fake_hub.url} to {host}: gpuplan follows redirects only to 127.0.0.1 "
        "and its subdomains"
    )
    assert fake_hub.count() == 1  # refused before any request to the other host, and not retried


def test_redirect_loop_is_cut(fake_hub, make_settings) -> None:
    fake_hub.add("acme/loop", redirect_to="/acme/loop/resolve/main/config.json")
    with pytest.raises(
        HubUnavailable, match=re.escape("redirected /acme/loop/resolve/main/config.json more than 5 times")
    ):
        fetch(make_settings(), "acme/loop")
    assert fake_hub.count() == 6


def _cdn_transport(seen: list[httpx.Request], location: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "huggingface.co" and "/resolve/" in request.url.path:
            return httpx.Response(302, headers={"location": location, "x-repo-commit": SHA})
        if request.url.path.startswith("/api/models/"):
            return httpx.Response(200, json={"sha": SHA, "safetensors": {"total": 7}})
        return httpx.Response(200, json=CONFIG, headers={"x-repo-commit": SHA})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "location",
    [
        "https://cdn-lfs.huggingface.co/repos/ab/cd/config.json?sig=1",
        "https://cas-bridge.xethub.hf.co/xet-bridge/config.json?sig=1",
    ],
)
def test_hub_redirects_to_its_cdn_are_followed_without_the_token(make_settings, location) -> None:
    seen: list[httpx.Request] = []
    settings = make_settings(hf_endpoint="https://huggingface.co", hf_token="hf_secret")
    fetched = fetch(settings, "acme/big", transport=_cdn_transport(seen, location))
    assert (fetched.config, fetched.sha, fetched.safetensors_total) == (CONFIG, SHA, 7)
    assert [(str(r.url).split("?")[0], r.headers.get("authorization")) for r in seen] == [
        ("https://huggingface.co/acme/big/resolve/main/config.json", "Bearer hf_secret"),
        (location.split("?")[0], None),
        ("https://huggingface.co/api/models/acme/big", "Bearer hf_secret"),
    ]


@pytest.mark.parametrize(
    "location",
    [
        "http://cdn-lfs.huggingface.co/config.json",  # https -> http downgrade
        "https://huggingface.co.evil.example/config.json",
        "https://evilhuggingface.co/config.json",
        "ftp://huggingface.co/config.json",
    ],
)
def test_lookalike_and_downgrade_redirects_are_refused(make_settings, location) -> None:
    seen: list[httpx.Request] = []
    settings = make_settings(hf_endpoint="https://huggingface.co")
    with pytest.raises(HubUnavailable, match=r"^refused a redirect from https://huggingface.co to "):
        fetch(settings, "acme/big", transport=_cdn_transport(seen, location))
    assert len(seen) == 1


def test_a_host_name_that_does_not_resolve_is_not_retried(make_settings, sleeps) -> None:
    """No network (or a mistyped endpoint): the resolver's "no such name" is final, so one attempt answers at once
    with the offline hint instead of ~7 s of retries (issue 17). `.invalid` never resolves (RFC 6761)."""
    settings = make_settings(hf_endpoint="http://gpuplan-hub.invalid", hub_retries=3)
    with pytest.raises(HubUnavailable) as raised:
        fetch(settings, "acme/tiny", sleep=sleeps)
    assert sleeps.waits == []
    assert "host name does not resolve here), 1 attempt(s)" in raised.value.detail
    assert "HF_HUB_OFFLINE=1" in raised.value.detail


def test_unknown_host_reads_the_cause_chain() -> None:
    from app.hub.client import unknown_host

    def chained(cause: BaseException) -> httpx.ConnectError:
        try:
            raise httpx.ConnectError("failed") from cause
        except httpx.ConnectError as exc:
            return exc

    assert unknown_host(chained(socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    assert not unknown_host(chained(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")))
    assert not unknown_host(chained(ConnectionRefusedError()))
