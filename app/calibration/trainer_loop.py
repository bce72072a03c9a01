"""The second training loop of the harness: the real `transformers.Trainer`, driven by the same plan.

What the Trainer does that the plain loop (harness._run_steps) does not, each of which the tracker sees:
- gradient accumulation: `gradient_accumulation_steps` micro-batches per optimizer step, gradients summed into
  `.grad` between them (transformers/trainer.py, the inner loop over `batch_samples`), and all of one step's
  micro-batches fetched up front (`get_batch_samples`);
- gradient clipping before the optimizer step (`max_grad_norm`, 1.0 by default: `clip_grad_norm_`);
- `model.zero_grad()` after the step (set_to_none), the loss divided for accumulation, the learning-rate schedule;
- checkpointing through `args.gradient_checkpointing` with `gradient_checkpointing_kwargs`: none gives
  transformers 5's non-reentrant default (`_activation_checkpointing_enable`: `{"use_reentrant": False}`).

The model and the optimizer are the harness's own (build_model, build_optimizer: torch AdamW with foreach, as on
CUDA; Trainer's `adamw_torch` would pick the per-tensor loop on CPU tensors), passed in through `optimizers=`.
Weights are loaded in the plan's dtype and the Trainer runs without autocast (bf16=False, fp16=False), as the
plain loop does; with plan.autocast they are loaded in fp32 and the Trainer gets bf16=True / fp16=True. The synthetic dataset holds `input_ids` and `labels` of exactly `seq_len` random tokens.

Phases: micro-batch m < k of step s is `step<s>.micro<m>.forward/.backward`; the last micro-batch is
`step<s>.forward/.backward` (from the second micro-batch on every gradient is alive, so the last one is the
worst) and `step<s>.optimizer` ends after clipping, the step and zero_grad.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from typing import Any

from app.calibration.build import LEARNING_RATE, build_optimizer
from app.calibration.harness import StepLabels, batch_mask, tracked
from app.calibration.measurement import Phase
from app.calibration.offload import host_saved_checkpoints
from app.core.plan import TrainingPlan
from app.errors import CalibrationError

# transformers' default max_grad_norm (TrainingArguments): the Trainer clips before every optimizer step
MAX_GRAD_NORM = 1.0


def trainer_arguments(plan: TrainingPlan, steps: int, seed: int, output_dir: str) -> Any:
    """TrainingArguments for `steps` optimizer steps of the plan: no logging, saving or workers; autocast only
    with plan.autocast."""
    import transformers

    return transformers.TrainingArguments(**argument_fields(plan, steps, seed, output_dir), remove_unused_columns=False)


def argument_fields(plan: TrainingPlan, steps: int, seed: int, output_dir: str) -> dict[str, Any]:
    """The TrainingArguments fields both Trainer loops set (SFTConfig extends TrainingArguments)."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": plan.batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "max_steps": steps,
        "learning_rate": LEARNING_RATE,
        "max_grad_norm": MAX_GRAD_NORM,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "gradient_checkpointing_kwargs": checkpointing_kwargs(plan),
        "use_cpu": plan.device == "cpu",
        # autocast: accelerate wraps the model's forward in torch.autocast(device, dtype) and its outputs in
        # convert_outputs_to_fp32 (Accelerator.prepare_model); SFTConfig defaults bf16=True: say what the plan runs
        "bf16": plan.autocast and plan.dtype == "bf16",
        "fp16": plan.autocast and plan.dtype == "fp16",
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "seed": seed,
        "data_seed": seed,
    }


def checkpointing_kwargs(plan: TrainingPlan) -> dict[str, Any] | None:
    """TrainingArguments.gradient_checkpointing_kwargs: none for transformers' default (non-reentrant, every layer);
    the Trainer pops `every_n_layers` and `offload` before the rest reaches torch.utils.checkpoint (trainer.py,
    "Activate activation checkpointing if needed")."""
    kwargs: dict[str, Any] = {}
    if plan.reentrant:
        kwargs["use_reentrant"] = True
    if plan.checkpoint_every > 1:
        kwargs["every_n_layers"] = plan.checkpoint_every
    if plan.checkpoint_offload:  # the Trainer pops it too, for activation_checkpointing_enable(offload=True)
        kwargs["offload"] = True
    return kwargs or None


def _dataset(vocab_size: int, plan: TrainingPlan, rows: int, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (rows, plan.seq_len), generator=generator)

    class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return rows

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            row = ids[i].clone()
            return {"input_ids": row, "labels": row.clone(), **batch_mask(row)}

    return Tokens()


def run_trainer_steps(
    model: Any, vocab_size: int, plan: TrainingPlan, steps: int, seed: int
) -> tuple[list[Phase], int, int | None]:
    """`steps` optimizer steps of transformers.Trainer on the plan; (phases, peak allocated, peak reserved)."""
    import transformers

    tracker, probe = tracked(model, plan)
    labels = StepLabels(plan.grad_accum_steps)

    class MeasuredTrainer(transformers.Trainer):
        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(*args, **kwargs)
            probe.mark(labels.backward())
            return loss

    class OptimizerMark(transformers.TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            probe.mark(labels.optimizer())

    hook = model.register_forward_hook(lambda *_: probe.mark(labels.forward()))
    rows = plan.batch_size * plan.grad_accum_steps * steps
    with (
        tempfile.TemporaryDirectory(prefix="gpuplan-trainer-") as out,
        tracker or nullcontext(),
        host_saved_checkpoints(plan, tracker),
    ):
        probe.mark("load")
        trainer = MeasuredTrainer(
            model=model,
            args=trainer_arguments(plan, steps, seed, out),
            train_dataset=_dataset(vocab_size, plan, rows, seed),
            optimizers=(build_optimizer(model, plan), None),
            callbacks=[OptimizerMark()],
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # disable_tqdm prints the metrics
        try:
            trainer.train()
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"the Trainer step failed: {type(exc).__name__}: {exc}") from exc
        finally:
            hook.remove()
        del trainer
    reserved = probe.peak_reserved if plan.device == "cuda" else None
    return probe.phases, probe.peak_allocated, reserved
