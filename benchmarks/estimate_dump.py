"""Dump every estimate (and a subset's recommendations and fits) over a plan grid, to hold a refactor to the byte.

Not a test: a tool for refactors of app/core that must not change a single number.

    # the tree to compare against (e.g. `git worktree add /tmp/gpuplan-base HEAD`)
    PYTHONPATH=/tmp/gpuplan-base .venv/bin/python benchmarks/estimate_dump.py dump /tmp/base.jsonl
    .venv/bin/python benchmarks/estimate_dump.py dump /tmp/new.jsonl
    .venv/bin/python benchmarks/estimate_dump.py compare /tmp/base.jsonl /tmp/new.jsonl

Every catalog model gets the same deterministic grid: one-axis-at-a-time variations of a few base plans plus
seeded random draws from the full product of plan fields. Plans that TrainingPlan rejects or that estimate()
refuses (PlanError) are recorded with their error, so a refactor must refuse the same plans the same way.
The shipped calibration points' tiny models (calibration/results) are dumped too. Both trees must hold the same
catalog (copy new app/catalog files into the base tree); rows only one dump has fail the comparison.
`compare` maps the fields a refactor deliberately renamed (see `_normalise`) before it diffs.
"""

from __future__ import annotations

import inspect
import json
import random
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app
from app.catalog import catalog_ids, load_spec
from app.core.estimate import estimate
from app.core.fit import fit
from app.core.gpus import find_tier, recommend
from app.core.plan import TrainingPlan
from app.errors import PlanError

AXES: dict[str, tuple[Any, ...]] = {
    "method": ("qlora", "lora", "full"),
    "quant": (None, "nf4", "fp4", "int8"),
    "double_quant": (True, False),
    "dtype": ("bf16", "fp16", "fp32"),
    "rank": (1, 8, 16, 64),
    "targets": ("all-linear", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj", "query_key_value,dense", "qkv_proj"),
    "dora": (False, True),
    "dropout": (0.0, 0.05),
    "seq_len": (1, 128, 2048, 8192),
    "batch_size": (1, 4, 16),
    "gradient_checkpointing": (True, False),
    "checkpointing": ("every-layer", "sqrt-n"),
    "optimizer": ("adamw", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "sgd", "adafactor"),
    "attn": ("sdpa", "eager", "flash_attention_2"),
    "gpus": (1, 2, 8),
    "sharding": ("none", "ddp", "fsdp", "zero2", "zero3"),
    "offload": (False, True),
    "device": ("cuda", "cpu"),
}
BASES: tuple[dict[str, Any], ...] = (
    {},  # the default QLoRA recipe
    {"method": "lora", "dropout": 0.0, "optimizer": "adamw", "gradient_checkpointing": False},
    {"method": "full", "optimizer": "adamw", "dtype": "fp32", "device": "cpu", "dropout": 0.0},
    {"method": "full", "optimizer": "adamw", "sharding": "zero3", "gpus": 8},
)
RANDOM_PER_MODEL = 500
ROOT = Path(__file__).resolve().parents[1]
RECOMMEND_EVERY = 25  # recommend() and fit() on every 25th valid plan (each runs many estimates)
FIT_TIERS = ("RTX 4090", "A100 80GB")


def plans(seed: int) -> Iterator[dict[str, Any]]:
    """The grid for one model: each base with one axis varied, then seeded random draws of every axis."""
    seen: set[str] = set()
    for base in BASES:
        for axis, values in AXES.items():
            for v in values:
                kw = {**base, axis: v}
                key = json.dumps(kw, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    yield kw
    rng = random.Random(seed)
    for _ in range(RANDOM_PER_MODEL):
        kw = {axis: rng.choice(values) for axis, values in AXES.items()}
        if kw["method"] != "qlora":  # mostly valid draws: the one-axis variations already cover the refusals
            kw["quant"] = None
        if kw["sharding"] not in ("fsdp", "zero2", "zero3"):
            kw["offload"] = False
        key = json.dumps(kw, sort_keys=True)
        if key not in seen:
            seen.add(key)
            yield kw


def _recommend(model: Any, plan: TrainingPlan, est: Any) -> dict[str, Any]:
    # before the refactor recommend(model, plan, headroom); after it recommend(model, est, headroom_fraction)
    second = list(inspect.signature(recommend).parameters)[1]
    rec = recommend(model, plan, 0.10) if second == "plan" else recommend(model, est, 0.10)
    return dict(rec.model_dump(mode="json"))


def _fits(model: Any, plan: TrainingPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIT_TIERS:
        tier = find_tier(name)
        assert tier is not None
        try:
            out[name] = fit(model, plan, tier, 0.10).model_dump(mode="json")
        except PlanError as exc:
            out[name] = {"error": f"PlanError: {exc}"}
    return out


def dump(path: Path) -> None:
    print(f"app from {Path(app.__file__).parent}", file=sys.stderr)
    counts = {"estimates": 0, "invalid": 0, "plan_error": 0, "recommend": 0}
    with path.open("w") as out:
        for model_id in catalog_ids():
            seed = zlib.crc32(model_id.encode())  # the same draws for a model whatever else the catalog holds
            model = load_spec(model_id)
            assert model is not None
            valid = 0
            for kw in plans(seed):
                row: dict[str, Any] = {"model": model_id, "plan": kw}
                try:
                    plan = TrainingPlan(**kw)
                except ValueError as exc:  # pydantic's ValidationError
                    row["invalid"] = str(exc).splitlines()[:2]
                    counts["invalid"] += 1
                    out.write(json.dumps(row, sort_keys=True) + "\n")
                    continue
                try:
                    est = estimate(model, plan)
                except PlanError as exc:
                    row["plan_error"] = str(exc)
                    counts["plan_error"] += 1
                    out.write(json.dumps(row, sort_keys=True) + "\n")
                    continue
                row["estimate"] = est.model_dump(mode="json")
                counts["estimates"] += 1
                if valid % RECOMMEND_EVERY == 0:
                    row["fit"] = _fits(model, plan)
                    if plan.device == "cuda":
                        row["recommend"] = _recommend(model, plan, est)
                        counts["recommend"] += 1
                valid += 1
                out.write(json.dumps(row, sort_keys=True) + "\n")
        counts["shipped"] = _dump_shipped(out)
    print(json.dumps(counts), file=sys.stderr)


def _dump_shipped(out: Any) -> int:
    """The shipped calibration points' tiny models (6 families): each stored plan, on the CPU and on CUDA."""
    from app.inventory.cache import cached_spec

    n = 0
    for path in sorted((ROOT / "calibration" / "results").glob("*.store.jsonl")):
        for index, line in enumerate(path.read_text().splitlines()):
            rec = json.loads(line)
            model = cached_spec(rec["config"], model_id=rec["model_id"], source="file", cache_dir=None)
            for device in ("cpu", "cuda"):
                kw = {**rec["plan"], "device": device}
                row: dict[str, Any] = {"model": f"shipped:{path.name}:{index}:{rec['model_id']}", "plan": kw}
                try:
                    row["estimate"] = estimate(model, TrainingPlan(**kw)).model_dump(mode="json")
                    n += 1
                except PlanError as exc:
                    row["plan_error"] = str(exc)
                out.write(json.dumps(row, sort_keys=True) + "\n")
    return n


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    """The pre-refactor shape of a row: fields renamed on purpose are mapped back before the diff.

    - issue 9: the 0-byte `offloaded_bytes` breakdown term, whose number sat in its note, became the typed
      `Estimate.offloaded_bytes` (host RAM) plus a note; both sides are mapped to (field, note) here.
    - issue 11: the plan gained `stack`; its default, transformers-5, is what every earlier estimate modelled.
    - issue 10: the plan fields `autocast`, `checkpoint_offload`, `fused_cross_entropy` and `packing` (default
      false) were added; a plan echoing them false is the plan without them; so was issue 11's `router_aux_loss`,
      and its `mxfp4` (default dequantize, what every earlier estimate of gpt-oss modelled).
    - issue 15: the plan fields `fsdp_mixed_precision` (default false) and `fsdp_reduce_dtype` (default param).
    - issue 10: the plan gained `loop`; its default, trainer, is what every earlier estimate modelled.
      false) were added; a plan echoing them false is the plan without them; so was issue 11's `router_aux_loss`.
    - issue 15: the plan gained `fsdp_version`; its default, 2 (FSDP2), is what every earlier estimate modelled.
    - issue 15: the plan gained `fsdp_backward_prefetch` (default none; FSDP1 only, so no FSDP2 estimate reads it).
    - issue 15: the plan gained `zero_buckets`; its default, deepspeed (DeepSpeed's ZeRO defaults), is what every
      earlier estimate modelled.
    """
    est = row.get("estimate")
    if est is None:
        return row
    est = dict(est)
    added = (
        "autocast",
        "checkpoint_offload",
        "fused_cross_entropy",
        "packing",
        "router_aux_loss",
        "fsdp_mixed_precision",
    )
    plan = {k: v for k, v in est.get("plan", {}).items() if not (k in added and v is False)}
    if plan.get("fsdp_reduce_dtype") == "param":
        plan.pop("fsdp_reduce_dtype")
    if plan.get("stack") == "transformers-5":
        plan.pop("stack")
    if plan.get("loop") == "trainer":
        plan.pop("loop")
    if plan.get("mxfp4") == "dequantize":
        plan.pop("mxfp4")
    if plan.get("fsdp_backward_prefetch") == "none":
        plan.pop("fsdp_backward_prefetch")
    if plan.get("fsdp_version") == 2:
        plan.pop("fsdp_version")
    if plan.get("zero_buckets") == "deepspeed":
        plan.pop("zero_buckets")
    est["plan"] = plan
    terms = [t for t in est["breakdown"] if t["term"] != "offloaded_bytes"]
    old = [t for t in est["breakdown"] if t["term"] == "offloaded_bytes"]
    if old:  # the old shape: the bytes in the note
        note = old[0]["note"]
        est["offloaded_bytes"] = int(note.split(" ", 1)[0].replace(",", ""))
    est.setdefault("offloaded_bytes", 0)
    est["breakdown"] = terms
    est["notes"] = [n for n in est["notes"] if "live in host RAM (offload)" not in n]
    return {**row, "estimate": est}


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return {f"{r['model']} {json.dumps(r['plan'], sort_keys=True)}": r for r in rows}


def compare(base: Path, new: Path) -> int:
    """Diff two dumps row by row (a row: one model and plan); rows only one side has are counted, not compared."""
    by_key_a, by_key_b = _rows(base), _rows(new)
    only = set(by_key_a) ^ set(by_key_b)
    if only:
        print(f"{len(only)} rows only in one dump (models: {sorted({k.split(' ')[0] for k in only})})")
    keys = [k for k in by_key_a if k in by_key_b]
    a = [by_key_a[k] for k in keys]
    diffs = 0
    for ra, rb in ((by_key_a[k], by_key_b[k]) for k in keys):
        na, nb = _normalise(ra), _normalise(rb)
        if na != nb:
            diffs += 1
            if diffs <= 5:
                print(f"DIFF {ra['model']} {json.dumps(ra['plan'], sort_keys=True)}")
                for k in sorted(set(na) | set(nb)):
                    if na.get(k) != nb.get(k):
                        print(f"  {k}:\n    base {json.dumps(na.get(k))[:600]}\n    new  {json.dumps(nb.get(k))[:600]}")
    kinds = {k: sum(1 for r in a if k in r) for k in ("estimate", "invalid", "plan_error", "recommend", "fit")}
    print(f"{len(a)} rows compared ({kinds}); {diffs} differ")
    return 1 if diffs or only else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"] and len(sys.argv) == 3:
        dump(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
