"""Bytes of bitsandbytes-quantized weights, exact to the byte, and of caching-allocator blocks."""

from __future__ import annotations

from typing import Literal

from app.core.units import FP32, UINT8

# The CUDA caching allocator hands out blocks in multiples of 512 bytes; max_memory_allocated counts blocks.
ALLOC_BLOCK = 512

# bitsandbytes 4-bit: one absmax per 64 weights (blocksize 64, bnb default for Linear4bit).
NF4_BLOCK = 64
# Double quantization quantizes the absmax values in blocks of 256 (8-bit dynamic code).
NESTED_BLOCK = 256
# Code tables bitsandbytes keeps per quantized weight: 16 fp32 values for NF4/FP4, and with double quant
# a private copy (quantize_blockwise: code.to(device, copy=True)) of the 256-entry fp32 dynamic map.
CODE4_BYTES = 16 * FP32
DYNAMIC_MAP_BYTES = 256 * FP32


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def rounded(nbytes: int) -> int:
    """Bytes the caching allocator accounts for one allocation of `nbytes`."""
    return ceil_div(nbytes, ALLOC_BLOCK) * ALLOC_BLOCK if nbytes > 0 else 0


def quantized_weight_tensors(
    numel: int, rows: int, quant: Literal["nf4", "fp4", "int8"], double_quant: bool
) -> list[int]:
    """Sizes of every tensor bitsandbytes keeps for one quantized weight (excluding shared code maps).

    4-bit: packed uint8 data (2 weights per byte) + absmax per 64 weights; double quant stores that
    absmax as uint8 plus an fp32 absmax per 256 blocks, one fp32 offset and its own dynamic map. int8 (LLM.int8):
    int8 data + one fp32 scale per output row (SCB).
    """
    if quant == "int8":
        return [numel * UINT8, rows * FP32]
    blocks = ceil_div(numel, NF4_BLOCK)
    tensors = [ceil_div(numel, 2) * UINT8, CODE4_BYTES]  # two 4-bit weights per byte
    if double_quant:
        tensors += [blocks * UINT8, ceil_div(blocks, NESTED_BLOCK) * FP32, FP32, DYNAMIC_MAP_BYTES]
    else:
        tensors += [blocks * FP32]
    return tensors


def quantized_weight_bytes(numel: int, rows: int, quant: Literal["nf4", "fp4", "int8"], double_quant: bool) -> int:
    """Exact bytes (sum of tensor nbytes) of one quantized weight."""
    return sum(quantized_weight_tensors(numel, rows, quant, double_quant))


def quantized_weight_allocated(numel: int, rows: int, quant: Literal["nf4", "fp4", "int8"], double_quant: bool) -> int:
    """The same tensors as the caching allocator accounts them (each rounded to 512 bytes)."""
    return sum(rounded(n) for n in quantized_weight_tensors(numel, rows, quant, double_quant))
