"""Shared fixtures: every test that takes `isa` runs once per CPU code path this machine has."""
from __future__ import annotations

import pytest
import torch

import embkern

_INFO = embkern.build_info()
_EXTENSIONS = ("vpopcntdq", "vnni", "bf16", "vbmi")


def isa_paths() -> list[tuple[str, tuple[str, ...]]]:
    """(level, disabled extensions) for every distinct kernel path the CPU supports."""
    best = _INFO["best_isa"]
    paths = [("scalar", ())]
    if best in ("avx2", "avx512"):
        paths.append(("avx2", ()))
    if best == "avx512":
        if any(f in _INFO["cpu_features"] for f in _EXTENSIONS):
            paths.append(("avx512", _EXTENSIONS))  # AVX-512 F/BW/VL/DQ only (Skylake-X class)
        paths.append(("avx512", ()))  # with every extension present
    return paths


def _path_id(p):
    level, disabled = p
    return f"{level}-base" if disabled else level


@pytest.fixture(params=isa_paths(), ids=_path_id)
def isa(request):
    level, disabled = request.param
    embkern.set_isa(level, disabled)
    yield request.param
    embkern.set_isa(_INFO["best_isa"])


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def pytest_report_header(config):
    return f"embkern {_INFO['version']}: ISA paths {[_path_id(p) for p in isa_paths()]}, CUDA built: {_INFO['cuda']}"
