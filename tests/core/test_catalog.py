"""The bundled catalog: exact parameter counts and precomputed inventories that match transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.catalog import INVENTORIES_DIR, catalog_ids, load_entry, load_spec, slug

REQUIRED = {
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-405B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-v0.1",
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-14B",
    "Qwen/Qwen2.5-32B",
    "Qwen/Qwen2.5-72B",
    "google/gemma-2b",
    "google/gemma-7b",
    "google/gemma-2-2b",
    "google/gemma-2-9b",
    "google/gemma-2-27b",
    "microsoft/phi-2",
    "microsoft/Phi-3-mini-4k-instruct",
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "tiiuae/falcon-7b",
    "01-ai/Yi-34B",
    "stabilityai/stablelm-base-alpha-3b",
}


def test_catalog_holds_every_required_model_with_provenance() -> None:
    assert set(catalog_ids()) >= REQUIRED
    for model_id in catalog_ids():
        entry = load_entry(model_id)
        assert entry is not None and entry.source.startswith("https://huggingface.co/") and entry.provenance


@pytest.mark.parametrize("model_id", sorted(REQUIRED))
def test_base_params_equal_instantiated_model(model_id: str) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    entry, spec = load_entry(model_id), load_spec(model_id)
    assert entry is not None and spec is not None
    config = entry.effective_config
    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    if entry.params_published is not None:
        assert spec.num_params == entry.params_published


def test_precomputed_inventories_match_a_fresh_build(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from app.inventory.regenerate import regenerate

    regenerate(tmp_path)
    for model_id in catalog_ids():
        fresh = json.loads((tmp_path / f"{slug(model_id)}.json").read_text())
        shipped = json.loads((INVENTORIES_DIR / f"{slug(model_id)}.json").read_text())
        fresh.pop("transformers_version"), shipped.pop("transformers_version")
        assert fresh == shipped, f"{model_id}: run `python -m app.inventory.regenerate`"


def test_architectural_facts() -> None:
    def spec(i: str):  # type: ignore[no-untyped-def]
        s = load_spec(i)
        assert s is not None
        return s

    assert spec("Qwen/Qwen2.5-0.5B").arch.tie_word_embeddings
    assert not spec("meta-llama/Llama-2-7b-hf").arch.tie_word_embeddings
    assert spec("meta-llama/Meta-Llama-3-8B").arch.num_kv_heads == 8
    assert spec("google/gemma-7b").arch.head_dim == 256
    assert spec("google/gemma-7b").arch.num_heads * 256 != spec("google/gemma-7b").arch.hidden_size
    phi3 = {g.leaf for g in spec("microsoft/Phi-3-mini-4k-instruct").groups}
    assert {"qkv_proj", "gate_up_proj"} <= phi3
    mixtral = spec("mistralai/Mixtral-8x7B-v0.1")
    assert mixtral.arch.num_experts == 8 and mixtral.arch.experts_per_token == 2
    experts = next(g for g in mixtral.groups if g.leaf == "experts")
    assert not experts.quantizable and not experts.peft_linear  # fused 3-D experts stay unquantized
    falcon = spec("tiiuae/falcon-7b")
    assert falcon.arch.num_kv_heads == 1 and falcon.arch.parallel_block
    lm_head = next(g for g in spec("meta-llama/Llama-2-7b-hf").groups if g.name == "lm_head")
    assert lm_head.output_layer and not lm_head.quantizable
