"""Layers split across GPUs on virtual GPUs (app/calibration/layer_split.py): the map, the attribution, a tiny run."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.calibration.build import build_config, build_model, quiet
from app.calibration.layer_split import (
    PlacedTracker,
    layer_device_map,
    place_model,
    run_layer_split,
    run_placed_steps,
    virtual_to,
)
from app.core.layer_split import device_map_parts
from app.core.plan import TrainingPlan
from app.inventory.cache import cached_spec
from tests.core.test_zero import LLAMA

MISTRAL = {**LLAMA, "model_type": "mistral", "intermediate_size": 896, "num_hidden_layers": 3, "num_key_value_heads": 2}
TINY = {**LLAMA, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY["num_key_value_heads"] = 4


def _plan(**fields: Any) -> TrainingPlan:
    base: dict[str, Any] = {"method": "lora", "optimizer": "adamw", "sharding": "none", "device": "cpu", "seq_len": 32}
    return TrainingPlan(**{**base, **fields})


def _parts_as_map(config: dict[str, Any], plan: TrainingPlan) -> dict[str, int]:
    spec = cached_spec(config, model_id="t", source="file", cache_dir=None)
    found: dict[str, int] = {}
    layer = 0
    for part in device_map_parts(spec, plan):
        if part.embed:
            found["model.embed_tokens"] = part.gpu
        for _ in range(part.layers):
            found[f"model.layers.{layer}"] = part.gpu
            layer += 1
        if part.tail:
            found["model.norm"] = found["model.rotary_emb"] = part.gpu
        if part.head and not config.get("tie_word_embeddings"):
            found["lm_head"] = part.gpu
    if config.get("tie_word_embeddings"):
        found["lm_head"] = found["model.embed_tokens"]  # tied: placed with embed_tokens
    return found


# full-size configs (their map is computed on the meta device): MHA, GQA with a 128k vocabulary, tied embeddings
LLAMA_2_7B = {**LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32}
LLAMA_2_7B.update(num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
LLAMA_3_8B = {**LLAMA_2_7B, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256}
QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24}
QWEN_05B.update(num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


@pytest.mark.parametrize(
    "config",
    [LLAMA, MISTRAL, LLAMA_2_7B, LLAMA_3_8B, QWEN_05B],
    ids=["llama", "mistral", "llama-2-7b", "llama-3-8b", "qwen2.5-0.5b-tied"],
)
@pytest.mark.parametrize("gpus", [2, 3, 4, 8])
@pytest.mark.parametrize("quant", [None, "nf4"])
def test_the_cores_walk_is_transformers_device_map(config: dict[str, Any], gpus: int, quant: str | None) -> None:
    """app/core/layer_split.py's walk places every module where transformers' own _get_device_map("auto") does, 4-bit
    weights (bitsandbytes' quantizer: half a byte an element, 10 % off every budget) too."""
    plan = _plan(gpus=gpus, **({"method": "qlora", "quant": quant} if quant else {}))
    with quiet():
        found = layer_device_map(build_config(config, None), plan)
    mine = _parts_as_map(config, plan)
    # the map names a whole module where it all fits on one GPU ("model.layers", or "" for the whole model)
    assert mine == {name: _owner(found, name) for name in mine}


def _owner(found: dict[str, int], name: str) -> int:
    prefixes = [key for key in found if key == "" or name == key or name.startswith(key + ".")]
    return found[max(prefixes, key=len)]


def test_a_device_map_leaves_gpu_0_light_and_the_head_alone() -> None:
    """The balancing keeps room on GPU 0 for the largest layer: llama 4 layers on 4 GPUs puts embed_tokens alone on
    GPU 0 and lm_head alone on GPU 3 (not ⌈L/n⌉ layers each)."""
    with quiet():
        found = layer_device_map(build_config(LLAMA, None), _plan(gpus=4))
    assert found == {
        "model.embed_tokens": 0,
        "model.layers.0": 1,
        "model.layers.1": 1,
        "model.layers.2": 2,
        "model.layers.3": 2,
        "model.norm": 2,
        "model.rotary_emb": 2,
        "lm_head": 3,
    }


def test_an_op_runs_where_its_inputs_are_and_a_copy_moves_its_gradient_back() -> None:
    tracker = PlacedTracker(2)
    weight = torch.ones(256, 256, requires_grad=True)
    tracker.placed[id(weight.untyped_storage())] = 1
    with tracker:
        tracker.track(weight)
        x = torch.ones(8, 256, requires_grad=True)  # a factory outside any block floats...
        assert tracker.gpu_of(x) is None
        moved = virtual_to(x, 1, tracker)  # ... until it is sent somewhere: the loop put it on GPU 0
        assert tracker.gpu_of(x) == 0
        assert tracker.gpu_of(moved) == 1 and moved.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        y = moved @ weight  # on GPU 1 with its inputs
        assert tracker.gpu_of(y) == 1
        with tracker.on_gpu(1):
            z = torch.zeros(4)  # a factory inside a block on GPU 1
        assert tracker.gpu_of(z) == 1
        y.sum().backward()
        assert x.grad is not None and tracker.gpu_of(x.grad) == 0  # the copy's backward: back on the source GPU
        assert weight.grad is not None and tracker.gpu_of(weight.grad) == 1
    assert sum(tracker.gpu_bytes) == tracker.current_bytes
    assert not tracker.mixed


def test_a_foreach_ops_outputs_follow_their_own_inputs() -> None:
    tracker = PlacedTracker(2)
    a, b = torch.ones(300), torch.ones(700)
    tracker.placed[id(a.untyped_storage())] = 0
    tracker.placed[id(b.untyped_storage())] = 1
    with tracker:
        tracker.track(a, b)
        roots = torch._foreach_sqrt([a, b])
    assert [tracker.gpu_of(t) for t in roots] == [0, 1]


def test_a_step_scalar_goes_to_its_parameters_gpu() -> None:
    """torch's AdamW makes a parameter's `step` (torch.tensor(0.0)) from nothing, then its moments `zeros_like(p)`:
    the scalar floats until that op places it with its parameter."""
    tracker = PlacedTracker(2)
    param = torch.nn.Parameter(torch.ones(300))
    tracker.placed[id(param.untyped_storage())] = 1
    with tracker:
        tracker.track(param)
        step = torch.tensor(0.0)
        moment = torch.zeros_like(param)
    assert tracker.gpu_of(step) == tracker.gpu_of(moment) == 1


def test_a_tiny_split_run_counts_every_storage_on_one_gpu() -> None:
    """Every mark's per-GPU bytes add up to the tracker's total; the weights sit where the map put their blocks; the
    root's output comes back to GPU 0; only the loss reads inputs of two GPUs (labels stay on GPU 0 on one CPU)."""
    plan = _plan(gpus=2, gradient_checkpointing=True)
    with quiet():
        cfg = build_config(TINY, None)
        device_map = layer_device_map(cfg, plan)
        torch.manual_seed(0)
        model = build_model(cfg, plan)
        tracker = PlacedTracker(2)
        place_model(model, device_map, tracker)
        run_placed_steps(model, int(cfg.vocab_size), plan, 2, 0, tracker)
    for index, mark in enumerate(tracker.marks):
        assert sum(tracker.gpu_marks[g][index].current_bytes for g in range(2)) == mark.current_bytes
    base = model.get_base_model()
    for name, gpu in device_map.items():
        for param in base.get_submodule(name).parameters():
            assert tracker.gpu_of(param) == gpu, name
    assert set(tracker.mixed) <= {"aten::nll_loss_forward", "aten::nll_loss_backward"}


def test_the_measurement_is_the_worst_gpus_with_every_gpu_as_a_rank() -> None:
    measurement = run_layer_split(TINY, _plan(gpus=2), steps=1)
    assert [r.rank for r in measurement.ranks] == [0, 1]
    worst = max(measurement.ranks, key=lambda r: r.peak_allocated_bytes)
    assert measurement.worst_rank == worst.rank
    assert measurement.peak_allocated_bytes == worst.peak_allocated_bytes
    assert measurement.phases == worst.phases
