"""Precision and compilation choices: which autocast dtype a ``precision`` setting means on a device, whether this
CPU has native bf16, and what ``compile="auto"`` picks.  The allowed values live here and are checked here only."""
from __future__ import annotations

import functools
import warnings

import torch

__all__ = ["PRECISIONS", "SAMPLING_PRECISIONS", "check_precision", "autocast_dtype", "cpu_has_native_bf16",
           "auto_compile"]

#: every ``precision`` setting; "auto" is bf16 on CUDA and float32 elsewhere
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: the settings sampling takes (fp16 has no use there: bf16 has its range at the same speed)
SAMPLING_PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` if it is one of ``allowed``, else a ValueError naming them."""
    if precision not in allowed:
        raise ValueError(f"precision must be one of {', '.join(allowed)}, got {precision!r}")
    return precision


def auto_compile(device: torch.device) -> bool:
    """What ``compile="auto"`` chooses: torch.compile on a CUDA device where Triton, its GPU code generator,
    is installed (it is not on every platform, nor usable on GPUs older than compute capability 7.0)."""
    if device.type != "cuda":
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # a torch without the helper: let the first-step fallback decide
        return True
    return has_triton()


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device``: "auto" is bf16 on CUDA and none (float32)
    elsewhere; "fp32" none; "bf16" and "fp16" those dtypes on any device."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    check_precision(precision)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return dtypes[precision]


@functools.lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:
    """Once per process: asked at every training step, the warning would otherwise repeat per call site."""
    warnings.warn("this CPU has no native bf16 (no avx512_bf16 or AMX): bf16 autocast emulates it and runs about "
                  "10x slower than fp32 here (docs/performance.md); use --precision fp32", RuntimeWarning,
                  stacklevel=3)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX-512 with avx512_bf16, or AMX); on AVX2-only CPUs bf16
    convolutions are emulated, measured 8-13x slower than fp32 for the digits preset."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN or without the probe: assume the best
        return True
