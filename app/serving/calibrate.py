"""The CPU reference for the transformers engine: run model.generate() on random-weight reduced configs under the
live-tensor tracker and hold the measured peak against plan_serving (an edge: torch is imported in the functions).

`python -m app.serving.calibrate --write docs/serving-accuracy.md` writes the table the tests hold to the bounds.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

from app.serving.estimate import plan_serving
from app.serving.layout import kv_layout
from app.serving.plan import ServingPlan

BOUND_PCT = 5.0
MEDIAN_BOUND_PCT = 2.0
_BASE: dict[str, Any] = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096}
_BASE |= {"max_position_embeddings": 4096, "num_hidden_layers": 2}
# reduced configs of the catalog families: dense GQA, sliding window (all layers / alternating with eager
# attention), MoE, and MLA with MoE
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {**_BASE, "model_type": "llama", "intermediate_size": 688, "tie_word_embeddings": False},
    "llama-32k-vocab": {**_BASE, "model_type": "llama", "intermediate_size": 688, "vocab_size": 32000},
    "mistral-sliding": {**_BASE, "model_type": "mistral", "intermediate_size": 688, "sliding_window": 64},
    "gemma2-hybrid": {**_BASE, "model_type": "gemma2", "intermediate_size": 688, "head_dim": 64},
    "mixtral-moe": {**_BASE, "model_type": "mixtral", "intermediate_size": 256, "num_local_experts": 4},
    "deepseek-v3-mla": {
        **_BASE,
        "model_type": "deepseek_v3",
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
        "num_key_value_heads": 4,
        "kv_lora_rank": 64,
        "q_lora_rank": None,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    },
}
FAMILIES["gemma2-hybrid"] |= {"num_hidden_layers": 4, "sliding_window": 64}
FAMILIES["mixtral-moe"] |= {"num_experts_per_tok": 2}
# (family, sequences, prompt tokens, generated tokens): prefill-bound and decode-bound points of each family
POINTS: tuple[tuple[str, int, int, int], ...] = (
    ("llama", 1, 256, 32),
    ("llama", 2, 512, 16),
    ("llama-32k-vocab", 4, 8, 128),
    ("mistral-sliding", 1, 300, 40),
    ("gemma2-hybrid", 1, 300, 40),
    ("gemma2-hybrid", 2, 40, 120),
    ("mixtral-moe", 2, 200, 20),
    ("deepseek-v3-mla", 1, 300, 40),
)


@dataclass(frozen=True)
class Point:
    family: str
    sequences: int
    prompt: int
    generated: int
    measured_bytes: int
    estimated_bytes: int
    moment: str

    @property
    def error_pct(self) -> float:
        return 100 * (self.estimated_bytes - self.measured_bytes) / self.measured_bytes


def measure(family: str, sequences: int, prompt: int, generated: int) -> Point:
    """Greedy generate() of `generated` tokens after `prompt` random ids x `sequences`, bf16, on the CPU; the peak
    of live storages (512-byte blocks, as CUDA's allocator counts them) against the estimate's allocated bytes."""
    import importlib

    import torch

    from app.calibration.build import quiet
    from app.calibration.matmul import fp32_compute_matmuls
    from app.calibration.tracker import LiveTensorTracker
    from app.inventory.builder import build_spec

    transformers: Any = importlib.import_module("transformers")
    config = FAMILIES[family]
    spec = build_spec(config, model_id=f"reduced/{family}", source="file")
    fields = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(0)
    with quiet():
        cfg = transformers.AutoConfig.for_model(config["model_type"], **fields)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # generate exactly `generated` tokens
    ids = torch.randint(0, config["vocab_size"], (sequences, prompt))
    tracker = LiveTensorTracker("cpu")
    with torch.inference_mode(), fp32_compute_matmuls(True), tracker, quiet():
        tracker.track_module(model)
        model.generate(ids, max_new_tokens=generated, do_sample=False, pad_token_id=0)
    plan = ServingPlan(
        engine="transformers", device="cpu", context=prompt + generated, output_tokens=generated, concurrency=sequences
    )
    est = plan_serving(spec, plan, kv_layout(spec.arch, config), tiers=())
    return Point(family, sequences, prompt, generated, tracker.peak_bytes, est.peak_allocated_bytes, est.moment)


def table(points: list[Point]) -> str:
    """The Markdown page of the CPU generate() matrix, with its error summary."""
    errors = [abs(p.error_pct) for p in points]
    lines = [
        "# Serving accuracy: transformers generate() on the CPU reference",
        "",
        "Measured by `tests/serving/test_calibration.py` (it rewrites nothing: it fails when this table is not what",
        "its own runs give; `python -m app.serving.calibrate --write docs/serving-accuracy.md` regenerates it).",
        "Random-weight reduced configs of the catalog families, bf16, greedy `model.generate()` (transformers",
        "5.24, DynamicCache), every live tensor storage counted in 512-byte blocks by the live-tensor tracker.",
        f"Bounds: every point within ±{BOUND_PCT:g} %, the median within ±{MEDIAN_BOUND_PCT:g} %.",
        "",
        "| family | sequences | prompt | generated | peak at | measured bytes | estimated bytes | error |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p.family} | {p.sequences} | {p.prompt} | {p.generated} | {p.moment} | {p.measured_bytes:,} | "
        f"{p.estimated_bytes:,} | {p.error_pct:+.2f} % |"
        for p in points
    ]
    lines += ["", f"{len(points)} points: median |error| {statistics.median(errors):.2f} %, max {max(errors):.2f} %."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure the CPU generate() matrix and print (or write) its table")
    parser.add_argument("--write", help="write the Markdown table to this file")
    ns = parser.parse_args(argv)
    text = table([measure(*point) for point in POINTS])
    if ns.write:
        with open(ns.write, "w") as out:
            out.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
