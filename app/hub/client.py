"""HubClient: fetch a model's config.json and model info from the Hub, with retries, checked redirects and a cache.

Policy, in short:
- Online, every fetch goes to the Hub and refreshes the on-disk cache; when the Hub stays unavailable
  after the retries, HubUnavailable is raised (stale data is never served silently; the message names
  the cached sha, if any, and how to use it with HF_HUB_OFFLINE=1).
- Offline (HF_HUB_OFFLINE=1), only the cache answers; an uncached id raises OfflineMiss.
- Concurrent fetches of the same (repo, revision) in one client share one request.
- Nothing from the repository is ever executed; a config with `auto_map` is returned as data
  (see `app.hub.remote_code.check_remote_code`).
- Inside a web request every attempt, and every wait between attempts, fits the request's deadline
  (`app.deadline`): a Retry-After longer than the time left (or than MAX_RETRY_WAIT_S) gives up at once,
  and the optional model info gets at most INFO_SHARE of the time left, so the config still has time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from app import deadline
from app.core.units import MIB
from app.errors import GatedModel, HubError, HubUnavailable, MalformedConfig, ModelNotFound, OfflineMiss
from app.hub.cache import CacheEntry, ConfigCache, cache_root
from app.hub.ids import HubRef
from app.settings import Settings

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

MAX_REDIRECTS = 5
MAX_RETRY_WAIT_S = 30.0
BACKOFF_BASE_S = 0.5
MAX_INFO_BYTES = 4 * MIB
# The model info only adds the safetensors cross-check: it may use this share of a request's time left.
INFO_SHARE = 0.5
# One attempt (every redirect hop and the whole body) must end within this many hub_timeouts,
# so a server dripping bytes cannot hold a fetch forever.
ATTEMPT_DEADLINE_FACTOR = 3
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# The Hub's own other domain: huggingface.co sends big files through *.hf.co (Xet storage bridge).
_SISTER_HOSTS = {"huggingface.co": ("hf.co",)}
_SHA = re.compile(r"[0-9a-f]{40}")
_USER_AGENT = "gpuplan (config fetcher; never downloads weights)"


class FetchedConfig(BaseModel):
    """A model's config.json as the Hub (or the cache) gave it, with the commit it came from."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    revision: str | None
    sha: str | None
    config: dict[str, Any]
    safetensors_total: int | None
    from_cache: bool
    fetched_at: datetime


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes


class _BodyTooLargeError(Exception):
    def __init__(self, size: int, declared: bool) -> None:
        super().__init__(size)
        self.size = size
        self.declared = declared


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds asked by a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


OFFLINE_HINT = (
    "set HF_HUB_OFFLINE=1 to answer from the Hub cache and the bundled catalog only, or give the model's "
    'config.json instead (its path on the command line, or the planner\'s "give its config.json" box)'
)


def unknown_host(exc: BaseException) -> bool:
    """The connection failed because the resolver says the host name does not exist (EAI_NONAME / EAI_NODATA,
    under httpx's ConnectError): final, unlike a temporary resolver failure (EAI_AGAIN), which is retried."""
    final = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    seen: BaseException | None = exc
    for _ in range(8):  # the chain httpx -> httpcore -> socket is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in final
        seen = seen.__cause__ or seen.__context__
    return False


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff before retry number `attempt + 1`: 0.5 s, 1 s, 2 s, ... capped."""
    return float(min(BACKOFF_BASE_S * 2**attempt, MAX_RETRY_WAIT_S))


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError(int(declared), declared=True)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError(size, declared=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedConfig(f"config.json is malformed: it is not valid JSON ({exc})") from None


class HubClient:
    """Async client for the Hub endpoints gpuplan needs; creates its httpx client on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._sleep: Sleep = sleep or asyncio.sleep
        self._endpoint = settings.hf_endpoint.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[tuple[str, str | None], asyncio.Task[FetchedConfig]] = {}
        self.cache = ConfigCache(cache_root(settings.hf_home))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel fetches nobody awaits any more and close the HTTP client."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self._settings.hub_timeout),
                follow_redirects=False,  # followed by hand, see _get_once
                headers={"user-agent": _USER_AGENT},
            )
        return self._client

    async def fetch_config(self, ref: HubRef) -> FetchedConfig:
        """The config of `ref`: from the Hub when online (refreshing the cache), from the cache offline."""
        if self._settings.hf_hub_offline:
            return self._from_cache(ref)
        key = (ref.repo_id, ref.revision)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(ref))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shield: one caller giving up must not cancel the fetch the others wait for
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str | None], task: asyncio.Task[FetchedConfig]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark as retrieved even when every awaiting caller was cancelled

    def _from_cache(self, ref: HubRef) -> FetchedConfig:
        entry = self.cache.get(ref.repo_id, ref.revision_or_main)
        if entry is None:
            raise OfflineMiss(
                f"HF_HUB_OFFLINE=1 and {ref} is not in the cache: run `gpuplan fetch {ref}` while online, "
                "or unset HF_HUB_OFFLINE"
            )
        return FetchedConfig(
            repo_id=ref.repo_id,
            revision=ref.revision,
            sha=entry.sha,
            config=entry.config,
            safetensors_total=entry.safetensors_total,
            from_cache=True,
            fetched_at=entry.fetched_at,
        )

    async def _fetch(self, ref: HubRef) -> FetchedConfig:
        try:
            config, sha = await self._fetch_config_file(ref)
            info = await self._fetch_info(ref)
        except HubUnavailable as exc:
            cached = self.cache.get(ref.repo_id, ref.revision_or_main)
            if cached is None:
                raise
            hint = (
                f" (a cached copy at sha {cached.sha or 'unknown'}, fetched {cached.fetched_at:%Y-%m-%d %H:%M} UTC, "
                "exists: set HF_HUB_OFFLINE=1 to use it)"
            )
            raise HubUnavailable(exc.detail + hint) from exc
        total: int | None = None
        if info is not None:
            info_sha, total = info
            if sha is None:
                sha = info_sha
            elif info_sha is not None and info_sha != sha:
                # The repo moved between the two requests: the total belongs to another commit.
                logger.info("model info of %s is at %s, config at %s: no safetensors cross-check", ref, info_sha, sha)
                total = None
        fetched = FetchedConfig(
            repo_id=ref.repo_id,
            revision=ref.revision,
            sha=sha,
            config=config,
            safetensors_total=total,
            from_cache=False,
            fetched_at=datetime.now(UTC),
        )
        self._store(ref, fetched)
        return fetched

    def _store(self, ref: HubRef, fetched: FetchedConfig) -> None:
        entry = CacheEntry(
            repo_id=ref.repo_id,
            revision=ref.revision_or_main,
            sha=fetched.sha,
            config=fetched.config,
            safetensors_total=fetched.safetensors_total,
            fetched_at=fetched.fetched_at,
        )
        try:
            self.cache.put(entry)
        except OSError as exc:  # a read-only HF_HOME costs the offline copy, not the answer
            logger.warning("cannot cache the config of %s under %s: %s", ref, self.cache.root, exc)

    async def _fetch_config_file(self, ref: HubRef) -> tuple[dict[str, Any], str | None]:
        url = f"{self._endpoint}/{ref.repo_id}/resolve/{quote(ref.revision_or_main, safe='')}/config.json"
        limit = self._settings.hub_max_config_bytes
        try:
            answer = await self._get(httpx.URL(url), what=f"config.json of {ref}", limit=limit)
        except _BodyTooLargeError as exc:
            size = f"{exc.size} bytes" if exc.declared else f"more than {limit} bytes"
            raise MalformedConfig(
                f"config.json is malformed: it is {size}, over the {limit}-byte limit (GPUPLAN_HUB_MAX_CONFIG_BYTES)"
            ) from None
        except httpx.DecodingError as exc:
            raise MalformedConfig(f"config.json is malformed: its body could not be decoded ({exc})") from None
        if not 200 <= answer.status < 300:
            raise self._status_error(ref, answer)
        config = _parse_json(answer.body)
        if not isinstance(config, dict):
            raise MalformedConfig(
                f"config.json is malformed: it is a JSON {type(config).__name__}, not an object, for {ref}"
            )
        sha = answer.headers.get("x-repo-commit", "").strip().lower()
        return config, sha if _SHA.fullmatch(sha) else None

    async def _fetch_info(self, ref: HubRef) -> tuple[str | None, int | None] | None:
        """(sha, safetensors total) from the model-info API; None on any failure but 401/403/404."""
        path = f"/api/models/{ref.repo_id}"
        if ref.revision:
            path += f"/revision/{quote(ref.revision, safe='')}"
        url = httpx.URL(self._endpoint + path, params=[("expand", "sha"), ("expand", "safetensors")])
        left = deadline.remaining()
        budget = None if left is None else max(left, 0.0) * INFO_SHARE
        try:
            answer = await self._get(url, what=f"model info of {ref}", limit=MAX_INFO_BYTES, budget=budget)
        except (HubUnavailable, _BodyTooLargeError, httpx.DecodingError) as exc:
            logger.info("no model info for %s (%s): no safetensors cross-check", ref, exc)
            return None
        if answer.status in (401, 403, 404):
            raise self._status_error(ref, answer)
        if not 200 <= answer.status < 300:
            logger.info("model info of %s answered HTTP %s: no safetensors cross-check", ref, answer.status)
            return None
        try:
            info = json.loads(answer.body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(info, dict):
            return None
        sha = info.get("sha")
        safetensors = info.get("safetensors")
        total = safetensors.get("total") if isinstance(safetensors, dict) else None
        return (
            sha.lower() if isinstance(sha, str) and _SHA.fullmatch(sha.lower()) else None,
            total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None,
        )

    def _status_error(self, ref: HubRef, answer: _Answer) -> HubError:
        code = answer.headers.get("x-error-code", "")
        where = f"on the Hub ({self._endpoint})"
        if answer.status == 404:
            if code == "RevisionNotFound":
                return ModelNotFound(f"revision {ref.revision_or_main} of model {ref.repo_id} not found {where}")
            if code == "EntryNotFound":
                return ModelNotFound(
                    f"model {ref} has no config.json {where}: is it a transformers model "
                    "(not an adapter or GGUF-only repo)?"
                )
            return ModelNotFound(f"model {ref.repo_id} not found {where}: check the id")
        if answer.status in (401, 403):
            if self._settings.hf_token:
                return GatedModel(
                    f"the Hub ({self._endpoint}) refused HF_TOKEN for {ref.repo_id} (HTTP {answer.status}): "
                    "token rejected: check that the token is valid with read access and that its account "
                    "has accepted the model's license"
                )
            return GatedModel(
                f"this model is gated: accept its license on the Hub and set HF_TOKEN ({ref.repo_id}, "
                f"HTTP {answer.status}; without a token the Hub also answers 401 for private and "
                "non-existent repos, so check the id too)"
            )
        return HubError(f"the Hub ({self._endpoint}) answered HTTP {answer.status} for {ref}")

    async def _get(self, url: httpx.URL, *, what: str, limit: int, budget: float | None = None) -> _Answer:
        """GET with bounded retries on 429/5xx/timeouts/connection errors, honouring Retry-After.

        Every attempt and wait ends within `budget` seconds (if given) and the request's deadline.
        """
        attempts = self._settings.hub_retries + 1
        ends = None if budget is None else asyncio.get_running_loop().time() + budget
        last, tried = "", 0
        for attempt in range(attempts):
            tried = attempt + 1
            left = self._time_left(ends, what)
            wait = backoff_seconds(attempt)
            with deadline.waiting_for(f"the Hub ({self._endpoint}): {what}"):
                try:
                    async with asyncio.timeout(self._attempt_seconds(left)):
                        answer = await self._get_once(url, limit)
                except httpx.TimeoutException:
                    last = f"timed out after {self._settings.hub_timeout:g} s"
                except TimeoutError:
                    last = f"no whole answer within {self._attempt_seconds(left):.3g} s"
                except httpx.TransportError as exc:
                    last = f"connection failed: {type(exc).__name__}"
                    if unknown_host(exc):
                        last += " (the Hub's host name does not resolve here)"
                        break  # the resolver's answer is final: retrying asks it the same question
                else:
                    if answer.status != 429 and answer.status < 500:
                        return answer
                    last = f"HTTP {answer.status}"
                    asked = retry_after_seconds(answer.headers.get("retry-after"))
                    wait = asked if asked is not None else wait
            if attempt + 1 < attempts:
                self._check_wait(wait, self._time_left(ends, what), what, last)
                logger.info("%s: %s; retrying in %.1f s", what, last, wait)
                await self._sleep(wait)
        if last.startswith("connection failed"):
            raise HubUnavailable(
                f"the Hub ({self._endpoint}) cannot be reached from this machine ({last}, {tried} attempt(s)) "
                f"for {what}: {OFFLINE_HINT}"
            )
        raise HubUnavailable(
            f"the Hub ({self._endpoint}) did not give {what} after {tried} attempt(s) (last: {last}): try again later"
        )

    def _attempt_seconds(self, left: float | None) -> float:
        """One attempt (every redirect hop and the whole body) ends within this: a dripping server cannot hold it."""
        own = self._settings.hub_timeout * ATTEMPT_DEADLINE_FACTOR
        return own if left is None else max(min(own, left), 0.001)

    def _time_left(self, ends: float | None, what: str) -> float | None:
        """Seconds left to this fetch (its budget, the request's deadline); HubUnavailable when none are."""
        left = deadline.remaining()
        if ends is not None:
            own = ends - asyncio.get_running_loop().time()
            left = own if left is None else min(left, own)
        if left is not None and left <= 0:
            raise HubUnavailable(
                f"the Hub ({self._endpoint}) did not give {what} within the request deadline "
                f"({deadline.SETTING}): try again later"
            )
        return left

    def _check_wait(self, wait: float, left: float | None, what: str, last: str) -> None:
        """Give up at once on a wait the request cannot afford, rather than sleep into its deadline."""
        if wait > MAX_RETRY_WAIT_S:
            raise HubUnavailable(
                f"the Hub ({self._endpoint}) answered {last} for {what} and asked to retry after {wait:g} s "
                f"(more than gpuplan waits, {MAX_RETRY_WAIT_S:g} s): try again later"
            )
        if left is not None and wait >= left:
            raise HubUnavailable(
                f"the Hub ({self._endpoint}) answered {last} for {what} and asked to retry after {wait:g} s, "
                f"beyond the {max(left, 0):.1f} s left of the request deadline ({deadline.SETTING}): try again later"
            )

    async def _get_once(self, url: httpx.URL, limit: int) -> _Answer:
        client = self._http()
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", url, headers=self._auth_headers(url)) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_CODES and location:
                    url = self._checked_redirect(url, location)
                    continue
                body = await _read_limited(response, limit) if response.is_success else b""
                return _Answer(response.status_code, response.headers, body)
        raise HubUnavailable(f"the Hub ({self._endpoint}) redirected {url.path} more than {MAX_REDIRECTS} times")

    def _auth_headers(self, url: httpx.URL) -> dict[str, str]:
        """The bearer token goes to the endpoint's own origin only, never to a CDN it redirects to."""
        base = httpx.URL(self._endpoint)
        same_origin = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
        token = self._settings.hf_token
        return {"authorization": f"Bearer {token}"} if token and same_origin else {}

    def _checked_redirect(self, current: httpx.URL, location: str) -> httpx.URL:
        base = httpx.URL(self._endpoint)
        try:
            target = current.join(location)
        except httpx.InvalidURL:
            raise HubUnavailable(f"the Hub ({self._endpoint}) sent an unreadable redirect {location!r}") from None
        own = base.host.lower()
        allowed = (own, *_SISTER_HOSTS.get(own, ()))
        host = target.host.lower()
        host_ok = any(host == h or host.endswith("." + h) for h in allowed)
        scheme_ok = target.scheme == "https" or (target.scheme == "http" and base.scheme == "http")
        if not (host_ok and scheme_ok):
            raise HubUnavailable(
                f"refused a redirect from {self._endpoint} to {target.scheme}://{host or '?'}: "
                f"gpuplan follows redirects only to {own} and its subdomains"
            )
        return target


def fetch_config_sync(
    settings: Settings, ref: HubRef, transport: httpx.AsyncBaseTransport | None = None
) -> FetchedConfig:
    """Fetch one config from synchronous code (the CLI): runs the async client and closes it."""

    async def run() -> FetchedConfig:
        async with HubClient(settings, transport=transport) as client:
            return await client.fetch_config(ref)

    return asyncio.run(run())
