"""Loads the compiled extension after checking it was built for the torch that is installed.

A build of embkern links against one torch release's C++ ABI. Loading it under another release
fails with an undefined-symbol error deep in the dynamic linker; this check says what is wrong
and what to do instead.
"""
from __future__ import annotations

import re

import torch


def _release(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _load():
    try:
        from . import _build_config
    except ImportError as e:  # a source checkout that was never built
        raise ImportError(
            "embkern's compiled extension is missing: build it with `make build` (source checkout) "
            "or install with `pip install --no-build-isolation .`"
        ) from e
    built, running = _build_config.TORCH_VERSION, torch.__version__
    if _release(built) != _release(running):
        raise ImportError(
            f"embkern was built against torch {built} but torch {running} is installed; "
            f"install torch=={built.split('+')[0]} or rebuild embkern against this torch "
            f"(pip install --no-build-isolation --force-reinstall embkern)"
        )
    if _build_config.CUDA and torch.version.cuda is None:
        raise ImportError(
            f"this embkern build has CUDA kernels and needs a CUDA build of torch {built}, "
            f"but torch {running} is a CPU-only build"
        )
    from . import _C

    return _C


_C = _load()
