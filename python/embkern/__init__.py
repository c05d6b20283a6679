"""embkern: fast, exact CPU and CUDA kernels for embedding systems, as PyTorch custom ops.

Ops live under ``torch.ops.embkern``; this package adds a thin Python API that accepts torch
tensors (any device) and numpy arrays (numpy in, numpy out).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch  # noqa: F401  (loads libtorch before the extension)

from ._loader import _C
from . import _ops  # noqa: F401  (fake kernels)
from .bits import hamming_distance, hamming_topk, pack_bits, unpack_bits

__version__: str = _C.build_info()["version"]

__all__ = [
    "__version__",
    "build_info",
    "set_isa",
    "get_isa",
    "pack_bits",
    "unpack_bits",
    "hamming_distance",
    "hamming_topk",
]


def build_info() -> dict[str, Any]:
    """Version, torch version built against, compiled ISAs, active ISA, CPU features, CUDA build info."""
    return dict(_C.build_info())


def set_isa(isa: str, disable: Sequence[str] = ()) -> None:
    """Forces the CPU kernels down to ``isa`` ("scalar", "avx2" or "avx512"), for testing and
    comparisons; ``disable`` also turns off AVX-512 extensions ("vpopcntdq", "vnni", "bf16", "vbmi").
    The environment variable ``EMBKERN_ISA`` sets the starting level. Raises ValueError for a level
    this CPU lacks."""
    _C.set_isa(isa, list(disable))


def get_isa() -> str:
    """The ISA level the CPU kernels use now."""
    return _C.get_isa()
