"""The third training loop of the harness: TRL's real `SFTTrainer`, driven by the same plan.

What SFTTrainer (trl 1.16.0, trl/trainer/sft_trainer.py) does on top of transformers.Trainer
(app/calibration/trainer_loop.py), each of which the tracker sees:
- `peft_config=`: it wraps the model itself (`get_peft_model`, l. 870), then, with checkpointing on,
  `model.enable_input_require_grads()` (l. 899-900), and for a quantized model casts every trainable parameter but
  DoRA's magnitudes to bfloat16 (l. 907-911: LoRA A/B, their gradients and their AdamW states in bf16);
- its fused LM head (`add_fused_lm_head`, trl/trainer/utils.py l. 1548, called at l. 1144): `compute_loss`
  (l. 1560, 1611) calls `model(**inputs, fused_lm_head=True)`, which runs the backbone and scores each position's
  label through `ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py) in [4096 tokens x 32768 vocabulary]
  tiles, with the entropy and top-1 flags its metrics log: the (batch, seq, vocab) logits are never made;
- its collator (`DataCollatorForLanguageModeling`, l. 87): `input_ids`, `labels` (the ids: every token counts)
  and an all-ones `attention_mask`, each row exactly seq_len (`max_length`, l. 1451 truncation);
- for an MoE config with a `router_aux_loss_coef` it turns the load-balancing loss on (l. 1203-1211), computed in
  the fused forward with the collator's attention mask; SFTConfig's router_aux_loss_coef follows plan.router_aux_loss
  (trl 1.16.0 cannot run it on GraniteMoE under transformers 5.24: `text_config.num_experts`, utils.py l. 1679);
- on transformers 5 it leaves `gradient_checkpointing_kwargs` alone (l. 1080-1081: it defaults use_reentrant=False only
  below 5.0), so the Trainer's own non-reentrant default applies.

The model is loaded as the other loops load it (app/calibration/build.py `build_base`: bitsandbytes quantization
and prepare_model_for_kbit_training for QLoRA) but not LoRA-wrapped: SFTTrainer gets it with the plan's LoraConfig.
The dataset is pre-tokenized (`input_ids` of exactly seq_len random tokens, so `_prepare_dataset` skips tokenizing,
l. 1248); the tokenizer SFTTrainer insists on is a two-token one built offline (only its pad token is read). The
optimizer is the harness's (build.optimizer_class, through `optimizer_cls_and_kwargs`); bf16/fp16 only with
plan.autocast (SFTConfig's own default bf16=True is overridden), no logging, saving, evaluation or telemetry.
The tracker starts once SFTTrainer is built (its adapters are the model's, as in the other loops).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from app.calibration.build import lora_config, optimizer_class
from app.calibration.harness import Probe, StepLabels, tracked
from app.calibration.measurement import Phase
from app.calibration.trainer_loop import argument_fields
from app.core.plan import TrainingPlan
from app.errors import CalibrationError


def _lib(name: str) -> Any:
    return importlib.import_module(name)  # trl, tokenizers: untyped, reached as Any


def sft_config(plan: TrainingPlan, steps: int, seed: int, output_dir: str) -> Any:
    """SFTConfig for `steps` optimizer steps of the plan: max_length = seq_len, no packing, no side effects."""
    return _lib("trl").SFTConfig(
        **argument_fields(plan, steps, seed, output_dir),
        max_length=plan.seq_len,
        # MoE: SFTTrainer enables the load-balancing loss whenever the config has a router_aux_loss_coef (l. 1203-1211);
        # the plan's router_aux_loss says whether it runs (0.0 turns it off)
        router_aux_loss_coef=None if plan.router_aux_loss else 0.0,
        packing=plan.packing,  # the harness refuses packed plans (check_plan): its rows are single sequences
        padding_free=False,
    )


def _tokenizer() -> Any:
    """A two-token tokenizer (pad, eos): SFTTrainer needs a processing class and reads only its pad token."""
    tokenizers, transformers = _lib("tokenizers"), _lib("transformers")
    vocab = {"<pad>": 0, "<eos>": 1}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model), pad_token="<pad>", eos_token="<eos>"
    )


def _dataset(vocab_size: int, plan: TrainingPlan, rows: int, seed: int) -> Any:
    """`rows` pre-tokenized rows of exactly seq_len random token ids (no labels: SFTTrainer builds them, all kept)."""
    import datasets
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (rows, plan.seq_len), generator=generator)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist()})


@contextmanager
def _offline() -> Iterator[None]:
    """No Hub telemetry from SFTTrainer's constructor (base_trainer._send_telemetry honours HF_HUB_DISABLE_TELEMETRY),
    no progress bars from its dataset preparation (datasets' map and filter), and transformers' notice that the
    two-token tokenizer's eos differs from the config's (Trainer aligns the config: no tensor changes) kept out."""
    datasets, hf_logging = _lib("datasets"), _lib("transformers.utils.logging")
    bars, verbosity = datasets.is_progress_bar_enabled(), hf_logging.get_verbosity()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    before = os.environ.get("HF_HUB_DISABLE_TELEMETRY")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
        if before is None:
            os.environ.pop("HF_HUB_DISABLE_TELEMETRY", None)
        else:
            os.environ["HF_HUB_DISABLE_TELEMETRY"] = before


def _trainer(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int, out: str, probe: list[Probe]
) -> Any:
    """The SFTTrainer of the plan, marking each micro-batch's forward/backward and each optimizer step on probe[0]."""
    import transformers

    labels = StepLabels(plan.grad_accum_steps)
    sft_trainer: Any = _lib("trl").SFTTrainer

    class MeasuredSFTTrainer(sft_trainer):  # type: ignore[misc]
        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(*args, **kwargs)
            probe[0].mark(labels.backward())
            return loss

    class OptimizerMark(transformers.TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            probe[0].mark(labels.optimizer())

    with _offline():
        trainer = MeasuredSFTTrainer(
            model=model,
            args=sft_config(plan, steps, seed, out),
            train_dataset=_dataset(vocab_size, plan, plan.batch_size * plan.grad_accum_steps * steps, seed),
            processing_class=_tokenizer(),
            peft_config=lora_config(plan) if plan.uses_lora else None,
            optimizer_cls_and_kwargs=optimizer_class(plan),
            callbacks=[OptimizerMark()],
        )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # disable_tqdm prints the metrics
    trainer.model.register_forward_hook(lambda *_: probe[0].mark(labels.forward()))
    return trainer


def run_sft_steps(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int
) -> tuple[list[Phase], int, int | None]:
    """`steps` optimizer steps of trl.SFTTrainer on the plan; (phases, peak allocated, peak reserved)."""
    probe: list[Probe] = []
    with tempfile.TemporaryDirectory(prefix="gpuplan-sft-") as out:
        try:
            trainer = _trainer(model, vocab_size, plan, steps, seed, out, probe)
        except Exception as exc:
            raise CalibrationError(f"building the SFTTrainer failed: {type(exc).__name__}: {exc}") from exc
        del model
        tracker, first = tracked(trainer.model, plan)
        probe.append(first)
        with tracker or nullcontext(), _offline():
            first.mark("load")
            try:
                trainer.train()
            except CalibrationError:
                raise
            except Exception as exc:
                raise CalibrationError(f"the SFTTrainer step failed: {type(exc).__name__}: {exc}") from exc
        del trainer
    reserved = first.peak_reserved if plan.device == "cuda" else None
    return first.phases, first.peak_allocated, reserved
