"""Model name -> ModelSpec: the bundled catalog, a local config.json, an uploaded one, or the Hugging Face Hub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app import catalog, deadline
from app.core.spec import ModelSpec
from app.core.units import MIB
from app.errors import InputError, MalformedConfig
from app.inventory.cache import cached_spec
from app.settings import Settings

if TYPE_CHECKING:
    import httpx

    from app.hub.client import HubClient
    from app.inventory.pool import BuildPool

MAX_LOCAL_CONFIG_BYTES = 2 * MIB

Kind = Literal["catalog", "file", "upload", "hub"]


def classify(name: str, *, allow_files: bool) -> Kind:
    """Which of the three ways names this model."""
    text = name.strip()
    if not text:
        raise InputError(
            "give a model: a catalog id such as meta-llama/Llama-2-7b-hf, a Hub id, or a path to config.json"
        )
    if text.startswith("config:"):  # a config.json given through the planner form (app/uploads.py)
        return "upload"
    if allow_files and (text.endswith(".json") or text.startswith((".", "/", "~")) or Path(text).is_file()):
        return "file"
    if "@" not in text and catalog.in_catalog(text):
        return "catalog"
    return "hub"


def _read_local(path_text: str) -> dict[str, Any]:
    path = Path(path_text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(f"no config file at {path}: give the path to a model's config.json")
    if path.stat().st_size > MAX_LOCAL_CONFIG_BYTES:
        raise MalformedConfig(f"{path} is larger than {MAX_LOCAL_CONFIG_BYTES} bytes; a config.json is a few KB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedConfig(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedConfig(f"{path} must hold a JSON object")
    return data


def _uploaded(name: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """An uploaded config and the identity its spec carries (source "file", named by its hash)."""
    from app import uploads

    return uploads.load(settings, name), {"model_id": name, "source": "file"}


def resolve_catalog(name: str) -> ModelSpec:
    spec = catalog.load_spec(name)
    if spec is None:
        raise InputError(f"{name} is not in the bundled catalog; see `gpuplan models`")
    return spec


async def resolve_model(
    name: str,
    settings: Settings,
    hub: HubClient | None = None,
    *,
    allow_files: bool = False,
    builds: BuildPool | None = None,
) -> ModelSpec:
    """Resolve without blocking the event loop: inventories are built by `builds` (child processes, the web
    service) or, without one, in a worker thread; each step names itself to the request's deadline."""
    kind = classify(name, allow_files=allow_files)
    if kind == "catalog":
        return resolve_catalog(name)
    if kind == "file":
        config = _read_local(name)
        return await _inventory(config, settings, builds, model_id=str(Path(name).expanduser()), source="file")
    if kind == "upload":
        config, identity = _uploaded(name, settings)
        return await _inventory(config, settings, builds, **identity)
    from app.hub.client import HubClient
    from app.hub.ids import parse_model_ref
    from app.hub.remote_code import check_remote_code

    ref = parse_model_ref(name)
    own = hub is None
    client = hub or HubClient(settings)
    try:
        with deadline.waiting_for(f"the Hub ({settings.hf_endpoint}): config.json and model info of {ref}"):
            fetched = await client.fetch_config(ref)
    finally:
        if own:
            await client.aclose()
    deadline.check(f"the inventory build of {ref}")
    notes = await asyncio.to_thread(check_remote_code, fetched.config)
    spec = await _inventory(
        fetched.config,
        settings,
        builds,
        model_id=ref.repo_id,
        source="hub",
        revision=fetched.sha or ref.revision,
        published_params=fetched.safetensors_total,
    )
    return spec.model_copy(update={"notes": tuple(notes)})


async def _inventory(
    config: dict[str, Any], settings: Settings, builds: BuildPool | None, **identity: Any
) -> ModelSpec:
    cache_dir = settings.inventory_cache_dir
    if builds is not None:
        return await builds.spec(config, cache_dir=cache_dir, **identity)
    with deadline.waiting_for(f"the inventory build of {identity['model_id']}"):
        return await asyncio.to_thread(cached_spec, config, cache_dir=cache_dir, **identity)


def resolve_model_sync(
    name: str, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, allow_files: bool = True
) -> ModelSpec:
    """The CLI's resolver: catalog and files without an event loop, the Hub through asyncio.run."""
    kind = classify(name, allow_files=allow_files)
    if kind == "catalog":
        return resolve_catalog(name)
    if kind == "file":
        return cached_spec(
            _read_local(name),
            model_id=str(Path(name).expanduser()),
            source="file",
            cache_dir=settings.inventory_cache_dir,
        )
    if kind == "upload":
        config, identity = _uploaded(name, settings)
        return cached_spec(config, cache_dir=settings.inventory_cache_dir, **identity)

    async def run() -> ModelSpec:
        from app.hub.client import HubClient

        client = HubClient(settings, transport=transport)
        try:
            return await resolve_model(name, settings, client)
        finally:
            await client.aclose()

    return asyncio.run(run())
