"""TRL SFTTrainer's fused LM head (loop sft): the loss scored tile by tile, never the whole logits.

Source (trl 1.16.0): trl/trainer/sft_trainer.py calls `add_fused_lm_head(model, outputs=("log_probs", "entropy",
"is_top1"))` (l. 1144) and `compute_loss` runs `model(**inputs, fused_lm_head=True)` (l. 1611); trl/trainer/utils.py
`_fused_forward` (l. 1599) hands `ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py) the final hidden states of
the `N = B·(T-1)` positions that have a next-token label and lm_head's weight. It projects `n = min(N, 4096)` tokens
at a time into one buffer of `n × 32768` columns (`mm_buf`, allocated whole whatever the vocabulary), folding each
tile into per-token online-logsumexp statistics; its backward recomputes each tile, turns it into the logits'
gradient in place and accumulates grad_hidden (and, when lm_head is trained, grad_weight) in fp32. On CUDA
(Triton) the folds run in place; elsewhere (the CPU reference) `_forward_tile` / `_backward_tile` do them in torch,
with fp32 temporaries the width of a tile. Notation: `w = min(32768, V)` the widest tile, `c` the head's compute
dtype (the logits dtype of the Trainer loop), `a` the final hidden state's, `wd` lm_head's weight's.
"""

from __future__ import annotations

from typing import NamedTuple

from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.step import kbit_upcast, precision
from app.core.units import DTYPE_BYTES, FP32

# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE; trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
TOKEN_CHUNK = 4096
VOCAB_CHUNK = 32768
# fp32 bytes per tile element alive at the worst line of the torch folds (CPU): forward `_forward_tile` keeps z,
# the is_top1 mask (bool) and, for `e = exp(z - max)`, its operand and result (4 + 1 + 4 + 4); backward
# `_backward_tile` keeps y, z, log_p, p and grad (5 × 4), is_target (bool) and, for `g · (is_target.float() - p)`,
# two operands (4 + 4). Measured with the tracker (docs/accuracy-sft.md).
FORWARD_TILE = 13
BACKWARD_TILE = 29


class HeadShapes(NamedTuple):
    positions: int  # N: positions with a next-token label
    rows: int  # n: tokens per tile
    width: int  # w: the widest tile's vocabulary columns
    hidden: int  # h
    vocab: int  # V
    compute: int  # c
    act: int  # a
    weight: int  # wd


def head_shapes(model: ModelSpec, plan: TrainingPlan) -> HeadShapes:
    p = precision(plan)
    weight = FP32 if kbit_upcast(plan) or (plan.method == "full" and plan.dtype == "fp16") else 0
    n = plan.batch_size * max(1, plan.seq_len - 1)
    return HeadShapes(
        positions=n,
        rows=min(n, TOKEN_CHUNK),
        width=min(VOCAB_CHUNK, model.arch.vocab_size),
        hidden=model.arch.hidden_size,
        vocab=model.arch.vocab_size,
        compute=p.logits,
        act=p.residual,
        weight=weight or DTYPE_BYTES[plan.weight_dtype],
    )


def sft_hidden_saved_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """What the fused head saves of its input beyond a Trainer step's: the final hidden states `T·h·a`, which
    ChunkedLogProbFunction saves for its backward even when lm_head is frozen (a frozen nn.Linear keeps none: LoRA,
    QLoRA; a trained one already keeps its input). Source: chunked_logprob.py `ctx.save_for_backward(hidden, ...)`."""
    if plan.loop != "sft" or plan.method == "full":
        return 0
    return plan.batch_size * plan.seq_len * model.arch.hidden_size * precision(plan).residual


def sft_fused_head_bytes(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """logits_peak_bytes under loop sft, (forward, backward). Forward: the tile buffer `n·32768·c`, on CPU the torch
    fold's fp32 temporaries `13·n·w`, the per-token statistics `7·N·4`, labels and mask `9·N`, and the input
    copies: 16-bit casts of a weight chunk `w·h·c` and of a token chunk `n·h·c` where the head's dtypes differ
    (autocast), the flattened hidden states `N·h·a` where they are copied (CPU with B > 1: a non-contiguous
    slice's reshape; CUDA: `hidden[mask]`). Backward: the buffer, grad_hidden `N·h·4` and, when lm_head is trained,
    grad_weight `V·h·4`, beside either a tile's fold (`29·n·w` on CPU; on CPU the fp32 copies `addmm_` makes of a
    16-bit tile `n·w·4` and weight chunk `w·h·4`) or the returned casts (grad_hidden `N·h·a`, grad_weight `V·h·wd`
    when not fp32). Source: trl 1.16.0 trl/kernels/chunked_logprob.py `ChunkedLogProbFunction`; tracker-measured
    on CPU, the Triton path (CUDA) first principles."""
    s = head_shapes(model, plan)
    cpu = plan.device == "cpu"
    buffer = rounded(s.rows * VOCAB_CHUNK * s.compute)
    casts = _input_casts(s)
    copied = plan.batch_size > 1 or not cpu  # CPU: a reshape copies the non-contiguous slice; CUDA: hidden[mask]
    forward = buffer + casts + _statistics_bytes(s.positions)
    forward += (FORWARD_TILE * s.rows * s.width if cpu else 0) + (s.positions * s.hidden * s.act if copied else 0)
    trained = plan.method == "full"
    grads = s.positions * s.hidden * FP32 + (s.vocab * s.hidden * FP32 if trained else 0)
    fold = BACKWARD_TILE * s.rows * s.width if cpu else 0
    if cpu and s.compute != FP32:
        fold = max(fold, s.rows * s.width * FP32 + s.width * s.hidden * FP32)
    returned = (s.positions * s.hidden * s.act if s.act != FP32 else 0) + (
        s.vocab * s.hidden * s.weight if trained and s.weight != FP32 else 0
    )
    backward = buffer + grads + max(fold + casts, returned) + sft_loss_saved_bytes(model, plan)
    return forward, backward


def _input_casts(s: HeadShapes) -> int:
    """`.to(compute_dtype)` of a weight chunk and of a token chunk, where they are not already in it (autocast)."""
    weight = s.width * s.hidden * s.compute if s.weight != s.compute else 0
    tokens = s.rows * s.hidden * s.compute if s.act != s.compute else 0
    return weight + tokens


def _statistics_bytes(positions: int) -> int:
    """The forward's per-token fp32 statistics (running max, sums, the target logit, ...: 7 of them), the int64
    labels and the bool label mask."""
    return 7 * rounded(positions * FP32) + rounded(positions * 8) + rounded(positions)


def sft_loss_saved_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """What the fused head keeps for backward once its forward is done (beyond the hidden states): log-normaliser
    and entropy `2·N·4`, and the labels it scores `N·8`."""
    positions = plan.batch_size * max(1, plan.seq_len - 1)
    return 2 * rounded(positions * FP32) + rounded(positions * 8)
