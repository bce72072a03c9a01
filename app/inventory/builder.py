"""config.json -> ModelSpec, by instantiating the transformers model on the meta device (nothing allocated)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from app.core.spec import ArchSummary, MlaShape, ModelSource, ModelSpec, ModuleGroup, ParamShape
from app.errors import MalformedConfig, UnsupportedArchitecture

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
_GATED_LEAVES = {"gate_proj", "gate_up_proj", "w1", "w3", "fc_gate"}
_FUSED_QKV = {"qkv_proj", "query_key_value", "Wqkv", "c_attn", "qkv"}
_DOWN_LEAVES = {"down_proj", "dense_4h_to_h", "fc2", "w2", "c_proj"}
# How each MoE family makes its routing weights (the router's forward in modeling_<type>.py); others: softmax
# over all experts in fp32, as Mixtral and Qwen3-MoE do.
_ROUTERS = {
    "deepseek_v2": "sigmoid",
    "deepseek_v3": "sigmoid",  # DeepseekV3TopkRouter: fp32 linear, sigmoid, grouped top-k
    "llama4_text": "sigmoid",  # Llama4Router: top-k logits scattered into -inf, sigmoid
    "gpt_oss": "topk_softmax",  # GptOssTopKRouter: top-k of the logits, softmax over those k
    "granitemoe": "topk_softmax",  # GraniteMoeTopKRouter: the same, in fp32
}
# Routers that cast the routing weights to the activation dtype (`.to(router_logits.dtype)`, `.type_as(hidden)`,
# a softmax in the logits' dtype); the others (Mixtral, DeepSeek) scale the experts' outputs by fp32 weights.
_ROUTING_IN_ACT_DTYPE = {"qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "gpt_oss"}
# Experts whose forward is not the plain grouped_mm SwiGLU: gpt-oss's clamped SwiGLU with biases
# (GptOssExperts._apply_gate), Llama 4's bmm of every expert over every token (Llama4TextExperts.forward).
_EXPERTS = {"gpt_oss": "clamped", "llama4_text": "dense"}
# nn.Linear subclasses whose forward returns a tuple: PEFT's lora.Linear adds to the result and fails
_LORA_UNSAFE = {"Llama4Router": "router"}
# Size caps, refused before transformers is asked to build: what real models have, with a margin. The largest
# catalog values (app/catalog/configs) are 126 layers, hidden 16,384 and intermediate 53,248 (Llama 3.1 405B),
# vocab 262,144 (Gemma 3), 128 heads, head_dim 256 and 256 routed experts (DeepSeek-V3); released models go to
# 512 experts (Qwen3-Next). Each cap is about twice the largest known value; a config within them builds in
# seconds (the web service also bounds every build's time, app/inventory/pool.py).
MAX_LAYERS = 256
SIZE_CAPS: dict[str, int] = {
    "num_hidden_layers": MAX_LAYERS,
    "n_layer": MAX_LAYERS,
    "num_layers": MAX_LAYERS,
    "hidden_size": 32_768,
    "n_embd": 32_768,
    "d_model": 32_768,
    "intermediate_size": 131_072,
    "ffn_hidden_size": 131_072,
    "moe_intermediate_size": 131_072,
    "vocab_size": 524_288,
    "num_attention_heads": 512,
    "n_head": 512,
    "num_key_value_heads": 512,
    "head_dim": 1024,
    "num_local_experts": 1024,
    "num_experts": 1024,
    "n_routed_experts": 1024,
    "num_experts_per_tok": 64,
}


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a config dict."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_values(config: dict[str, Any]) -> None:
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise MalformedConfig("config.json has no 'model_type': add the transformers model type, e.g. \"llama\"")
    text = config.get("text_config")
    for where, fields in (("", config), ("text_config.", text if isinstance(text, dict) else {})):
        for key, cap in SIZE_CAPS.items():
            value = fields.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= cap:
                raise MalformedConfig(
                    f"config field {where}{key}={value!r} must be a positive integer up to {cap:,} "
                    "(gpuplan's cap: about twice the largest released model's)"
                )


def _load_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
    try:
        return AutoConfig.for_model(config["model_type"], **fields)
    except ValueError as exc:
        if "Unrecognized" in str(exc) or "model type" in str(exc):
            raise UnsupportedArchitecture(
                f"model_type {config['model_type']!r} is not known to this transformers version; "
                "check the name or use a model whose architecture transformers supports"
            ) from exc
        raise MalformedConfig(f"transformers rejected the config: {exc}") from exc
    except (TypeError, KeyError, AttributeError) as exc:
        raise MalformedConfig(f"transformers rejected the config: {exc}") from exc


def _instantiate(cfg: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            # in 16 bits, so the parameters transformers keeps in fp32 (_keep_in_fp32_modules_strict) show as fp32
            return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise UnsupportedArchitecture(
            f"transformers cannot build a causal language model for model_type {cfg.model_type!r}: {exc}"
        ) from exc
    except (TypeError, AttributeError, KeyError, IndexError, ZeroDivisionError, RuntimeError, AssertionError) as exc:
        raise MalformedConfig(
            f"the config's values do not build a model ({type(exc).__name__}: {exc}); check its sizes"
        ) from exc


def _not_converted(model: Any) -> list[str]:
    """The modules transformers' bitsandbytes quantizer leaves unquantized by default."""
    from transformers.quantizers.base import HfQuantizer

    return list(HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None)))


def _module_rows(model: Any) -> list[dict[str, Any]]:
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _not_converted(model)
    output_emb = model.get_output_embeddings()
    seen: dict[int, str] = {}
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        is_linear = isinstance(module, (nn.Linear, Conv1D))
        if not own and not is_linear:
            continue
        params, tied = [], False
        for pname, p in own:
            if id(p) in seen:
                tied = True
                continue
            seen[id(p)] = f"{name}.{pname}"
            params.append(ParamShape(name=pname, shape=tuple(int(d) for d in p.shape)))
        if is_linear:
            kind = "linear"
            w = module.weight
            in_f, out_f = (
                (int(w.shape[0]), int(w.shape[1])) if isinstance(module, Conv1D) else (int(w.shape[1]), int(w.shape[0]))
            )
        elif isinstance(module, nn.Embedding):
            kind, in_f, out_f = "embedding", int(module.num_embeddings), int(module.embedding_dim)
        elif "norm" in type(module).__name__.lower():
            kind, in_f, out_f = "norm", 0, 0
        else:
            kind, in_f, out_f = "other", 0, 0
        rows.append(
            {
                "name": name,
                "cls": type(module).__name__,
                "kind": kind,
                "params": tuple(params),
                "quantizable": (isinstance(module, Conv1D) or type(module) is nn.Linear)
                and should_convert_module(name, skip),
                "peft_linear": is_linear,
                "output_layer": module is output_emb,
                "tied": tied,
                "in_features": in_f,
                "out_features": out_f,
            }
        )
    return rows


def _group(rows: list[dict[str, Any]], layers_prefix: str | None) -> tuple[ModuleGroup, ...]:
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        pattern = _LAYER_INDEX.sub(".*", row["name"])
        key = json.dumps([pattern, row["cls"], [(p.name, p.shape) for p in row["params"]], row["tied"]])
        if key in groups:
            groups[key]["count"] += 1
            continue
        in_layers = layers_prefix is not None and row["name"].startswith(layers_prefix + ".")
        groups[key] = {**row, "name": pattern, "count": 1, "in_layers": in_layers}
    return tuple(ModuleGroup(**g) for g in groups.values())


def _layers_prefix(model: Any, num_layers: int) -> str | None:
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return str(name)
    return None


def _kv_heads(leaves: dict[str, ModuleGroup], heads: int, head_dim: int, configured: int) -> int:
    """KV heads as the projections are built: k_proj's width, or what a fused qkv holds beyond q."""
    if "k_proj" in leaves:
        return leaves["k_proj"].out_features // head_dim
    fused = next((leaves[n] for n in _FUSED_QKV if n in leaves), None)
    if fused is not None and fused.out_features > heads * head_dim:
        return (fused.out_features - heads * head_dim) // (2 * head_dim)
    return configured


def _intermediate(
    layer_groups: list[ModuleGroup], leaves: dict[str, ModuleGroup], hidden: int, experts: int
) -> int | None:
    """The MLP width as built: a dense down projection's input, or a fused expert tensor's non-hidden axis."""
    down = next((leaves[n] for n in _DOWN_LEAVES if n in leaves and leaves[n].kind == "linear"), None)
    if down is not None and experts == 0:
        return down.in_features
    expert_param = next(
        (p for g in layer_groups if g.kind == "other" for p in g.params if len(p.shape) == 3 and "down" in p.name), None
    )
    if expert_param is not None:
        # fused experts' down_proj is (experts, hidden, intermediate) in Mixtral/Qwen/DeepSeek but
        # (experts, intermediate, hidden) in Llama 4 and gpt-oss: take the dimension that is not hidden
        return expert_param.shape[1] if expert_param.shape[2] == hidden else expert_param.shape[2]
    return None


def _qk_norm(text: Any, leaves: dict[str, ModuleGroup], head_dim: int) -> dict[str, Any]:
    """q/k norms as built: a q_norm module's width (per head or the whole projection), or Llama 4's weightless L2
    norm on its RoPE layers (use_qk_norm, no_rope_layers: 1 = the layer uses RoPE)."""
    q_norm = leaves.get("q_norm")
    if q_norm is not None and q_norm.kind == "norm" and q_norm.weight is not None:
        width = q_norm.weight.numel
        return {"qk_norm": "head" if width == head_dim else "token", "qk_norm_layers": q_norm.count}
    if getattr(text, "use_qk_norm", False) and isinstance(getattr(text, "no_rope_layers", None), list):
        rope_layers = sum(1 for uses_rope in text.no_rope_layers if uses_rope)
        return {"qk_norm": "head", "qk_norm_weight": False, "qk_norm_layers": rope_layers}
    return {}


def _sliding(text: Any, layers: int) -> dict[str, Any]:
    """The layers that attend within a window: layer_types' sliding (or Llama 4's chunked) layers, or every layer
    of a config with a sliding_window and no layer_types (Mistral, Phi-3)."""
    types = getattr(text, "layer_types", None)
    if isinstance(types, list):
        sliding = sum(1 for t in types if t == "sliding_attention")
        chunked = sum(1 for t in types if t == "chunked_attention")
        if chunked and getattr(text, "attention_chunk_size", None):
            return {"sliding_window": int(text.attention_chunk_size), "sliding_layers": chunked}
        window = getattr(text, "sliding_window", None)
        return {"sliding_window": int(window), "sliding_layers": sliding} if sliding and window else {}
    window = getattr(text, "sliding_window", None)
    if window and getattr(text, "use_sliding_window", True) is not False:
        return {"sliding_window": int(window), "sliding_layers": layers}
    return {}


def _attention(text: Any, leaves: dict[str, ModuleGroup]) -> dict[str, Any]:
    """The attention variant: DeepSeek's latent attention (its ranks and head widths), gpt-oss's sinks, or standard."""
    if "kv_a_proj_with_mqa" not in leaves:
        sinks = any(p.name == "sinks" for g in leaves.values() for p in g.params)  # GptOssAttention.sinks
        return {"attention": "sinks"} if sinks else {}
    shape = MlaShape(
        q_lora_rank=int(getattr(text, "q_lora_rank", None) or 0),
        kv_lora_rank=int(text.kv_lora_rank),
        qk_nope_head_dim=int(text.qk_nope_head_dim),
        qk_rope_head_dim=int(text.qk_rope_head_dim),
        v_head_dim=int(text.v_head_dim),
    )
    return {"attention": "mla", "mla": shape}


def _moe_layout(layer_groups: list[ModuleGroup], model_type: str, first_moe_layer: int) -> dict[str, Any]:
    """An MoE model's dense layers (a dense MLP's down projection: DeepSeek's first_k_dense_replace, Llama 4's
    interleaved layers) and shared expert (the down projection under shared_expert[s])."""
    downs = [g for g in layer_groups if g.kind == "linear" and g.leaf in _DOWN_LEAVES]
    dense = [g for g in downs if "shared_expert" not in g.name]
    shared = [g for g in downs if "shared_expert" in g.name]
    out: dict[str, Any] = {
        "router": _ROUTERS.get(model_type, "softmax"),
        "experts": _EXPERTS.get(model_type, "grouped"),
        "routing_fp32": model_type not in _ROUTING_IN_ACT_DTYPE,
    }
    if dense:
        out |= {"dense_layers": dense[0].count, "dense_intermediate_size": dense[0].in_features}
        out["first_moe_layer"] = first_moe_layer
    if shared:
        out["shared_expert_size"] = shared[0].in_features
    return out


def _first_moe_layer(model: Any) -> int:
    """The index of the first decoder layer that holds experts (a module named ...experts)."""
    indices = [
        int(m.group(1))
        for name, _ in model.named_modules()
        if name.endswith(".experts") and (m := _LAYER_INDEX.search(name))
    ]
    return min(indices, default=0)


def _fp32_params(model: Any) -> tuple[str, ...]:
    """Parameters a 16-bit build keeps in fp32 (DeepSeek's router weight), as group patterns."""
    import torch

    names = {_LAYER_INDEX.sub(".*", n) for n, p in model.named_parameters() if p.dtype == torch.float32}
    return tuple(sorted(names))


def _arch(cfg: Any, groups: tuple[ModuleGroup, ...], model: Any) -> ArchSummary:
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def get(*names: str, default: Any = None) -> Any:
        return next((getattr(text, n) for n in names if getattr(text, n, None) is not None), default)

    hidden = int(get("hidden_size", "n_embd", "d_model"))
    layers = int(get("num_hidden_layers", "n_layer", "num_layers"))
    heads = int(get("num_attention_heads", "n_head"))
    head_dim = int(get("head_dim", default=hidden // heads))
    layer_groups = [g for g in groups if g.in_layers]
    leaves = {g.leaf: g for g in layer_groups}
    kv_heads = _kv_heads(leaves, heads, head_dim, int(get("num_key_value_heads", "num_kv_heads", default=heads)))
    experts = int(get("num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    intermediate = _intermediate(layer_groups, leaves, hidden, experts) or int(
        get("intermediate_size", "ffn_hidden_size", "moe_intermediate_size", default=4 * hidden)
    )
    gated = any(g.leaf in _GATED_LEAVES for g in layer_groups) or any(
        "gate_up" in p.name for g in layer_groups for p in g.params
    )
    norms = sum(1 for g in layer_groups if g.kind == "norm" and ".mlp." not in g.name and ".self_attn." not in g.name)
    parallel = bool(get("use_parallel_residual", "parallel_attn", default=False)) or norms == 1
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    norm_cls = next((g.cls for g in layer_groups if g.kind == "norm"), "")
    norm_kind = (
        "layer" if "LayerNorm" in norm_cls and "RMS" not in norm_cls else ("gemma" if "Gemma" in norm_cls else "rms")
    )
    return ArchSummary(
        model_type=str(cfg.model_type),
        architecture=str(archs[0]),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, kv_heads),
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=int(get("vocab_size")),
        tie_word_embeddings=any(g.tied for g in groups),
        num_experts=experts,
        experts_per_token=int(get("num_experts_per_tok", "moe_topk", default=0) or 0) if experts else 0,
        mlp_gated=gated,
        parallel_block=parallel,
        norms_per_layer=norms,
        norm_kind=norm_kind,
        qkv_fused=any(n in leaves for n in _FUSED_QKV),
        gate_up_fused="gate_up_proj" in leaves and leaves["gate_up_proj"].kind == "linear",
        max_position_embeddings=get("max_position_embeddings", "n_positions"),
        # Gemma 2/3 norm both before and after each half; OLMo 2's post-norms replace the pre-norms (the same bytes)
        sandwich_norms="post_feedforward_layernorm" in leaves and "pre_feedforward_layernorm" in leaves,
        sdpa=bool(getattr(type(model), "_supports_sdpa", True)),
        flash_attention=bool(getattr(type(model), "_supports_flash_attn", True)),
        fp32_params=_fp32_params(model),
        lora_unsafe=tuple(sorted({_LORA_UNSAFE[g.cls] for g in layer_groups if g.cls in _LORA_UNSAFE})),
        **_qk_norm(text, leaves, head_dim),
        **_sliding(text, layers),
        **_attention(text, leaves),
        **(_moe_layout(layer_groups, str(cfg.model_type), _first_moe_layer(model)) if experts else {}),
    )


def _published_mxfp4(config: dict[str, Any]) -> bool:
    """The checkpoint stores its experts in MXFP4: `quantization_config.quant_method` is mxfp4 (gpt-oss's config);
    from_config does not apply it, so the inventory counts them unquantized (app/core/mxfp4.py)."""
    quantization = config.get("quantization_config")
    return isinstance(quantization, dict) and quantization.get("quant_method") == "mxfp4"


def build_spec(
    config: dict[str, Any],
    *,
    model_id: str,
    source: ModelSource,
    revision: str | None = None,
    published_params: int | None = None,
) -> ModelSpec:
    """Instantiate the model on the meta device and read its exact inventory."""
    if not isinstance(config, dict):
        raise MalformedConfig("config.json must be a JSON object")
    _check_values(config)
    import transformers

    cfg = _load_config(config)
    model = _instantiate(cfg)
    rows = _module_rows(model)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    num_layers = int(getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 0) or 0)
    groups = _group(rows, _layers_prefix(model, num_layers))
    total = sum(p.numel() for p in model.parameters())
    spec = ModelSpec(
        id=model_id,
        source=source,
        revision=revision,
        config_hash=config_hash(config),
        transformers_version=transformers.__version__,
        arch=_arch(cfg, groups, model).model_copy(update={"mxfp4_experts": _published_mxfp4(config)}),
        groups=groups,
        published_params=published_params,
    )
    if spec.num_params != total:  # the inventory must be exact; anything else is a bug here
        raise AssertionError(f"inventory counts {spec.num_params} parameters, model has {total}")
    return spec
