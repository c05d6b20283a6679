"""rbe family on CUDA: every result equal to the CPU path (bitwise scores, identical top-k)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and embkern.build_info().get("cuda")), reason="needs a CUDA build and a GPU"
)


def _codes(rng, n, dim, bits):
    return torch.from_numpy(embkern.pack_levels(rng.integers(0, 2**bits, (n, dim), dtype=np.uint8), bits))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("dim", [1, 7, 64, 65, 100, 256, 257, 1100])
def test_sdc_scores_cuda_equals_cpu(bits, dim):
    rng = np.random.default_rng(dim * 10 + bits)
    q, db = _codes(rng, 13, dim, bits), _codes(rng, 3001, dim, bits)
    inv = torch.from_numpy(rng.uniform(0.1, 2.0, 3001).astype(np.float32))
    for i in (None, inv):
        cpu = embkern.sdc_scores(q, db, dim, bits, i)
        gpu = embkern.sdc_scores(q.cuda(), db.cuda(), dim, bits, None if i is None else i.cuda())
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 10, 3001])
def test_sdc_topk_cuda_equals_cpu(bits, k):
    rng = np.random.default_rng(bits * 100 + k)
    dim = 100
    q, db = _codes(rng, 11, dim, bits), _codes(rng, 3001, dim, bits)
    db[1500:1600] = db[:100]  # duplicates: ties must go to the lower index
    inv = torch.from_numpy(rng.uniform(0.5, 1.5, 3001).astype(np.float32))
    for i in (None, inv):
        cv, ci = embkern.sdc_topk(q, db, dim, bits, k, i)
        gv, gi = embkern.sdc_topk(q.cuda(), db.cuda(), dim, bits, k, None if i is None else i.cuda())
        assert torch.equal(gv.cpu(), cv) and torch.equal(gi.cpu(), ci)


def test_sdc_topk_cuda_many_queries_chunked():
    # enough queries x rows that the key buffer is used in several chunks
    rng = np.random.default_rng(1)
    q, db = _codes(rng, 300, 256, 2), _codes(rng, 300_000, 256, 2)
    cv, ci = embkern.sdc_topk(q, db, 256, 2, 10)
    gv, gi = embkern.sdc_topk(q.cuda(), db.cuda(), 256, 2, 10)
    assert torch.equal(gv.cpu(), cv) and torch.equal(gi.cpu(), ci)


def test_encode_cuda_equals_cpu():
    torch.manual_seed(0)
    model = embkern.RecurrentBinarizer(32, 40, 2)
    x = torch.randn(200, 32)
    c_cpu, i_cpu = model.encode(x)
    c_gpu, i_gpu = model.cuda().encode(x.cuda())
    same = (c_gpu.cpu() == c_cpu).all(1)
    assert same.float().mean() > 0.97  # rows may differ only where a pre-activation is a rounding away from 0
    torch.testing.assert_close(i_gpu.cpu()[same], i_cpu[same])


def test_cuda_bad_inputs():
    q = torch.zeros(2, 4, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match=r"bits must be in \[1, 4\]"):
        embkern.sdc_topk(q, q, 16, 5, 1)
    with pytest.raises(ValueError, match=r"same device"):
        embkern.sdc_scores(q, q.cpu(), 16, 2)


# ---- opcheck ------------------------------------------------------------------------------------------


def _opcheck_all(device):
    """torch.library.opcheck on the rbe ops with a CUDA kernel (sdc_scores, sdc_topk), the arguments of
    test_rbe's test_opcheck on `device`."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (5, 25), dtype=torch.uint8, generator=g)  # dim 100 x 2 bits
    db = torch.randint(0, 256, (300, 25), dtype=torch.uint8, generator=g)
    inv = torch.rand(300, generator=g) + 0.5
    q, db, inv = q.to(device), db.to(device), inv.to(device)
    torch.library.opcheck(torch.ops.embkern.sdc_scores.default, (q, db, 100, 2, None))
    torch.library.opcheck(torch.ops.embkern.sdc_scores.default, (q, db, 100, 2, inv))
    torch.library.opcheck(torch.ops.embkern.sdc_topk.default, (q, db, 100, 2, 7, inv))


def test_opcheck_cuda():
    _opcheck_all("cuda")
