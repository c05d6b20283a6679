"""Package foundation: build info, ISA override, import-time torch check."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import embkern


def test_build_info_fields():
    info = embkern.build_info()
    assert info["version"] == embkern.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert "scalar" in info["compiled_isas"]
    assert info["active_isa"] in info["compiled_isas"]
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_archs"], list)
    assert info["cuda"] == bool(info["cuda_archs"])
    if info["best_isa"] == "avx512":
        assert "avx512" in info["cpu_features"] and "avx2" in info["cpu_features"]


def test_set_isa_changes_and_restores_the_active_level():
    best = embkern.build_info()["best_isa"]
    embkern.set_isa("scalar")
    assert embkern.get_isa() == "scalar" and embkern.build_info()["active_isa"] == "scalar"
    embkern.set_isa(best)
    assert embkern.get_isa() == best


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)


def test_embkern_isa_environment_variable():
    r = _run("import embkern; print(embkern.get_isa())", EMBKERN_ISA="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"
    r = _run("import embkern; print(embkern.get_isa())", EMBKERN_ISA="bogus")
    assert r.returncode == 0 and "ignoring EMBKERN_ISA=bogus" in r.stderr


def test_import_under_another_torch_release_fails_clearly():
    code = (
        "import sys, types, torch; torch.__version__ = '9.9.0';"
        "import embkern"
    )
    r = _run(code)
    assert r.returncode != 0
    assert "embkern was built against torch" in r.stderr and "torch 9.9.0 is installed" in r.stderr


def test_unsupported_isa_raises_value_error_naming_it():
    if embkern.build_info()["best_isa"] == "avx512":
        pytest.skip("this CPU supports every level")
    with pytest.raises(ValueError, match="not supported by this CPU"):
        embkern.set_isa("avx512")
