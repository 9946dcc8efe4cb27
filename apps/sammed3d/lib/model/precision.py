"""Reduced precision as an option: bf16 / fp16 autocast on CUDA, fp32 everywhere else."""
import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device) -> str:
    """Validate a precision name for a device; reduced precision is CUDA-only (CPU autocast is slower here)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "fp32" and torch.device(device).type != "cuda":
        raise ValueError(f"precision {precision} needs a CUDA device; use fp32 on {device}")
    return precision


def autocast(precision: str, device) -> ContextManager:
    """Context for running the model at ``precision``; outputs stay in the autocast dtype."""
    if check_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_DTYPES[precision])
