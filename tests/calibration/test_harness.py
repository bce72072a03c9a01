"""run_measurement end to end on a tiny llama, and the plans it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from app.calibration.build import build_config, build_model
from app.calibration.harness import run_measurement
from app.calibration.measurement import Measurement
from app.calibration.tracker import rounded_bytes
from app.core.plan import TrainingPlan
from app.errors import CalibrationError
from tests.configs import TINY_LLAMA

TINY: dict[str, Any] = {**TINY_LLAMA, "vocab_size": 128}
LABELS = [
    "load",
    "step1.forward",
    "step1.backward",
    "step1.optimizer",
    "step2.forward",
    "step2.backward",
    "step2.optimizer",
]


def cpu_plan(**fields: Any) -> TrainingPlan:
    return TrainingPlan(**{"device": "cpu", "optimizer": "adamw", "seq_len": 32, **fields})


def independent_load_bytes(model: torch.nn.Module) -> int:
    """Parameters, buffers and bitsandbytes quant states, one entry per storage (by data pointer), rounded to 512."""
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            tensors += [t for t in (state.absmax, state.code, state.offset) if t is not None]
            state = state.state2
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(rounded_bytes(n) for n in storages.values())


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_a_tiny_run_records_every_phase_and_starts_from_the_model_bytes(method: str) -> None:
    plan = cpu_plan(method=method)
    measurement = run_measurement(TINY, plan, steps=2, seed=0)

    assert [phase.label for phase in measurement.phases] == LABELS
    load = measurement.phase("load")
    assert measurement.peak_allocated_bytes > 0
    assert measurement.peak_allocated_bytes >= load.current_bytes
    assert measurement.peak_allocated_bytes == max(phase.peak_bytes for phase in measurement.phases)
    assert all(phase.peak_bytes >= phase.current_bytes for phase in measurement.phases)
    assert measurement.peak_reserved_bytes is None
    assert (measurement.model_type, measurement.layers, measurement.steps, measurement.device) == ("llama", 2, 2, "cpu")
    assert measurement.plan == plan.model_dump(mode="json")
    assert measurement.env.total_memory_bytes is None
    assert measurement.env.torch == torch.__version__

    # the same build, counted here without the tracker: memory depends on shapes, which the seed does not change
    torch.manual_seed(0)
    model = build_model(build_config(TINY, None), plan)
    assert load.current_bytes == load.peak_bytes == independent_load_bytes(model)
    # step 2 starts where step 1 ended and ends where step 1 ended (optimizer state exists after step 1)
    assert measurement.phase("step2.optimizer").current_bytes == measurement.phase("step1.optimizer").current_bytes


def test_a_measurement_survives_json() -> None:
    measurement = run_measurement(TINY, cpu_plan(method="lora"), steps=1)
    assert [phase.label for phase in measurement.phases] == LABELS[:4]
    assert Measurement.model_validate_json(measurement.model_dump_json()) == measurement
    assert json.loads(measurement.model_dump_json())["config"]["num_hidden_layers"] == 2


def test_depth_is_cut_with_its_per_layer_fields() -> None:
    config = {**TINY, "num_hidden_layers": 3, "layer_types": ["full_attention"] * 3}
    cfg = build_config(config, 1)
    assert (cfg.num_hidden_layers, cfg.layer_types, cfg.use_cache) == (1, ["full_attention"], False)
    measurement = run_measurement(config, cpu_plan(method="lora"), layers=1, steps=1)
    assert measurement.layers == 1
    assert measurement.config["num_hidden_layers"] == 1
    assert measurement.config["layer_types"] == ["full_attention"]


def test_fewer_layers_load_fewer_bytes() -> None:
    one = run_measurement(TINY, cpu_plan(method="full"), layers=1, steps=1)
    two = run_measurement(TINY, cpu_plan(method="full"), layers=2, steps=1)
    assert one.phase("load").current_bytes < two.phase("load").current_bytes


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "optimizer": "sgd"},
        {"method": "lora", "optimizer": "adafactor"},
        {"method": "lora", "dora": True, "gradient_checkpointing": False, "attn": "eager"},
        {"method": "qlora", "quant": "fp4", "double_quant": False, "dtype": "fp32"},
        {"method": "qlora", "quant": "int8", "targets": ("q_proj", "v_proj")},
    ],
)
def test_other_supported_plans_run_on_cpu(fields: dict[str, Any]) -> None:
    measurement = run_measurement(TINY, cpu_plan(**fields), steps=2)
    assert [phase.label for phase in measurement.phases] == LABELS
    assert measurement.peak_allocated_bytes >= measurement.phase("load").current_bytes > 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"optimizer": "paged_adamw_32bit"}, "adamw, sgd, adafactor"),
        ({"optimizer": "adamw_8bit"}, "cpu reference supports"),
        ({"optimizer": "adamw", "attn": "flash_attention_2"}, "use attn sdpa or eager"),
        ({"optimizer": "adamw", "checkpointing": "sqrt-n"}, "every-layer"),
        ({"optimizer": "adamw", "gpus": 2, "sharding": "ddp"}, "gpus 1"),
    ],
)
def test_plans_the_cpu_harness_cannot_run_are_refused(fields: dict[str, Any], words: str) -> None:
    plan = TrainingPlan(**{"device": "cpu", "seq_len": 32, **fields})
    with pytest.raises(CalibrationError, match=words):
        run_measurement(TINY, plan)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal when no GPU is present")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(CalibrationError, match="use device cpu"):
        run_measurement(TINY, TrainingPlan(device="cuda", seq_len=32))


@pytest.mark.parametrize(
    ("config", "layers", "words"),
    [
        ({k: v for k, v in TINY.items() if k != "model_type"}, None, "no model_type"),
        ({**TINY, "model_type": "no-such-model"}, None, "cannot build a no-such-model config"),
        (TINY, 3, "between 1 and the model's 2"),
        (TINY, 0, "between 1 and the model's 2"),
    ],
)
def test_unusable_configs_are_refused(config: dict[str, Any], layers: int | None, words: str) -> None:
    with pytest.raises(CalibrationError, match=words):
        run_measurement(config, cpu_plan(method="lora"), layers=layers)


def test_a_library_failure_while_building_keeps_its_message() -> None:
    with pytest.raises(CalibrationError, match=r"building the lora model failed: .*no_such_activation"):
        run_measurement({**TINY, "hidden_act": "no_such_activation"}, cpu_plan(method="lora"))


def test_lora_targets_that_match_nothing_are_refused() -> None:
    with pytest.raises(CalibrationError, match="building the lora model failed"):
        run_measurement(TINY, cpu_plan(method="lora", targets=("no_such_proj",)))


def test_steps_must_be_positive() -> None:
    with pytest.raises(CalibrationError, match="steps must be at least 1"):
        run_measurement(TINY, cpu_plan(method="lora"), steps=0)


def test_importing_the_calibration_package_imports_no_torch() -> None:
    code = (
        "import sys, app.calibration, app.calibration.build, app.calibration.harness, app.calibration.measurement\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert result.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_tiny_cuda_run_reads_the_caching_allocator() -> None:
    measurement = run_measurement(TINY, TrainingPlan(device="cuda", seq_len=32), steps=2)
    assert [phase.label for phase in measurement.phases] == LABELS
    assert measurement.peak_reserved_bytes is not None
    assert measurement.peak_reserved_bytes >= measurement.peak_allocated_bytes > 0
    assert measurement.env.total_memory_bytes is not None


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("fused_cross_entropy", "Liger's Triton kernel"),
        ("packing", "not packed ones"),
    ],
)
def test_the_first_principles_recipe_fields_are_refused_by_the_harness_saying_why(field: str, says: str) -> None:
    from app.calibration.harness import check_plan

    plan = TrainingPlan(device="cpu", optimizer="adamw", **{field: True})
    with pytest.raises(CalibrationError, match=says):
        check_plan(plan, steps=2)


def test_an_autocast_plan_loads_fp32_weights_and_is_measured() -> None:
    plan = TrainingPlan(method="lora", device="cpu", optimizer="adamw", autocast=True, seq_len=32, rank=4)
    model = build_model(build_config(TINY_LLAMA, 1), plan)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    measured = run_measurement(TINY_LLAMA, plan, layers=1)
    assert measured.plan["autocast"] is True and measured.peak_allocated_bytes > 0


def test_offloaded_checkpoint_inputs_count_as_host_ram_and_come_back_as_new_device_tensors() -> None:
    """host_saved_checkpoints replaces transformers' save_on_cpu for the run: what it packs is host RAM from its
    first byte (the device peak never sees it), the unpack is a new device tensor, as `.to(device)` on CUDA."""
    from transformers import modeling_utils

    from app.calibration.offload import host_saved_checkpoints
    from app.calibration.tracker import LiveTensorTracker

    plan = TrainingPlan(device="cpu", optimizer="adamw", checkpoint_offload=True)
    original = modeling_utils.save_on_cpu
    x = torch.randn(256, 256, requires_grad=True)  # 256 KiB in fp32
    tracker = LiveTensorTracker("cpu")
    with tracker, host_saved_checkpoints(plan, tracker):
        with modeling_utils.save_on_cpu(pin_memory=True, device_type="cpu"):
            y = (x * 2).sin()  # sin saves its input: packed, and the device copy freed with it
        assert tracker.host_bytes == 256 * 256 * 4
        assert tracker.current_bytes == 2 * 256 * 256 * 4  # x and y only
        device_peak = tracker.peak_bytes
        y.sum().backward()
        assert tracker.host_bytes == 0 and tracker.host_peak_bytes == 256 * 256 * 4
        assert tracker.peak_bytes > device_peak  # the unpacked copy (and the gradients) are device tensors
    assert modeling_utils.save_on_cpu is original
    assert x.grad is not None and torch.allclose(x.grad, 2 * torch.cos(2 * x.detach()))
    with host_saved_checkpoints(plan.model_copy(update={"checkpoint_offload": False}), tracker):
        assert modeling_utils.save_on_cpu is original
