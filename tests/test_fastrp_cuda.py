"""fastrp family on CUDA against the CPU path (skipped without a CUDA device)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import embkern
from test_fastrp import check_compile_fullgraph, random_csr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not embkern.build_info()["cuda"],
                                reason="needs a CUDA device and a CUDA build")


def graph(seed, n, m, weighted=True):
    rng = np.random.default_rng(seed)
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = u != v
    u, v = u[keep], v[keep]
    w = rng.uniform(0.5, 2.0, len(u)) if weighted else np.ones(len(u))
    a = sp.coo_matrix((np.r_[w, w], (np.r_[u, v], np.r_[v, u])), shape=(n, n)).tocsr()
    a.sum_duplicates()
    a = a.astype(np.float32)
    return torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(), torch.from_numpy(a.data)


def cuda(*ts):
    return tuple(None if t is None else t.cuda() for t in ts)


def test_projection_bitwise_equal_to_cpu():
    keys = torch.tensor([0, 1, -7, 2**62, 99], dtype=torch.int64)
    for s in (1.0, 3.0, 40.0):
        for fr in (False, True):
            cpu = embkern.fastrp_projection(keys, 131, s, 5, feature_rows=fr)
            gpu = embkern.fastrp_projection(keys.cuda(), 131, s, 5, feature_rows=fr)
            assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("d", [1, 3, 4, 64, 128, 130, 256, 300])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_csr_spmm_matches_cpu(d, x_dtype):
    ip, ix, w = graph(d, 500, 2000)
    x = torch.randn(500, d).to(x_dtype)
    rs = torch.rand(500) + 0.5
    for normalize in (False, True):
        cpu = embkern.csr_spmm(ip, ix, w, x, rs, normalize=normalize)
        gpu = embkern.csr_spmm(*cuda(ip, ix, w, x, rs), normalize=normalize)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
        if not normalize:  # same fma order per column: identical bits
            assert torch.equal(gpu.cpu(), cpu)
    out_c, out_g = torch.ones(500, d), torch.ones(500, d, device="cuda")
    embkern.csr_spmm(ip, ix, w, x, rs, normalize=True, out=out_c, alpha=0.5)
    embkern.csr_spmm(*cuda(ip, ix, w, x, rs), normalize=True, out=out_g, alpha=0.5)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-5, atol=1e-6)


def test_int32_column_ids_on_cuda():
    """The ops take int32 column ids on CUDA too (widened on the device): the bits of int64's, and
    the same index errors."""
    ip, ix, w = graph(3, 400, 1500)
    x = torch.randn(400, 40)
    want = torch.ops.embkern.csr_spmm(*cuda(ip, ix, w, x), None, False)
    assert torch.equal(torch.ops.embkern.csr_spmm(*cuda(ip, ix.int(), w, x), None, False), want)
    args = (400, 16, [0.0, 1.0, 1.0], 0.0, 0.0, 3.0, 5, None, "merge", None, 0, None)
    want = torch.ops.embkern.fastrp(*cuda(ip, ix, w), *args)
    assert torch.equal(torch.ops.embkern.fastrp(*cuda(ip, ix.int(), w), *args), want)
    bad = ix.int().clone()
    bad[7] = 400
    with pytest.raises(IndexError, match=r"csr_spmm: indices must be in \[0, 400\), got indices\[7\] = 400"):
        torch.ops.embkern.csr_spmm(*cuda(ip, bad, w, x), None, False)


@pytest.mark.parametrize("normalize", ["merge", "propagate", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fastrp_matches_cpu(normalize, dtype):
    ip, ix, w = graph(1, 2000, 8000)
    kw = dict(self_weight=0.3, beta=-0.4, normalize=normalize, dtype=dtype, seed=9)
    cpu = embkern.fastrp((ip, ix, w), 96, [0.0, 1.0, 1.0], **kw)
    gpu = embkern.fastrp(cuda(ip, ix, w), 96, [0.0, 1.0, 1.0], **kw)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: a norm rounding differently can flip a bf16 ulp
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol)
    again = embkern.fastrp(cuda(ip, ix, w), 96, [0.0, 1.0, 1.0], **kw)
    assert torch.equal(gpu, again)  # deterministic run to run


def test_fastrp_features_keys_and_sparse_tensor_input():
    ip, ix, w = graph(2, 300, 1000)
    feats = torch.randn(300, 5)
    keys = torch.randperm(300) * 7 + 3
    kw = dict(features=feats, feature_dim=9, node_keys=keys, self_weight=1.0)
    cpu = embkern.fastrp((ip, ix, w), 33, [1.0, 1.0], **kw)
    gpu = embkern.fastrp(cuda(ip, ix, w), 33, [1.0, 1.0], features=feats.cuda(), feature_dim=9, node_keys=keys.cuda(),
                         self_weight=1.0)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    t = torch.sparse_csr_tensor(ip, ix, w, size=(300, 300)).cuda()
    torch.testing.assert_close(embkern.fastrp(t, 16, [1.0]).cpu(), embkern.fastrp((ip, ix, w), 16, [1.0]), rtol=1e-5, atol=1e-5)


def test_bad_inputs_on_cuda():
    ip, ix, w = cuda(torch.tensor([0, 1, 2]), torch.tensor([1, 2]), torch.ones(2))
    with pytest.raises(IndexError, match=r"indices must be in \[0, 2\), got indices\[1\] = 2"):
        embkern.fastrp((ip, ix, w), 4, [1.0])
    with pytest.raises(ValueError, match=r"same device"):
        embkern.csr_spmm(ip, torch.tensor([0, 1]), None, torch.randn(2, 3))


def test_csr_spmm_misaligned_rows():
    """A contiguous view starting one element in: the kernel must fall back from vector loads."""
    ip, ix, w = graph(3, 200, 800)
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(200 * 64 + 1).to(dtype)
        x = base[1:].view(200, 64)
        cpu = embkern.csr_spmm(ip, ix, w, x)
        gpu = embkern.csr_spmm(*cuda(ip, ix, w), base.cuda()[1:].view(200, 64))
        assert torch.equal(gpu.cpu(), cpu)


# ---- opcheck ------------------------------------------------------------------------------------------


def _opcheck_all(device):
    """torch.library.opcheck on every fastrp op (all have a CUDA kernel), the arguments of test_fastrp's
    test_opcheck and test_opcheck_autograd on `device`; the in-place op gets a fresh output buffer."""
    rng = np.random.default_rng(18)
    a = random_csr(rng, 40, 40, 0.1)
    ip, ix, w = (torch.from_numpy(a.indptr).long().to(device), torch.from_numpy(a.indices).long().to(device),
                 torch.from_numpy(a.data).to(device))
    x = torch.randn(40, 19, device=device)
    samples = [
        (torch.ops.embkern.csr_spmm.default, (ip, ix, w, x, torch.rand(40, device=device), True)),
        (torch.ops.embkern.csr_spmm.default, (ip, ix, None, x.bfloat16(), None, False)),
        (torch.ops.embkern.csr_spmm_accumulate_.default,
         (torch.zeros(40, 19, device=device), ip, ix, w, x, None, 0.5, True)),
        (torch.ops.embkern.fastrp.default,
         (ip, ix, w, 40, 16, [0.0, 1.0, 1.0], 0.5, -0.2, 3.0, 7, None, "propagate", None, 0, torch.bfloat16)),
        (torch.ops.embkern.fastrp_projection.default, (torch.arange(10, device=device), 12, 3.0, 1, False)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    rng = np.random.default_rng(19)
    a = random_csr(rng, 30, 20, 0.2)
    ip, ix, w = (torch.from_numpy(a.indptr).long().to(device), torch.from_numpy(a.indices).long().to(device),
                 torch.from_numpy(a.data).to(device))
    for normalize in (False, True):
        x = torch.randn(20, 9, device=device, requires_grad=True)
        torch.library.opcheck(torch.ops.embkern.csr_spmm.default,
                              (ip, ix, w, x, torch.rand(30, device=device), normalize))


def test_opcheck_cuda():
    _opcheck_all("cuda")


def test_torch_compile_fullgraph_cuda():
    check_compile_fullgraph("cuda")
