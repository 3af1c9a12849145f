"""Choosing the device at run time, and mixed precision only where it helps (CUDA).

Why here: every command takes `--device auto|cpu|cuda`; one function keeps them all in agreement and keeps CUDA-only
switches (autocast, channels_last, pinned memory) out of the CPU path that the tests exercise.
"""
from __future__ import annotations

import contextlib

import torch

from labels.cli import UserError


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU is a clear error, not a silent CPU run."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU on this machine (use --device cpu)")
    if not (spec == "cpu" or spec.startswith("cuda")):
        raise UserError(f"unknown device {spec!r}: use auto, cpu or cuda[:N]")
    return torch.device(spec)


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype for `precision` (auto|fp32|fp16|bf16): None (full precision) on the CPU or for fp32;
    'auto' is bf16 on GPUs that support it, else fp16 (which needs a GradScaler when training)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool = True, dtype: torch.dtype | None = None):
    """Autocast to `dtype` (default: bf16 on CUDA GPUs that support it, fp16 on older ones); a no-op on the CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype or amp_dtype(device))
