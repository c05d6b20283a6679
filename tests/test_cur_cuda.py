"""cur family on CUDA: score_topk must equal the CPU path bit for bit (same fmaf chain per score)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and embkern.build_info().get("cuda")), reason="needs a CUDA build and a GPU")


def make(rng, b, r, n, dtype):
    C = torch.from_numpy(rng.standard_normal((b, r)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((r, n)).astype(np.float32))
    if dtype == "int8":
        return C, torch.from_numpy(rng.integers(-127, 128, size=(r, n), dtype=np.int8)), torch.rand(n) * 0.1
    return C, x.to(getattr(torch, dtype)), None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("b,r,n,k", [(1, 64, 1037, 10), (13, 33, 5000, 1), (9, 256, 70001, 100), (3, 7, 300, 300),
                                     (2, 16, 3000, 2048), (64, 256, 20000, 100)])
def test_score_topk_cuda_equals_cpu(dtype, b, r, n, k):
    rng = np.random.default_rng(b * 7 + n)
    C, E, S = make(rng, b, r, n, dtype)
    v, i = embkern.score_topk(C, E, k, scales=S)
    gv, gi = embkern.score_topk(C.cuda(), E.cuda(), k, scales=None if S is None else S.cuda())
    assert gv.is_cuda and gi.dtype == torch.int64
    assert torch.equal(gi.cpu(), i)
    assert torch.equal(gv.cpu(), v)


def test_score_topk_cuda_exclude_and_ties():
    rng = np.random.default_rng(1)
    C = torch.from_numpy(rng.integers(-2, 3, size=(5, 4)).astype(np.float32))
    E = torch.from_numpy(rng.integers(-2, 3, size=(4, 3000)).astype(np.float32))  # many ties
    ex = torch.from_numpy(rng.integers(-1, 3000, size=(5, 50)))
    for k in (1, 37, 500):
        v, i = embkern.score_topk(C, E, k, exclude=ex)
        gv, gi = embkern.score_topk(C.cuda(), E.cuda(), k, exclude=ex.cuda())
        assert torch.equal(gi.cpu(), i) and torch.equal(gv.cpu(), v)


def test_score_topk_cuda_deterministic_and_errors():
    C, E = torch.randn(8, 32, device="cuda"), torch.randn(32, 50000, device="cuda")
    a = embkern.score_topk(C, E, 100)
    b = embkern.score_topk(C, E, 100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="same device"):
        embkern.score_topk(C, E.cpu(), 3)
    with pytest.raises(ValueError, match="k must be in"):
        embkern.score_topk(C, E, 50001)
    Cn = C.clone()
    Cn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="C must be finite"):
        embkern.score_topk(Cn, E, 3)


def test_cur_index_on_cuda():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((40, 8)) @ rng.standard_normal((8, 3000))
    index = embkern.CURIndex.build(torch.from_numpy(M[:30]), np.arange(0, 3000, 300), rcond=1e-6)
    c = torch.from_numpy(M[30:, ::300].astype(np.float32))
    v, i = index.topk(c, 10)
    gv, gi = index.to("cuda").topk(c.cuda(), 10)
    assert torch.equal(gi.cpu(), i)


# ---- opcheck ------------------------------------------------------------------------------------------


def _opcheck_all(device):
    """torch.library.opcheck on score_topk (the cur family's one op), the arguments of test_cur's
    test_score_topk_opcheck on `device`."""
    C, E = torch.randn(3, 8, device=device), torch.randn(8, 100, device=device)
    ex = torch.tensor([[1, -1], [2, 3], [-1, -1]], device=device)
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E, 5, ex, None))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E.to(torch.int8), 5, None, torch.rand(100, device=device)))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E.bfloat16(), 7))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C.clone().requires_grad_(), E.clone().requires_grad_(), 6))


def test_opcheck_cuda():
    _opcheck_all("cuda")


def test_score_topk_torch_compile_cuda():
    f = torch.compile(lambda c, e: torch.ops.embkern.score_topk(c, e, 4), fullgraph=True)
    C, E = torch.randn(2, 8, device="cuda"), torch.randn(8, 50, device="cuda")
    assert torch.equal(f(C, E)[1], embkern.score_topk(C, E, 4)[1])
