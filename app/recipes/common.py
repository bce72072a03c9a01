"""Settings several formats share: optimizer names, attention names, dtypes, LoRA targets, DeepSpeed and FSDP."""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from app.core.plan import ALL_LINEAR
from app.recipes.rules import Approx, BadValue, Ctx, Doc, NotModelledValue, Outcome, as_str

# transformers OptimizerNames (src/transformers/training_args.py, v5.24) -> gpuplan optimizer; axolotl and
# LLaMA-Factory pass `optimizer` / `optim` through to it. Everything else is reported as not modelled.
_FUSED = "fused AdamW has no foreach sqrt(exp_avg_sq) temporary, which gpuplan's adamw counts (a slight overestimate)"
OPTIMIZERS: dict[str, tuple[str, str | None]] = {
    "adamw_torch": ("adamw", None),
    "adamw_torch_fused": ("adamw", _FUSED),
    "adamw_hf": ("adamw", "transformers' own AdamW (before v5) steps one tensor at a time: no foreach temporary"),
    "adamw_bnb_8bit": ("adamw_8bit", None),
    "adamw_8bit": ("adamw_8bit", None),  # transformers: "just an alias for adamw_bnb_8bit"
    "paged_adamw_32bit": ("paged_adamw_32bit", None),
    "paged_adamw_8bit": ("paged_adamw_8bit", None),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
}
KNOWN_OPTIMIZERS = (
    "adamw_torch, adamw_torch_fused, adamw_bnb_8bit/adamw_8bit, paged_adamw_32bit, paged_adamw_8bit, adafactor, sgd"
)


def optimizer(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        return {}
    name = as_str(value)
    if name not in OPTIMIZERS:
        raise NotModelledValue(f"gpuplan models the optimizers {KNOWN_OPTIMIZERS}; {name} keeps other states")
    plan_name, caveat = OPTIMIZERS[name]
    return Approx({"optimizer": plan_name}, caveat) if caveat else {"optimizer": plan_name}


# transformers attn_implementation values (modeling_utils) -> gpuplan attn
ATTENTION = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "eager": "eager"}


def attention(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        return {}
    name = as_str(value)
    if name not in ATTENTION:
        raise NotModelledValue(f"gpuplan models sdpa, flash_attention_2 and eager attention, not {name}")
    return {"attn": ATTENTION[name]}


# torch dtype names as configs spell them -> gpuplan dtype
DTYPES = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}


def dtype_name(value: Any) -> str | None:
    """gpuplan's dtype for a torch dtype name (`torch.bfloat16` too); None for `auto`."""
    name = as_str(value).removeprefix("torch.")
    if name == "auto":
        return None
    if name not in DTYPES:
        raise BadValue(f"{name!r} is not a dtype (bfloat16, float16, float32 or auto)")
    return DTYPES[name]


def lora_targets(value: Any) -> tuple[str, ...] | str:
    """PEFT target_modules: a list of names (suffix match), 'all-linear', or a regex string (not modelled)."""
    if isinstance(value, str):
        if value.strip() in (ALL_LINEAR, "all_linear"):
            return ALL_LINEAR
        raise NotModelledValue(
            "a target_modules string is a regex PEFT full-matches against module paths; "
            "gpuplan needs module names (a list, or all-linear)"
        )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadValue("expected a list of module names or 'all-linear'")
    if not value:
        raise NotModelledValue("no target modules (only target_parameters are adapted)")
    return tuple(v.strip() for v in value)


# -- DeepSpeed: an inline config, a JSON string, or a file name both projects ship -------------------------

# LLaMA-Factory examples/deepspeed/*.json and axolotl deepspeed_configs/*.json, read once: (stage, optimizer
# offload, parameter offload)
# (stage, optimizer offloaded, parameters offloaded, bucket sizes): LLaMA-Factory examples/deepspeed (ds_z3*: every
# bucket "auto"; ds_z2*: reduce_bucket_size 5e8, DeepSpeed's default; at 1d6e8b2) and axolotl deepspeed_configs
# (zero3.json, zero3_bf16.json: "auto"; zero1/zero2: none given, DeepSpeed's defaults; at 2341b2c / b371df7 / 58b1d3a)
DEEPSPEED_FILES: dict[str, tuple[int, bool, bool, str]] = {
    "ds_z0_config.json": (0, False, False, "deepspeed"),
    "ds_z2_config.json": (2, False, False, "deepspeed"),
    "ds_z2_offload_config.json": (2, True, False, "deepspeed"),
    "ds_z3_config.json": (3, False, False, "auto"),
    "ds_z3_offload_config.json": (3, True, True, "auto"),
    "zero1.json": (1, False, False, "deepspeed"),
    "zero1_torch_compile.json": (1, False, False, "deepspeed"),
    # axolotl's zero2 files offload the optimizer ("offload_optimizer": {"device": "cpu"}: deepspeed_configs/zero2.json
    # at 58b1d3a, zero2_torch_compile.json at 1377ccc)
    "zero2.json": (2, True, False, "deepspeed"),
    "zero2_torch_compile.json": (2, True, False, "deepspeed"),
    "zero3.json": (3, False, False, "auto"),
    "zero3_bf16.json": (3, False, False, "auto"),
    "zero3_bf16_cpuoffload_all.json": (3, True, True, "auto"),
    "zero3_bf16_cpuoffload_params.json": (3, False, True, "auto"),
}
# axolotl's zero3.json and zero3_bf16.json set stage3_max_live_parameters and stage3_max_reuse_distance to 0
_NO_REUSE_FILES = frozenset({"zero3.json", "zero3_bf16.json"})
_STAGE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:ds_)?z(?:ero)?[_-]?([0-3])(?:[^0-9]|$)")
_REDUCE_BUCKET_DEFAULT = 500_000_000  # DeepSpeed's reduce_bucket_size (runtime/zero/config.py)
_NO_REUSE = (
    "stage3_max_reuse_distance / max_live_parameters 0 (gathered parameters released at once) is not modelled: the "
    "estimate keeps DeepSpeed's 1e9, which holds more gathered parameters"
)


class ZeroConfig(NamedTuple):
    """What a DeepSpeed config says of ZeRO that the plan models, and what it says that the plan does not."""

    stage: int
    optimizer_off: bool
    params_off: bool
    buckets: str = "deepspeed"  # the plan's zero_buckets
    unmodelled: str = ""


def deepspeed(value: Any, _ctx: Ctx) -> Outcome:
    if value in (None, "", {}):
        return {}
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadValue("an inline DeepSpeed config must be a JSON object") from None
    if isinstance(value, dict):
        return _zero(_inline_zero(value), source="the inline config")
    return _zero(_named_zero(as_str(value)), source="the file name")


def _inline_zero(config: dict[str, Any]) -> ZeroConfig:
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise BadValue("zero_optimization must be a mapping")
    stage = zero.get("stage", 0)
    if stage == "auto" or isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        raise NotModelledValue(f"zero_optimization.stage={stage!r}: gpuplan needs stage 0-3")

    def offloaded(key: str) -> bool:
        part = zero.get(key) or {}
        return isinstance(part, dict) and part.get("device") in ("cpu", "nvme")

    buckets, unmodelled = _buckets(zero)
    return ZeroConfig(stage, offloaded("offload_optimizer"), offloaded("offload_param"), buckets, unmodelled)


def _buckets(zero: dict[str, Any]) -> tuple[str, str]:
    """zero_buckets from zero_optimization: `"auto"` (transformers fills it from the hidden size), DeepSpeed's
    defaults when absent or 5e8; another size is planned at the defaults and said. Reuse distance 0 is said too."""
    reduce = zero.get("reduce_bucket_size", _REDUCE_BUCKET_DEFAULT)
    notes = []
    if reduce == "auto":
        buckets = "auto"
    else:
        buckets = "deepspeed"
        if reduce != _REDUCE_BUCKET_DEFAULT:
            notes.append(
                f"reduce_bucket_size {reduce!r}: gpuplan models DeepSpeed's 5e8 or transformers' auto (hidden²); "
                "planned at 5e8"
            )
    reuse = [zero.get(k) for k in ("stage3_max_reuse_distance", "max_reuse_distance", "stage3_max_live_parameters")]
    if any(v == 0 for v in reuse):
        notes.append(_NO_REUSE)
    return buckets, "; ".join(notes)


def _named_zero(path: str) -> ZeroConfig:
    base = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if base in DEEPSPEED_FILES:
        return ZeroConfig(*DEEPSPEED_FILES[base], unmodelled=_NO_REUSE if base in _NO_REUSE_FILES else "")
    match = _STAGE_IN_NAME.search(base)
    if not match:
        raise NotModelledValue(
            "gpuplan cannot read the DeepSpeed file; give the config inline, or a name such as ds_z3_config.json"
        )
    stage, offload = int(match.group(1)), "offload" in base
    if offload and stage == 3 and ("param" in base) != ("optim" in base):
        return ZeroConfig(stage, "optim" in base, "param" in base)
    return ZeroConfig(stage, offload, offload and stage == 3)


def _zero(config: ZeroConfig, *, source: str) -> Outcome:
    """DeepSpeed ZeRO stage, offload and bucket sizes as gpuplan sharding: 0 is plain data parallel, 2 and 3 are
    zero2/zero3."""
    stage, optimizer_off, params_off = config.stage, config.optimizer_off, config.params_off
    if stage == 1:
        raise NotModelledValue("ZeRO-1 shards only optimizer states; gpuplan has zero2 (states and gradients)")
    sharding = {0: "ddp", 2: "zero2", 3: "zero3"}[stage]
    values: dict[str, Any] = {"sharding": sharding, "offload": optimizer_off and stage > 0}
    if stage > 0:
        values["zero_buckets"] = config.buckets
    notes = [config.unmodelled] if config.unmodelled and stage > 0 else []
    if stage == 3 and optimizer_off != params_off:
        which = "optimizer states" if optimizer_off else "parameters"
        values["offload"] = False
        notes.insert(
            0, f"ZeRO-3 offloads only {which} ({source}); gpuplan's offload moves both, so it is planned without"
        )
    return Approx(values, "; ".join(notes)) if notes else values


# -- FSDP: transformers `fsdp` options and fsdp_config, axolotl fsdp / fsdp_config -------------------------

_FSDP1_GRAD_OP = (
    "FSDP1 SHARD_GRAD_OP is sharding fsdp_grad_op: FSDP2 with reshard_after_forward=False unless the config's "
    "fsdp_version is 1 (then FSDP1's own terms, measured on CPU ranks)"
)
# torch.distributed.fsdp.ShardingStrategy names (and transformers' lowercase option names)
FSDP_STRATEGIES: dict[str, str | None] = {
    "full_shard": "fsdp",
    "shard_grad_op": "fsdp_grad_op",
    "no_shard": "ddp",
    "hybrid_shard": None,
    "hybrid_shard_zero2": None,
    "_hybrid_shard_zero2": None,
}
_FSDP_NUMBERED = {1: "full_shard", 2: "shard_grad_op", 3: "no_shard", 4: "hybrid_shard", 5: "_hybrid_shard_zero2"}


def fsdp_strategy(name: str) -> Outcome:
    key = name.lower()
    if key not in FSDP_STRATEGIES:
        raise BadValue(f"{name!r} is not an FSDP sharding strategy")
    sharding = FSDP_STRATEGIES[key]
    if sharding is None:
        raise NotModelledValue(f"{name}: hybrid sharding (shard within a node, replicate across) is not modelled")
    if sharding == "fsdp_grad_op":
        return Approx({"sharding": sharding}, _FSDP1_GRAD_OP)
    return {"sharding": sharding}


def fsdp_options(value: Any, _ctx: Ctx) -> Outcome:
    """transformers `fsdp`: "full_shard auto_wrap offload", a list of those words, or true (full_shard)."""
    if value in (None, False, "", []):
        return {}
    words = ["full_shard"] if value is True else value.split() if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise BadValue("expected FSDP options such as 'full_shard auto_wrap'")
    strategies = [w for w in words if w.lower() in FSDP_STRATEGIES]
    out = fsdp_strategy(strategies[0]) if strategies else {"sharding": "fsdp"}
    if "offload" in words:
        values = dict(out.values if isinstance(out, Approx) else out, offload=True)
        return Approx(values, "FSDP CPU offload moves parameters and gradients; gpuplan's moves parameters and states")
    return out


def fsdp_sharding_strategy(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        return {}
    if isinstance(value, int) and not isinstance(value, bool) and value in _FSDP_NUMBERED:
        return fsdp_strategy(_FSDP_NUMBERED[value])
    return fsdp_strategy(as_str(value))


def fsdp_version_of(root: Doc) -> int | None:
    """The FSDP version a file asks for: axolotl's top-level `fsdp_version`, or fsdp_config's `version` /
    `fsdp_version` (accelerate's FullyShardedDataParallelPlugin.fsdp_version; 1 when unset)."""
    config = root.get("fsdp_config")
    nested = first_of(config, "fsdp_version", "version") if isinstance(config, dict) else None
    value = first_of(root, "fsdp_version") if nested is None else nested
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# accelerate 1.16 with mixed_precision bf16/fp16 under FSDP (the Trainer's bf16 / fp16 over fp32 weights):
# utils/dataclasses.py FullyShardedDataParallelPlugin.set_mixed_precision builds the policy for either version
# (FSDP2's MixedPrecisionPolicy, FSDP1's MixedPrecision), state.py sets it whenever mixed_precision != "no".
# Accelerator.prepare_model wraps the forward in torch.autocast (native_amp) before FSDP1 wraps the model; FSDP2's
# path (`_prepare_fsdp2`, accelerate >= 1.8) calls fsdp2_prepare_model without prepare_model, so no autocast there.
# FSDP1: fsdp_mixed_precision and autocast; FSDP2: fsdp_mixed_precision alone (both measured on CPU ranks:
# calibration/cpu-matrix-multi-mp*.toml, cpu-matrix-multi-mp-autocast.toml).


# transformers 5 TrainingArguments: `int(self.fsdp_config.get("version", 2))` (training_args.py
# `_process_fsdp_args`), so an fsdp_config without a version is FSDP2, the plan's default. accelerate's own plugin
# defaults to 1 (accelerate/utils/dataclasses.py FullyShardedDataParallelPlugin.__post_init__:
# `int(os.environ.get("FSDP_VERSION", "1"))`), but a Trainer run always passes the version it read.
FSDP_DEFAULT_VERSION = 2


def fsdp_version(value: Any, _ctx: Ctx) -> Outcome:
    """`fsdp_config.version` / `fsdp_version` (transformers, accelerate, axolotl): 1 is FSDP1
    (FullyShardedDataParallel), 2 FSDP2 (fully_shard); absent: FSDP_DEFAULT_VERSION."""
    if value is None:
        return {}
    try:
        version = int(as_str(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise BadValue(f"{value!r} is not an FSDP version: give 1 or 2") from None
    if version not in (1, 2):
        raise BadValue(f"FSDP version {version} does not exist: give 1 or 2")
    return {"fsdp_version": version}


# accelerate 1.15 constants.FSDP_BACKWARD_PREFETCH (the plugin also takes their 1-based index, or torch's
# BackwardPrefetch values BACKWARD_PRE=1, BACKWARD_POST=2): FullyShardedDataParallelPlugin.__post_init__
_BACKWARD_PREFETCH = {"BACKWARD_PRE": "pre", "BACKWARD_POST": "post", "NO_PREFETCH": "none", "1": "pre", "2": "post"}


def fsdp_backward_prefetch(value: Any, ctx: Ctx) -> Outcome:
    """`fsdp_config.backward_prefetch` / `fsdp_backward_prefetch` (transformers, accelerate, axolotl): FSDP1's
    prefetch; absent, transformers passes NO_PREFETCH (training_args.py `_process_fsdp_args`, 5.24), the plan's
    default. FSDP2 has none: accelerate drops it there (`backward_prefetch is not supported in FSDP2`)."""
    if value is None or fsdp_version_of(ctx.root) != 1:
        return {}
    name = as_str(value).upper() if isinstance(value, str) else str(value)
    if name not in _BACKWARD_PREFETCH:
        raise BadValue(f"{value!r} is not an FSDP backward prefetch: give BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH")
    return {"fsdp_backward_prefetch": _BACKWARD_PREFETCH[name]}


def fsdp_key(key: str) -> str:
    """fsdp_config keys come with (accelerate, FSDP1) or without (FSDP2, axolotl) the `fsdp_` prefix."""
    return key.removeprefix("fsdp_")


def first_of(doc: Doc, *names: str) -> Any:
    """The first of `names` the mapping sets (aliases such as dtype / torch_dtype)."""
    for name in names:
        if doc.get(name) is not None:
            return doc[name]
    return None
