"""embkern: fast, exact CPU and CUDA kernels for embedding systems, as PyTorch custom ops.

Ops live under ``torch.ops.embkern``; this package adds a thin Python API that accepts torch
tensors (any device) and numpy arrays (numpy in, numpy out).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch  # noqa: F401  (loads libtorch before the extension)

from ._loader import _C
from . import _ops  # noqa: F401  (fake kernels)
from . import bits, cur, embedding, fastrp, int8, rbe

# Held before the star imports: `fastrp` the function replaces `fastrp` the module name below.
_FAMILIES = (bits, embedding, int8, rbe, fastrp, cur)
from .bits import *  # noqa: F401,F403
from .cur import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .fastrp import *  # noqa: F401,F403
from .int8 import *  # noqa: F401,F403
from .rbe import *  # noqa: F401,F403

__version__: str = _C.build_info()["version"]

__all__ = ["__version__", "build_info", "set_isa", "get_isa"]
for _family in _FAMILIES:
    __all__ += _family.__all__


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
