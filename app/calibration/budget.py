"""Run a calibration subset within a time budget: a fixed covering core always, the rest while time allows.

The core is chosen from the points alone (no clock): greedily, the point that covers the most not-yet-covered
features per unit of work, until every feature of the subset is covered. A feature is a family, a method, a
checkpointing setting, a target kind, a dropout setting, a split, and the pairs family x method,
family x checkpointing and method x checkpointing (and, for autocast points, autocast x method and x
checkpointing), so every architecture is seen under every method and
checkpointing setting the subset has. The remaining points then run in their matrix order while the time
they are predicted to take (a fixed + per-work fit of the points so far) fits in what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from app.calibration.matrix import Point, PointResult
from app.core.plan import ALL_LINEAR


def point_features(point: Point) -> frozenset[str]:
    """What a point stands for in the subset: the axes and axis pairs the core must cover."""
    plan = point.plan
    ckpt = "ckpt" if plan.gradient_checkpointing else "no-ckpt"
    targets = "all-linear" if plan.targets == ALL_LINEAR else "attention"
    dropout = "dropout" if plan.dropout > 0 else "no-dropout"
    singles = (point.family, plan.method, ckpt, targets, dropout, point.split)
    pairs: tuple[tuple[str, str], ...] = ((point.family, plan.method), (point.family, ckpt), (plan.method, ckpt))
    if plan.autocast:  # only autocast points carry these, so subsets without them choose their cores as before
        pairs += (("autocast", plan.method), ("autocast", ckpt))
    return frozenset(singles) | frozenset("/".join(pair) for pair in pairs)


def point_work(point: Point) -> float:
    """Work of one training step, in multiply-adds: tokens x (decoder weights + logits + attention scores).

    A proxy for time (every matmul of a step scales with it); its unit cancels in the budget's rate.
    """
    cfg, plan = point.config, point.plan
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    layers, vocab = int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    experts = int(cfg.get("num_experts_per_tok", 1))
    tokens = plan.seq_len * plan.batch_size * plan.grad_accum_steps  # every micro-batch runs forward and backward
    per_layer = 4 * hidden * hidden + 3 * hidden * inter * experts + plan.seq_len * hidden
    return float(tokens * (layers * per_layer + hidden * vocab))


def covering_core(points: list[Point]) -> list[Point]:
    """The fewest-work points that together cover every feature of `points` (greedy set cover)."""
    uncovered = set().union(*(point_features(p) for p in points)) if points else set()
    core: list[Point] = []
    while uncovered:
        best = max(
            (p for p in points if p not in core),
            key=lambda p: (len(point_features(p) & uncovered) / point_work(p), -points.index(p)),
        )
        core.append(best)
        uncovered -= point_features(best)
    return sorted(core, key=points.index)


@dataclass
class BudgetRun:
    """What a budgeted run did: the results, each point that did not run with the reason, and the timings."""

    budget_s: float
    core_ids: frozenset[str]
    results: list[PointResult] = field(default_factory=list)
    skipped: list[tuple[Point, str]] = field(default_factory=list)
    timings: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (work, seconds) per point

    @property
    def elapsed_s(self) -> float:
        return sum(seconds for _, seconds in self.timings)

    def predict_s(self, work: float) -> float:
        """Seconds a point of this work should take: a least-squares fixed + per-work fit of the points so far."""
        if not self.timings:
            return 0.0
        n = len(self.timings)
        mean_w = sum(w for w, _ in self.timings) / n
        mean_s = self.elapsed_s / n
        spread = sum((w - mean_w) ** 2 for w, _ in self.timings)
        slope = sum((w - mean_w) * (s - mean_s) for w, s in self.timings) / spread if spread else 0.0
        if slope <= 0:  # too few or too alike points to separate the fixed cost: scale by work alone
            return mean_s * work / mean_w if mean_w else mean_s
        fixed = max(0.0, mean_s - slope * mean_w)
        return fixed + slope * work


def run_within_budget(
    points: list[Point],
    budget_s: float,
    run: Callable[[list[Point]], Iterator[PointResult]],
    clock: Callable[[], float] = time.perf_counter,
) -> BudgetRun:
    """Run the covering core of `points`, then the others in order while each is predicted to fit the budget.

    `run` measures points (e.g. ``functools.partial(run_points, fp32_matmuls=True)``). The core runs whatever
    the budget; a point is skipped when elapsed + its predicted seconds exceed `budget_s`.
    """
    core = covering_core(points)
    outcome = BudgetRun(budget_s=budget_s, core_ids=frozenset(p.id for p in core))
    rest = [p for p in points if p.id not in outcome.core_ids]
    for point in core + rest:
        in_core = point.id in outcome.core_ids
        predicted = outcome.predict_s(point_work(point))
        if not in_core and outcome.elapsed_s + predicted > budget_s:
            outcome.skipped.append(
                (point, f"predicted {predicted:.0f} s; {budget_s - outcome.elapsed_s:.0f} s of the budget left")
            )
            continue
        started = clock()
        outcome.results.extend(run([point]))
        outcome.timings.append((point_work(point), clock() - started))
    return outcome
