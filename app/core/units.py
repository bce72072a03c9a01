"""Units: bytes per element of the dtypes a training step uses, and the binary sizes (the app's one MIB/GIB)."""

from __future__ import annotations

# bytes per element
FP32 = 4  # float32, also int32 and the fp32 statistics kernels keep (rsqrt, logsumexp, absmax)
FP16 = 2
BF16 = 2
UINT8 = 1  # bitsandbytes' packed and 8-bit quantized data
BOOL = 1  # torch.bool, e.g. the mask of CUDA's fused dropout

DTYPE_BYTES = {"bf16": BF16, "fp16": FP16, "fp32": FP32}

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
