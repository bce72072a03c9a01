"""The bundled catalog: exact parameter counts and precomputed inventories that match transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

# Issue 11, "a current catalog": models released since the first catalog. Multimodal checkpoints
# (Llama 4, Gemma 3 4B/12B/27B, Mistral Small 3.1) are catalogued as their text model: the entry's config is the published text_config.
CURRENT = {
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-1.7B",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-14B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-235B-A22B",
    "meta-llama/Llama-4-Scout-17B-16E",
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
    "google/gemma-3-1b-it",
    "google/gemma-3-4b-it",
    "google/gemma-3-12b-it",
    "google/gemma-3-27b-it",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "deepseek-ai/DeepSeek-V3",
    "microsoft/phi-4",
    "HuggingFaceTB/SmolLM3-3B",
    "allenai/OLMo-2-1124-7B-Instruct",
    "allenai/OLMo-2-1124-13B",
    "ibm-granite/granite-3.3-8b-instruct",
    "ibm-granite/granite-3.1-1b-a400m-instruct",
    "mistralai/Mistral-Small-3.1-24B-Base-2503",
}

# Where a published total is not the inventory, why, and by exactly how much (published - inventory).
# Qwen3-0.6B/1.7B: the Hub safetensors store lm_head.weight materialized although the embedding is tied,
# so the Hub total counts the tied matrix twice.
LM_HEAD_STORED_TWICE = {"Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B"}
# Gemma 3 4B/12B/27B: the published total is the multimodal checkpoint's, SigLIP vision tower and projector included;
# rebuilding the whole Gemma3ForConditionalGeneration from the entry's text_config and this published
# vision_config (the same in all three multimodal sizes) must give it exactly.
GEMMA3_MULTIMODAL = {"google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"}
GEMMA3_VISION_CONFIG = {
    "hidden_size": 1152,
    "image_size": 896,
    "intermediate_size": 4304,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "patch_size": 14,
    "vision_use_head": False,
}
# Mistral Small 3.1: the published total is the Mistral3ForConditionalGeneration checkpoint's, Pixtral vision tower
# and projector included; rebuilding it from the entry's text_config and the vision_config and projector settings of
# NVIDIA/TensorRT-LLM's mistral_small_3_1_24b_config fixture (embeddings untied, as MistralConfig has them) gives it.
MISTRAL3_MULTIMODAL = {
    "mistralai/Mistral-Small-3.1-24B-Base-2503": {
        "multimodal_projector_bias": False,
        "projector_hidden_act": "gelu",
        "spatial_merge_size": 2,
        "image_token_index": 10,
        "vision_feature_layer": -1,
        "tie_word_embeddings": False,
        "vision_config": {
            "head_dim": 64,
            "hidden_act": "silu",
            "hidden_size": 1024,
            "image_size": 1540,
            "intermediate_size": 4096,
            "model_type": "pixtral",
            "num_attention_heads": 16,
            "num_channels": 3,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "rope_theta": 10000.0,
        },
    }
}
# DeepSeek-V3: transformers builds the 61 main layers, not the multi-token-prediction module, and the Hub total also
# counts the FP8 weight_scale_inv tensors. The card: "685B, which includes 671B of the Main Model weights and 14B
# of the Multi-Token Prediction (MTP) Module weights", so the excess is positive and at most 14B.
MTP_AND_FP8_SCALES_UPPER_BOUND = {"deepseek-ai/DeepSeek-V3": 14_000_000_000}


def test_catalog_holds_every_required_model_with_provenance() -> None:
    assert set(catalog_ids()) >= REQUIRED
    for model_id in catalog_ids():
        entry = load_entry(model_id)
        assert entry is not None and entry.source.startswith("https://huggingface.co/") and entry.provenance


@pytest.mark.parametrize("model_id", sorted(REQUIRED))
def test_base_params_equal_instantiated_model(model_id: str) -> None:
    entry, spec = load_entry(model_id), load_spec(model_id)
    assert entry is not None and spec is not None
    assert spec.num_params == _meta_device_params(entry.effective_config)
    if entry.params_published is not None:
        assert spec.num_params == entry.params_published


def _meta_device_params(config: dict[str, Any], auto_model: str = "AutoModelForCausalLM") -> int:
    """sum(p.numel()) of the model transformers builds from a config dict on the meta device."""
    torch = pytest.importorskip("torch")
    import transformers

    cfg = transformers.AutoConfig.for_model(
        config["model_type"], **{k: v for k, v in config.items() if k != "model_type"}
    )
    with torch.device("meta"):
        model = getattr(transformers, auto_model).from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def test_catalog_holds_the_current_models() -> None:
    assert set(catalog_ids()) >= CURRENT


@pytest.mark.parametrize("model_id", sorted(CURRENT))
def test_current_models_base_params_equal_instantiated_model(model_id: str) -> None:
    entry, spec = load_entry(model_id), load_spec(model_id)
    assert entry is not None and spec is not None
    assert spec.num_params == _meta_device_params(entry.effective_config)


@pytest.mark.parametrize("model_id", sorted(CURRENT))
def test_current_models_match_their_published_count(model_id: str) -> None:
    entry, spec = load_entry(model_id), load_spec(model_id)
    assert entry is not None and spec is not None
    published = entry.params_published
    if published is None:  # allowed only with the reason written down
        assert "params_published is null" in entry.provenance
        return
    if model_id in LM_HEAD_STORED_TWICE:
        assert spec.arch.tie_word_embeddings
        assert published - spec.num_params == spec.arch.vocab_size * spec.arch.hidden_size
    elif model_id in GEMMA3_MULTIMODAL:
        multimodal = {"model_type": "gemma3", "text_config": entry.config, "vision_config": GEMMA3_VISION_CONFIG}
        assert published == _meta_device_params(multimodal, "AutoModelForImageTextToText")
        assert published > spec.num_params
    elif model_id in MISTRAL3_MULTIMODAL:
        multimodal = {"model_type": "mistral3", "text_config": entry.config, **MISTRAL3_MULTIMODAL[model_id]}
        assert published == _meta_device_params(multimodal, "AutoModelForImageTextToText")
        assert published > spec.num_params
    elif model_id in MTP_AND_FP8_SCALES_UPPER_BOUND:
        assert 0 < published - spec.num_params <= MTP_AND_FP8_SCALES_UPPER_BOUND[model_id]
    else:  # the Hub (or card) counts exactly the model transformers builds
        assert published == spec.num_params


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


def test_current_architectural_facts() -> None:
    def spec(i: str):  # type: ignore[no-untyped-def]
        s = load_spec(i)
        assert s is not None
        return s

    qwen3 = spec("Qwen/Qwen3-0.6B")
    assert qwen3.arch.head_dim == 128 and qwen3.arch.num_heads * 128 != qwen3.arch.hidden_size
    assert {"q_norm", "k_norm"} <= {g.leaf for g in qwen3.groups}
    assert qwen3.arch.tie_word_embeddings and not spec("Qwen/Qwen3-8B").arch.tie_word_embeddings
    moe = spec("Qwen/Qwen3-30B-A3B")
    assert (moe.arch.num_experts, moe.arch.experts_per_token, moe.arch.intermediate_size) == (128, 8, 768)
    # Llama 4 stores fused experts as (experts, intermediate, hidden): the expert width is 8192, not hidden 5120
    scout, maverick = spec("meta-llama/Llama-4-Scout-17B-16E"), spec("meta-llama/Llama-4-Maverick-17B-128E-Instruct")
    assert (scout.arch.num_experts, scout.arch.experts_per_token, scout.arch.intermediate_size) == (16, 1, 8192)
    assert (maverick.arch.num_experts, maverick.arch.intermediate_size) == (128, 8192)
    assert scout.arch.architecture == "Llama4ForCausalLM"  # the text model, not the multimodal checkpoint
    # Maverick alternates dense and MoE layers (interleave_moe_layer_step 2): 24 of each
    assert {g.name: g.count for g in maverick.groups}["model.layers.*.feed_forward.experts"] == 24
    gemma = spec("google/gemma-3-4b-it")
    assert gemma.arch.norm_kind == "gemma" and gemma.arch.norms_per_layer == 4 and gemma.arch.vocab_size == 262208
    gpt_oss = spec("openai/gpt-oss-20b")
    assert (gpt_oss.arch.num_experts, gpt_oss.arch.experts_per_token, gpt_oss.arch.head_dim) == (32, 4, 64)
    assert spec("deepseek-ai/DeepSeek-V3").arch.num_experts == 256
    assert spec("microsoft/phi-4").arch.gate_up_fused and spec("microsoft/phi-4").arch.qkv_fused
    granite_moe = spec("ibm-granite/granite-3.1-1b-a400m-instruct")
    assert (granite_moe.arch.num_experts, granite_moe.arch.experts_per_token) == (32, 8)


def test_every_catalog_model_has_a_family_and_release_month_and_nothing_else_does() -> None:
    import json
    import re

    from app.catalog import CATALOG_DIR, catalog_ids

    releases = json.loads((CATALOG_DIR / "releases.json").read_text())["models"]
    assert set(releases) == set(catalog_ids())
    for model_id, release in releases.items():
        assert set(release) == {"family", "released"}, model_id
        assert re.fullmatch(r"20(2[3-9])-(0[1-9]|1[0-2])", release["released"]), model_id
