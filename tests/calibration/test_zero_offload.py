"""ZeRO-Offload counted by placement (app/calibration/zero_offload.py), without DeepSpeed: what DeepSpeed makes with
its offload device is host RAM, what it makes with the accelerator's device name stays on the device, and an
offload `.to` that is a no-op on a CPU rank is a real host copy, as on CUDA."""

from __future__ import annotations

from typing import Any

import torch

from app.calibration.tracker import LiveTensorTracker
from app.calibration.zero_offload import OFFLOAD_DEVICE, _host_function_mode, passes_offload_device


def _not_init() -> None:  # a code object no call comes from: the bit16 buffer rule stays off
    return None


def test_the_offload_device_is_the_cpu_known_by_identity() -> None:
    assert OFFLOAD_DEVICE == "cpu" and torch.device(OFFLOAD_DEVICE) == torch.device("cpu")
    assert passes_offload_device((), {"device": OFFLOAD_DEVICE})
    assert passes_offload_device((torch.zeros(1), OFFLOAD_DEVICE), None)
    assert not passes_offload_device((), {"device": "cpu"})  # the accelerator's device name: the device


def test_what_deepspeed_makes_on_its_offload_device_is_host_ram() -> None:
    tracker = LiveTensorTracker("cpu", granularity=1)
    with tracker, _host_function_mode(tracker, _not_init.__code__):
        host = torch.zeros(1000, dtype=torch.float32, device=OFFLOAD_DEVICE)  # fp32 gradient: 4,000 bytes
        device = torch.zeros(500, dtype=torch.bfloat16, device="cpu")  # temp_grad_buffer_for_gpu_offload: 1,000
        partition = torch.ones(250, dtype=torch.float32)  # an fp32 model's bit16 partition, cloned: 1,000
        master = partition.detach().clone().to(device=OFFLOAD_DEVICE, dtype=torch.float32)
        assert master.untyped_storage().data_ptr() != partition.untyped_storage().data_ptr()  # a real host copy
        assert (tracker.host_bytes, tracker.current_bytes) == (4_000 + 1_000, 1_000 + 1_000)
        del host, device, partition, master


def _bit16_buffer() -> torch.Tensor:  # stands in for DeepSpeedZeroOptimizer.__init__'s `torch.full` on the host
    return torch.full((100,), fill_value=0.0, dtype=torch.bfloat16, device=torch.device("cpu"))


def test_the_host_bit16_buffer_is_placed_by_its_call_site() -> None:
    tracker = LiveTensorTracker("cpu", granularity=1)
    with tracker, _host_function_mode(tracker, _bit16_buffer.__code__):
        buffer = _bit16_buffer()  # 200 bytes, host
        other = torch.full((100,), fill_value=0.0, dtype=torch.bfloat16)  # any other torch.full: the device
        assert (tracker.host_bytes, tracker.current_bytes) == (200, 200)
        del buffer, other


def test_the_shipped_host_peaks_are_the_estimates_host_bytes_plus_the_steps_temporaries() -> None:
    """calibration/results/cpu-matrix-zero-offload.store.jsonl, full fine-tuning: each rank's host peak (placement)
    is `zero2_offload_host_bytes` (the estimate's offloaded bytes) plus the step's temporaries over the partition
    and the host gradient buffer of the largest parameter (lm_head, `V·h`), within 1 %."""
    from app.core.estimate import estimate
    from app.core.units import DTYPE_BYTES
    from app.core.zero import optimizer_partition_bytes, zero2_partition

    for r, spec, plan in _shipped("cpu-matrix-zero-offload", "full", at_least=4):
        est = estimate(spec, plan)
        partition = zero2_partition(sum(p.numel * g.count for g in spec.groups for p in g.params), plan.gpus)
        head = DTYPE_BYTES[plan.dtype] * spec.arch.vocab_size * spec.arch.hidden_size
        expected = est.offloaded_bytes + optimizer_partition_bytes(plan, partition)[1] + head
        assert abs(expected - r.env["host_peak_bytes"]) <= 0.01 * r.env["host_peak_bytes"], r.model_id


def test_the_shipped_qlora_host_peaks_are_the_adapters_partitions() -> None:
    """calibration/results/cpu-matrix-zero-offload2.store.jsonl, QLoRA: DeepSpeed partitions the trainable parameters
    only, so each rank's host peak (placement) is `zero2_offload_host_bytes` over the adapters plus the step's
    temporaries and the host gradient buffer of the largest adapter, within 2 % under (the accumulation buffers are
    whole parameters, `zero2_offload_host_bytes` counts `d·Pn`: a lower bound); the frozen 4-bit base adds none."""
    from app.core.adapters import adapted_groups
    from app.core.estimate import estimate
    from app.core.quant import rounded
    from app.core.units import DTYPE_BYTES
    from app.core.zero import optimizer_partition_bytes, param_numels, zero2_partition

    for r, spec, plan in _shipped("cpu-matrix-zero-offload2", "qlora", at_least=2):
        trainable, _ = param_numels(spec, adapted_groups(spec, plan)[0], "qlora")
        partition = zero2_partition(sum(trainable), plan.gpus)
        buffer = rounded(DTYPE_BYTES[plan.dtype] * max(trainable))
        expected = estimate(spec, plan).offloaded_bytes + optimizer_partition_bytes(plan, partition)[1] + buffer
        assert 0 <= r.env["host_peak_bytes"] - expected <= 0.02 * r.env["host_peak_bytes"], r.model_id


def test_qlora_under_zero2_offload_runs_its_stream_in_the_model_dtype() -> None:
    """app/core/step.py `precision`: the engine casts QLoRA's fp32-upcast modules to the model dtype before it makes
    its optimizer, with ZeRO-2's offload_optimizer as without (cpu-matrix-zero-offload2: the backward +22.9 % with
    the fp32 stream), so the activations are those of the same plan without offload."""
    from app.core.estimate import estimate

    _, spec, plan = _shipped("cpu-matrix-zero-offload2", "qlora", at_least=1)[0]
    terms = [
        {t.term: t.bytes for t in estimate(spec, p).breakdown}
        for p in (plan, plan.model_copy(update={"offload": False}))
    ]
    assert terms[0]["activation_bytes"] == terms[1]["activation_bytes"] > 0


def _shipped(source: str, method: str, at_least: int) -> list[tuple[Any, Any, Any]]:
    """The shipped store's points of one method, each with the inventory of its config and its plan."""
    from app.core.plan import TrainingPlan
    from app.inventory.cache import cached_spec
    from app.store.db import read_jsonl
    from app.store.seed import BUNDLED_RESULTS

    records = [r for r in read_jsonl(BUNDLED_RESULTS / f"{source}.store.jsonl") if r.plan["method"] == method]
    assert len(records) >= at_least
    return [
        (
            r,
            cached_spec(r.config, model_id=r.model_id, source="file", cache_dir=None),
            TrainingPlan.model_validate(r.plan),
        )
        for r in records
    ]
