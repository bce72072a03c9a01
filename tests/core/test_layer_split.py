"""Layers split across GPUs as device_map="auto" places them (app/core/layer_split.py)."""

from __future__ import annotations

from app.core.estimate import estimate, gpu_share, layer_split_shares
from app.core.evidence import layer_split_measured, term_evidence
from app.core.layer_split import GpuPart, device_map_parts, splits_layers
from app.core.plan import TrainingPlan
from tests.configs import spec


def test_a_split_of_llama_2_leaves_gpu_0_lighter_and_the_rest_on_the_last() -> None:
    """Llama-2-7B in bf16 (32 layers of 405 MB, 262 MB embeddings and lm_head) on 2 GPUs: per_gpu = 13.48 GB / 2 +
    1.25 x 405 MB, GPU 0 keeps a layer's room, so it runs 16 layers beside embed_tokens and GPU 1 the other 16 with
    the final norm and lm_head (the map transformers computes: tests/calibration/test_layer_split.py)."""
    parts = device_map_parts(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(method="full", gpus=2))
    assert parts == (
        GpuPart(gpu=0, layers=16, embed=True, head=False, tail=False, first_layer=True),
        GpuPart(gpu=1, layers=16, embed=False, head=True, tail=True, first_layer=False),
    )


def test_every_layer_and_the_rest_are_placed_once() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    for gpus in range(2, 12):
        parts = device_map_parts(model, TrainingPlan(method="lora", gpus=gpus))
        assert sum(p.layers for p in parts) == model.arch.num_layers
        assert [p.embed for p in parts].count(True) == [p.head for p in parts].count(True) == 1
        shares = layer_split_shares(model, TrainingPlan(method="lora", gpus=gpus))
        assert abs(sum(s.other_fraction for s in shares) - 1) < 1e-9


def test_int8_splits_keep_the_bound_and_other_layouts_are_untouched() -> None:
    assert splits_layers(TrainingPlan(method="qlora", gpus=2))
    assert not splits_layers(TrainingPlan(method="qlora", quant="int8", gpus=2))
    assert not splits_layers(TrainingPlan(method="full", gpus=2, sharding="ddp"))
    assert not splits_layers(TrainingPlan(method="full", gpus=1))
    share = gpu_share(TrainingPlan(method="qlora", quant="int8", gpus=4), 32)
    assert (share.layers, share.other_fraction, share.part) == (8, 1.0, None)


def test_the_worst_gpu_is_the_highest_of_the_gpus() -> None:
    """The estimate of a split plan is its worst GPU's: at most the whole model's on one GPU, at least its share."""
    model = spec("meta-llama/Llama-2-7b-hf")
    one = estimate(model, TrainingPlan(method="full", gpus=1, seq_len=2048)).device_bytes
    two = estimate(model, TrainingPlan(method="full", gpus=2, seq_len=2048)).device_bytes
    assert one / 2 < two < one


def test_the_measured_splits_count_as_measured_on_cpu_ranks() -> None:
    for method in ("full", "lora"):
        plan = TrainingPlan(method=method, gpus=2, optimizer="adamw")
        assert layer_split_measured(plan)
        assert term_evidence("activation_bytes", plan) == "measured-cpu-ranks"
    for other in (
        TrainingPlan(method="qlora", gpus=2, optimizer="adamw"),
        TrainingPlan(method="qlora", quant="int8", gpus=2, optimizer="adamw"),
        TrainingPlan(method="lora", gpus=2, optimizer="paged_adamw_32bit"),
        TrainingPlan(method="full", gpus=2, optimizer="adamw", dtype="fp16"),
        TrainingPlan(method="lora", gpus=2, optimizer="adamw", grad_accum_steps=2),
    ):
        assert term_evidence("activation_bytes", other) == "first-principles"
