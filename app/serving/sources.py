"""Where the serving estimate's facts come from: the vLLM release whose semantics are modelled (its tag and files),
and the edge that finds the config fields a KV layout needs (the catalog entry's config, or a config read by the
caller: a local config.json, a Hub or uploaded config from the resolver's cache)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.spec import ModelSpec
from app.serving.layout import KvLayout, full_layout, kv_layout

if TYPE_CHECKING:
    from app.settings import Settings

# The vLLM release the paged-serving terms follow, read at its tag (the v0.33.0 wheel on PyPI, vllm/_version.py:
# __version__ '0.33.0', __commit_id__ 'g4ba787ec9'); every path below is as it stands at that tag.
VLLM_TAG = "v0.33.0"
VLLM_COMMIT = "4ba787ec9"
VLLM_FILES: tuple[str, ...] = (
    "vllm/v1/worker/gpu_worker.py (Worker.determine_available_memory)",
    "vllm/v1/worker/utils.py (request_memory: ceil(total x gpu_memory_utilization))",
    "vllm/utils/mem_utils.py (memory_profiling: non_kv_cache_memory)",
    "vllm/envs.py (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, default 1)",
    "vllm/config/vllm.py (cudagraph capture sizes, max_in_flight_tokens)",
    "vllm/v1/kv_cache_interface.py (page sizes, sliding/chunked/MLA specs)",
    "vllm/v1/core/kv_cache_planning.py (_get_kv_cache_groups_uniform_page_size, get_kv_cache_config_from_groups)",
)
VLLM_VERSION = f"vLLM {VLLM_TAG} (V1 engine; vllm-project/vllm tag {VLLM_TAG}, commit {VLLM_COMMIT})"


def stored_config(model: ModelSpec, settings: Settings) -> dict[str, Any] | None:
    """The config.json a Hub or uploaded model was built from, where this server keeps it: the uploaded config
    (`config:<hash>`, app/uploads.py), or the Hub config cache's entry (app/hub/cache.py) whose canonical hash is
    the spec's config_hash (so the layout is read from the very config the inventory was built from); else None."""
    from app import uploads
    from app.hub.cache import ConfigCache, cache_root
    from app.inventory.builder import config_hash

    if model.source == "file" and uploads.NAME.match(model.id):
        return uploads.load(settings, model.id)
    if model.source != "hub":
        return None
    entries = ConfigCache(cache_root(settings.hf_home)).entries(model.id)
    return next((e.config for e in entries if config_hash(e.config) == model.config_hash), None)


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder's config: a multimodal config.json's `text_config` (as the inventory builds from
    get_text_config()), else the config itself; the catalog keeps text configs already."""
    text = config.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in config:
        return text
    return config


def layout_for(model: ModelSpec, config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> KvLayout:
    """kv_layout() from `config` (a local config.json), else the catalog entry's effective config (the text config
    for multimodal releases), else (with `settings`) the Hub or uploaded config this server keeps, else full
    attention from the inventory's summary, with a note."""
    from app import catalog

    if config is None and model.source == "catalog" and (entry := catalog.load_entry(model.id)) is not None:
        return kv_layout(model.arch, entry.effective_config).model_copy(
            update={"source": f"catalog config of {entry.id}"}
        )
    where = "config.json"
    if config is None and settings is not None and (config := stored_config(model, settings)) is not None:
        at = f"@{model.revision[:12]}" if model.revision else ""
        where = f"Hub config.json of {model.id}{at}" if model.source == "hub" else f"uploaded {model.id}"
    if config is not None:
        return kv_layout(model.arch, text_config(config)).model_copy(update={"source": where})
    return full_layout(model.arch)
