"""Benchmark (not a test): median time of estimate() over varied plans, and of the cold CLI.

Targets: estimate() <= 50 us; `gpuplan estimate <catalog model> --json` cold start <= 0.4 s.
Run: .venv/bin/python benchmarks/bench_core.py
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

from app.catalog import catalog_ids, load_spec
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.errors import PlanError

ROOT = Path(__file__).resolve().parents[1]


def bench_estimate(rounds: int = 5, per_round: int = 2000) -> list[float]:
    models = [s for s in (load_spec(i) for i in catalog_ids()) if s is not None]
    plans = [
        TrainingPlan(seq_len=s, batch_size=b, method=m)  # type: ignore[arg-type]
        for s, b, m in itertools.product((512, 2048, 8192), (1, 4), ("qlora", "lora", "full"))
    ]
    pairs = []
    for model, plan in itertools.product(models, plans):  # warm: the first call per (model, precision) builds
        try:  # the cached inventory
            estimate(model, plan)
        except PlanError:  # PEFT refuses dropout on fused MoE experts (ParamWrapper): plan as the stack allows
            plan = plan.model_copy(update={"dropout": 0.0})
            estimate(model, plan)
        pairs.append((model, plan))
    medians = []
    for _ in range(rounds):
        samples = []
        for i in range(per_round):
            model, plan = pairs[i % len(pairs)]
            t0 = time.perf_counter()
            estimate(model, plan)
            samples.append(time.perf_counter() - t0)
        medians.append(statistics.median(samples))
    return medians


def bench_cli(runs: int = 7) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "app.cli", "estimate", "meta-llama/Llama-2-7b-hf", "--json"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    est = bench_estimate()
    print(
        f"estimate(): median {statistics.median(est) * 1e6:.1f} us over {len(est)} rounds "
        f"(round medians {', '.join(f'{m * 1e6:.1f}' for m in est)} us; target <= 50 us)"
    )
    cli = bench_cli()
    print(
        f"cold CLI `gpuplan estimate meta-llama/Llama-2-7b-hf --json`: median {statistics.median(cli):.3f} s over {len(cli)} runs "
        f"(min {min(cli):.3f}, max {max(cli):.3f}; target <= 0.4 s)"
    )
