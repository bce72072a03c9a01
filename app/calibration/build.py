"""Build what a plan trains from a config: the cut config, the (quantized, LoRA-wrapped) model, the optimizer.

Weights are random (memory depends on shapes, not values) and nothing is downloaded. torch, transformers,
peft and bitsandbytes are imported inside the functions; the last three are only partly typed, so they are
reached through ``_lib`` as ``Any`` and a model is typed ``Any`` (a transformers or a PEFT model).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.core.plan import ALL_LINEAR, TrainingPlan
from app.core.step import kbit_upcast
from app.errors import CalibrationError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CPU_OPTIMIZERS = ("adamw", "sgd", "adafactor")
LEARNING_RATE = 1e-4
# bitsandbytes optimizers, by plan name (cuda only)
BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
}
# config attributes that are lists by design, not one entry per layer
_NOT_PER_LAYER = frozenset({"architectures"})


def _lib(name: str) -> Any:
    return importlib.import_module(name)


def build_config(config: dict[str, Any], layers: int | None) -> Any:
    """The transformers config for `config`, cut to `layers` decoder layers (per-layer lists cut too).

    use_cache is switched off: a training step keeps no KV cache (fine-tuning recipes set use_cache=False).
    """
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not isinstance(model_type, str):
        raise CalibrationError("the config has no model_type: give a config.json from the Hub")
    try:
        with quiet():
            cfg = _lib("transformers").AutoConfig.for_model(model_type, **fields)
    except Exception as exc:
        raise CalibrationError(f"transformers cannot build a {model_type} config: {exc}") from exc
    total = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise CalibrationError(f"the {model_type} config has no num_hidden_layers: the harness cuts depth through it")
    if layers is not None:
        if not 1 <= layers <= total:
            raise CalibrationError(f"layers must be between 1 and the model's {total} (got {layers})")
        if layers < total:
            _truncate(cfg, total, layers)
    cfg.use_cache = False
    return cfg


def _truncate(cfg: Any, total: int, layers: int) -> None:
    cfg.num_hidden_layers = layers
    # per-layer fields (layer_types, Gemma3n's per-layer lists, ...) have one entry per layer
    for name, value in list(vars(cfg).items()):
        if isinstance(value, list) and len(value) == total and name not in _NOT_PER_LAYER:
            setattr(cfg, name, value[:layers])
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as exc:
            raise CalibrationError(f"the config is invalid once cut to {layers} layers: {exc}") from exc


def torch_dtype(plan: TrainingPlan, dtype: str | None = None) -> torch.dtype:
    """The torch dtype of `dtype` (default: the plan's compute dtype)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype or plan.dtype]


def build_model(cfg: Any, plan: TrainingPlan) -> Any:
    """The model as the plan trains it, on plan.device and in train mode.

    Quantized if qlora (as transformers loads with a BitsAndBytesConfig), prepared with
    peft.prepare_model_for_kbit_training, checkpointed every layer, LoRA/DoRA-wrapped unless method is full.
    Any failure of the libraries becomes a CalibrationError that keeps their message.
    """
    return _built(cfg, plan, _prepare)


def _built(cfg: Any, plan: TrainingPlan, prepare: Callable[[Any, TrainingPlan], Any]) -> Any:
    """`prepare(loaded model, plan)` quietly, in train mode; a library's failure as a CalibrationError."""
    try:
        with quiet():
            model = prepare(_load(cfg, plan), plan)
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"building the {plan.method} model failed: {type(exc).__name__}: {exc}") from exc
    model.train()
    return model


def _load(cfg: Any, plan: TrainingPlan) -> Any:
    transformers = _lib("transformers")
    dtype = torch_dtype(plan)
    # autocast: the weights are loaded in fp32 and only the step's matmuls run in the plan dtype
    model = transformers.AutoModelForCausalLM.from_config(
        cfg, dtype=torch_dtype(plan, plan.weight_dtype), attn_implementation=plan.attn
    )
    if not plan.quantized:
        return model.to(plan.device)
    if plan.quant == "int8":
        quantization = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=plan.quant,
            bnb_4bit_use_double_quant=plan.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # PEFT's FSDP+QLoRA recipe (docs "FSDP", accelerate fsdp_qlora): the packed weights stored in the compute
            # dtype, so FSDP shards them like every other parameter (same bytes: 2 nf4 values a byte either way)
            **({"bnb_4bit_quant_storage": dtype} if plan.sharding in ("fsdp", "fsdp_grad_op") else {}),
        )
    # bitsandbytes quantizes while transformers loads: round-trip the random weights through safetensors
    with tempfile.TemporaryDirectory(prefix="gpuplan-calibration-") as tmp:
        model.save_pretrained(tmp)
        del model
        return transformers.AutoModelForCausalLM.from_pretrained(
            tmp,
            quantization_config=quantization,
            dtype=dtype,
            attn_implementation=plan.attn,
            device_map={"": plan.device},
        )


def _prepare(model: Any, plan: TrainingPlan) -> Any:
    model = prepare_base(model, plan)
    if plan.method == "full":
        return model
    return _lib("peft").get_peft_model(model, lora_config(plan))


def prepare_base(model: Any, plan: TrainingPlan) -> Any:
    """The loaded model before PEFT wraps it: QLoRA through prepare_model_for_kbit_training, checkpointing as the
    plan says, every weight trainable for full fine-tuning (the SFTTrainer loop wraps it itself: peft_config=)."""
    peft = _lib("peft")
    # explicit either way: torch 2.13 warns without use_reentrant and then falls back to reentrant
    checkpointing = {"use_reentrant": plan.reentrant}
    if plan.method == "qlora" and not kbit_upcast(plan):
        _prepare_sharded_qlora(model, checkpointing, plan)
    elif plan.method == "qlora":
        # also upcasts every non-quantized weight (embeddings, norms, lm_head) to fp32, as QLoRA training does
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
        if (
            plan.checkpoint_every > 1 or plan.checkpoint_offload
        ):  # PEFT has neither: enable it again, as a Trainer would
            _checkpoint_layers(model, checkpointing, plan)
    elif plan.gradient_checkpointing:
        _checkpoint_layers(model, checkpointing, plan)
        if plan.method == "lora":
            model.enable_input_require_grads()
    if plan.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    return model


def _prepare_sharded_qlora(model: Any, checkpointing: dict[str, Any], plan: TrainingPlan) -> None:
    """QLoRA under FSDP1 as the frameworks build it (`app.core.step.kbit_upcast`): no prepare_model_for_kbit_training,
    so the embeddings, norms and lm_head stay in the compute dtype beside the 4-bit weights stored in it (one dtype
    per FlatParameter), the adapters fp32 in their own units (PEFT's fsdp_auto_wrap_policy, app/calibration/
    fsdp1.py); checkpointing as for LoRA (trl 1.16.0 trl/trainer/sft_trainer.py `SFTTrainer.__init__`: the Trainer's
    gradient_checkpointing_enable, then enable_input_require_grads for a PEFT model); get_peft_model freezes the
    base."""
    if plan.gradient_checkpointing:
        _checkpoint_layers(model, checkpointing, plan)
        model.enable_input_require_grads()


def lora_config(plan: TrainingPlan) -> Any:
    """PEFT's LoraConfig of the plan."""
    return _lib("peft").LoraConfig(
        r=plan.rank,
        lora_alpha=plan.alpha,
        lora_dropout=plan.dropout,
        target_modules=ALL_LINEAR if plan.targets == ALL_LINEAR else list(plan.targets),
        use_dora=plan.dora,
        use_rslora=plan.rslora,
        task_type="CAUSAL_LM",
    )


def build_base(cfg: Any, plan: TrainingPlan) -> Any:
    """`build_model` without the LoRA wrapping (`prepare_base`), in train mode; failures as CalibrationError."""
    return _built(cfg, plan, prepare_base)


def _checkpoint_layers(model: Any, kwargs: dict[str, Any], plan: TrainingPlan) -> None:
    """Checkpoint every `checkpoint_every`-th decoder layer, its saved inputs in host memory with checkpoint_offload
    (transformers 5's activation_checkpointing_enable; older versions have only gradient_checkpointing_enable,
    which checkpoints every layer on the device)."""
    every = plan.checkpoint_every
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every, offload=plan.checkpoint_offload
        )
    elif every > 1 or plan.checkpoint_offload:
        raise CalibrationError(
            "checkpoint_every and checkpoint_offload need transformers 5 (activation_checkpointing_enable)"
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_optimizer(model: Any, plan: TrainingPlan) -> torch.optim.Optimizer:
    """The plan's optimizer over the model's trainable parameters (bitsandbytes ones need cuda)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise CalibrationError("the plan leaves no trainable parameter: check the LoRA targets")
    cls, kwargs = optimizer_class(plan)
    optimizer: torch.optim.Optimizer = cls(trainable, **kwargs)
    return optimizer


def optimizer_class(plan: TrainingPlan) -> tuple[Any, dict[str, Any]]:
    """The plan's optimizer class and its keyword arguments (what Trainer's `optimizer_cls_and_kwargs` takes): torch
    AdamW with foreach, as on CUDA; SGD; transformers' Adafactor without its relative step; bitsandbytes' on cuda."""
    import torch

    if plan.optimizer == "adamw":
        return torch.optim.AdamW, {"lr": LEARNING_RATE, "foreach": True}
    if plan.optimizer == "sgd":
        return torch.optim.SGD, {"lr": LEARNING_RATE}
    if plan.optimizer == "adafactor":
        adafactor = _lib("transformers.optimization").Adafactor
        return adafactor, {"lr": LEARNING_RATE, "scale_parameter": False, "relative_step": False}
    if plan.device != "cuda":
        raise CalibrationError(
            f"optimizer {plan.optimizer} needs bitsandbytes on cuda; the cpu reference supports "
            f"{', '.join(CPU_OPTIMIZERS)}"
        )
    return getattr(_lib("bitsandbytes.optim"), BNB_OPTIMIZERS[plan.optimizer]), {"lr": LEARNING_RATE}


@contextmanager
def quiet() -> Iterator[None]:
    """Keep library warnings and progress bars inside a build or run; the warnings are logged at INFO instead.

    Seen with torch 2.13, transformers 5.24, peft 0.21, bitsandbytes 0.50: DeprecationWarning
    "`torch.jit.script_method` is deprecated" (torch.utils.mkldnn, imported on the way to quantizing) and the
    FutureWarnings "`gradient_checkpointing_enable` is deprecated" and "`is_gradient_checkpointing` is
    deprecated" (peft calling transformers' old names).
    """
    hf_logging = _lib("transformers.utils.logging")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for (category, message), count in Counter((w.category.__name__, str(w.message)) for w in caught).items():
        log.info("calibration warned (%d x): %s: %s", count, category, message)
