"""ZeRO-Offload counted by placement (app/calibration/zero_offload.py), without DeepSpeed: what DeepSpeed makes with
its offload device is host RAM, what it makes with the accelerator's device name stays on the device, and an
offload `.to` that is a no-op on a CPU rank is a real host copy, as on CUDA."""

from __future__ import annotations

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
    from app.core.plan import TrainingPlan
    from app.core.units import DTYPE_BYTES
    from app.core.zero import optimizer_partition_bytes, zero2_partition
    from app.inventory.cache import cached_spec
    from app.store.db import read_jsonl
    from app.store.seed import BUNDLED_RESULTS

    records = list(read_jsonl(BUNDLED_RESULTS / "cpu-matrix-zero-offload.store.jsonl"))
    full = [r for r in records if r.plan["method"] == "full"]
    assert len(full) >= 4
    for r in full:
        spec = cached_spec(r.config, model_id=r.model_id, source="file", cache_dir=None)
        plan = TrainingPlan.model_validate(r.plan)
        est = estimate(spec, plan)
        partition = zero2_partition(sum(p.numel * g.count for g in spec.groups for p in g.params), plan.gpus)
        head = DTYPE_BYTES[plan.dtype] * spec.arch.vocab_size * spec.arch.hidden_size
        expected = est.offloaded_bytes + optimizer_partition_bytes(plan, partition)[1] + head
        assert abs(expected - r.env["host_peak_bytes"]) <= 0.01 * r.env["host_peak_bytes"], r.model_id
