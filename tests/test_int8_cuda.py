"""int8 family on CUDA: every op against the CPU path (bitwise for integer outputs), deterministic
run to run. Skipped without a CUDA device or a CUDA build."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and embkern.build_info()["cuda"]), reason="needs a CUDA device and a CUDA build"
)


def codes(g, n, dim):
    return torch.randint(-128, 128, (n, dim), dtype=torch.int8, generator=g)


@pytest.mark.parametrize("dim", [1, 7, 16, 33, 384])
def test_quantize_matches_cpu(dim):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(300, dim, generator=g) * 3
    x[0] = 1e6
    for p in (embkern.int8_calibrate(x, "absmax"), embkern.int8_calibrate(x, "minmax", per_dim=True)):
        cpu = embkern.int8_quantize(x, p)
        gpu = embkern.int8_quantize(x.cuda(), p)
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
        assert torch.equal(embkern.int8_dequantize(gpu, p).cpu(), embkern.int8_dequantize(cpu, p))
    x[3, dim - 1] = float("nan")
    with pytest.raises(ValueError, match=rf"x must be finite, got nan at \[3, {dim - 1}\]"):
        embkern.int8_quantize(x.cuda(), p)


@pytest.mark.parametrize("dim", [1, 3, 4, 64, 65, 384])
@pytest.mark.parametrize("k", [1, 10, 300, 1024])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_int8_topk_matches_cpu(dim, k, metric):
    g = torch.Generator().manual_seed(dim * 31 + k)
    q, db = codes(g, 37, dim), codes(g, 40000, dim)
    q[q == 0] = 1
    db[db == 0] = 1
    db[1000:1300] = db[:300]  # ties across chunks
    v, i = embkern.int8_topk(q, db, k, metric)
    vg, ig = embkern.int8_topk(q.cuda(), db.cuda(), k, metric)
    assert torch.equal(ig.cpu(), i)
    assert torch.equal(vg.cpu(), v)
    vg2, ig2 = embkern.int8_topk(q.cuda(), db.cuda(), k, metric)
    assert torch.equal(vg2, vg) and torch.equal(ig2, ig)


def test_int8_topk_k_equals_n_and_errors():
    g = torch.Generator().manual_seed(3)
    q, db = codes(g, 5, 20), codes(g, 700, 20)
    v, i = embkern.int8_topk(q, db, 700)
    vg, ig = embkern.int8_topk(q.cuda(), db.cuda(), 700)
    assert torch.equal(ig.cpu(), i) and torch.equal(vg.cpu(), v)
    with pytest.raises(ValueError, match="must be on the same device"):
        embkern.int8_topk(q.cuda(), db, 1)
    big = codes(g, 2000, 20).cuda()
    with pytest.raises(ValueError, match=r"k must be <= 1024 on CUDA"):
        embkern.int8_topk(q.cuda(), big, 1025)


def test_rescore_and_search_index_on_cuda():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2000, 48, generator=g)
    qx = torch.randn(9, 48, generator=g)
    cand = torch.randint(-1, 2000, (9, 50), generator=g)
    v, i = embkern.rescore(qx, cand, x, 10)
    vg, ig = embkern.rescore(qx.cuda(), cand.cuda(), x.cuda(), 10)
    assert torch.equal(ig.cpu(), i)
    np.testing.assert_allclose(vg.cpu().numpy(), v.numpy(), rtol=1e-5, atol=1e-5)
    index = embkern.SearchIndex(48, "int8", device="cuda")
    index.add(x)
    cpu_index = embkern.SearchIndex(48, "int8")
    cpu_index.add(x)
    vg, ig = index.search(qx.cuda(), 5, rescore=4)
    v, i = cpu_index.search(qx, 5, rescore=4)
    assert torch.equal(ig.cpu(), i)


# ---- opcheck ------------------------------------------------------------------------------------------


def _opcheck_all(device):
    """torch.library.opcheck on every int8 op (all have a CUDA kernel), the arguments of test_int8's
    test_opcheck on `device`."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (5, 21), dtype=torch.int8, generator=g)
    db = torch.randint(-128, 128, (300, 21), dtype=torch.int8, generator=g)
    norms = embkern.int8_norms(db)
    samples = [
        (torch.ops.embkern.int8_quantize.default,
         (torch.randn(6, 21, generator=g), torch.tensor(0.02), torch.tensor(3, dtype=torch.int32))),
        (torch.ops.embkern.int8_quantize.default,
         (torch.randn(6, 21, generator=g), torch.rand(21, generator=g) + 0.1, torch.zeros(21, dtype=torch.int32))),
        (torch.ops.embkern.int8_topk.default, (q, db, 7)),
        (torch.ops.embkern.int8_topk.default, (q, db, 7, "cosine", norms)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))


def test_opcheck_cuda():
    _opcheck_all("cuda")
