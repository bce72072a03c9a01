"""A fake Hugging Face Hub on loopback, misbehaving on demand per repo id, and settings pointing at it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from app.settings import Settings
from tests.configs import TINY_LLAMA

GOOD_SHA = "0123456789abcdef0123456789abcdef01234567"
LLAMA_CONFIG: dict[str, Any] = dict(TINY_LLAMA)


@dataclass
class FakeRepo:
    """How one repo answers. `status` (for `fail_times` requests, or always when 0) replaces a success."""

    config: Any = field(default_factory=lambda: dict(LLAMA_CONFIG))
    sha: str = GOOD_SHA
    safetensors_total: int | None = 123_456
    revisions: tuple[str, ...] = ("main",)
    status: int | None = None
    fail_times: int = 0
    retry_after: str | None = None
    error_code: str | None = None
    delay: float = 0.0
    token: str | None = None  # gated: only this bearer token is let in
    body: bytes | None = None  # raw config.json body
    content_length: bool = True
    redirect_to: str | None = None  # Location header of the resolve answer
    commit_header: bool = True
    info_status: int | None = None
    info_body: bytes | None = None
    info_sha: str | None = None  # model info's sha when it differs from `sha`
    info_delay: float = 0.0  # seconds before the model info answers
    drip: float = 0.0  # seconds between the config body's bytes (a server dripping its answer)


@dataclass
class Seen:
    path: str
    authorization: str | None


class FakeHub:
    """The state the handler reads; tests add repos and read `requests`."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.url = ""
        self.failures: dict[tuple[str, str], int] = {}

    def add(self, repo_id: str, **behaviour: Any) -> FakeRepo:
        repo = FakeRepo(**behaviour)
        self.repos[repo_id] = repo
        return repo

    def count(self, needle: str = "") -> int:
        with self.lock:
            return sum(needle in seen.path for seen in self.requests)

    def resolve_count(self, repo_id: str) -> int:
        return self.count(f"/{repo_id}/resolve/")

    def info_count(self, repo_id: str) -> int:
        return self.count(f"/api/models/{repo_id}")


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # close-delimited bodies, so a body without Content-Length is possible

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self._send(
                status, body, {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
            )

        def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
            self._json(status, {"error": code}, {"X-Error-Code": code, **(headers or {})})

        def _auth_fails(self, repo: FakeRepo) -> bool:
            if repo.token is None:
                return False
            given = self.headers.get("Authorization")
            if given is None:
                self._error(401, "GatedRepo")
            elif given != f"Bearer {repo.token}":
                self._error(403, "GatedRepo")
            else:
                return False
            return True

        def _injected_failure(self, repo: FakeRepo, repo_id: str, kind: str, status: int | None) -> bool:
            if status is None:
                return False
            if repo.fail_times:
                key = (repo_id, kind)
                with hub.lock:
                    done = hub.failures.get(key, 0)
                    if done >= repo.fail_times:
                        return False
                    hub.failures[key] = done + 1
            headers = {"Retry-After": repo.retry_after} if repo.retry_after else {}
            self._error(status, repo.error_code or "Injected", headers)
            return True

        def _get(self) -> None:
            with hub.lock:
                hub.requests.append(Seen(self.path, self.headers.get("Authorization")))
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
            if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                self._model_info(parts[2:])
            elif len(parts) == 5 and parts[2] == "resolve" and parts[4] == "config.json":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3])
            else:
                self._error(404, "RepoNotFound")

        do_GET = _get  # http.server's name for the GET handler

        def _lookup(self, repo_id: str, revision: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401 if repo_id.startswith("private/") else 404, "RepoNotFound")
                return None
            if self._auth_fails(repo):
                return None
            if revision not in repo.revisions and revision != repo.sha:
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def _resolve(self, repo_id: str, revision: str) -> None:
            repo = self._lookup(repo_id, revision)
            if repo is None or self._injected_failure(repo, repo_id, "resolve", repo.status):
                return
            if repo.delay and hub.stop.wait(repo.delay):
                return
            if repo.redirect_to is not None:
                self._send(302, headers={"Location": repo.redirect_to, "Content-Length": "0"})
                return
            body = repo.body if repo.body is not None else json.dumps(repo.config).encode()
            headers = {"Content-Type": "application/json"}
            if repo.content_length:
                headers["Content-Length"] = str(len(body))
            if repo.commit_header:
                headers["X-Repo-Commit"] = repo.sha
            if repo.drip:
                self._drip(body, headers, repo.drip)
                return
            self._send(200, body, headers)

        def _drip(self, body: bytes, headers: dict[str, str], pause: float) -> None:
            self._send(200, b"", headers)
            for byte in body:
                if hub.stop.wait(pause):
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def _model_info(self, rest: list[str]) -> None:
            repo_id = "/".join(rest[:2])
            revision = rest[3] if len(rest) == 4 and rest[2] == "revision" else "main"
            repo = self._lookup(repo_id, revision)
            if repo is None or self._injected_failure(repo, repo_id, "info", repo.info_status):
                return
            if repo.info_delay and hub.stop.wait(repo.info_delay):
                return
            if repo.info_body is not None:
                self._send(200, repo.info_body, {"Content-Length": str(len(repo.info_body))})
                return
            info: dict[str, Any] = {"id": repo_id, "sha": repo.info_sha or repo.sha}
            if repo.safetensors_total is not None:
                info["safetensors"] = {"parameters": {"BF16": repo.safetensors_total}, "total": repo.safetensors_total}
            self._json(200, info)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (timeouts, size limits) are part of the tests


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A fake Hub on 127.0.0.1 and a free port; stopped (and its threads joined) at teardown."""
    hub = FakeHub()
    server = _Server(("127.0.0.1", 0), _make_handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.stop.set()  # wakes the slow handlers
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_ambient_hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a proxy nor the developer's HF_* variables may reach these tests."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def make_settings(fake_hub: FakeHub, tmp_path: Path) -> Callable[..., Settings]:
    """Settings aimed at the fake Hub with a fresh HF_HOME; keyword arguments override fields."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "hf_endpoint": fake_hub.url,
            "hf_token": None,
            "hf_home": tmp_path / "hf-home",
            "hf_hub_offline": False,
            "hub_timeout": 2.0,
            "hub_retries": 2,
            "hub_max_config_bytes": 4096,
        }
        values.update(overrides)
        return Settings(**values)

    return make


class SleepRecorder:
    """An injectable sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()
