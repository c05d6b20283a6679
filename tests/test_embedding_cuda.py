"""embedding family on CUDA: every op against the CPU path, bit for bit (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

import embkern
from test_embedding import FEATS, OPS, check_compile_matches_eager, check_fused_compile_matches_eager, make_problem

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and embkern.build_info()["cuda"]),
                                reason="needs a CUDA device and a CUDA build")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def cuda(xs):
    return tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in xs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooling,combine,psw", [("sum", "concat", False), ("mean", "sum", False),
                                                  ("sum", "concat", True), ("none", "concat", False),
                                                  ("none", "sum", False), ("mean", "concat", False)])
@pytest.mark.parametrize("D", [1, 17, 64, 300])
def test_forward_cuda_equals_cpu(dtype, pooling, combine, psw, D):
    w, v, o, lay = make_problem(FEATS, 1000, D, 33, seed=D, dtype=dtype)
    p = torch.rand(v.numel(), dtype=torch.float64 if dtype == torch.float64 else torch.float32) if psw else None
    cpu = OPS.mux_embedding_bag(w, v, o, *lay, pooling, combine, p, False)
    gpu = OPS.mux_embedding_bag(*cuda((w, v, o, *lay)), pooling, combine, p.cuda() if psw else None, False)
    assert torch.equal(gpu.cpu(), cpu)


def test_int32_ids_and_large_ids_cuda():
    w, v, o, lay = make_problem(FEATS, 5000, 16, 40, seed=1, id_dtype=torch.int32)
    assert torch.equal(OPS.mux_embedding_bag(*cuda((w, v, o, *lay)), "sum", "concat", None, False).cpu(),
                       OPS.mux_embedding_bag(w, v, o, *lay, "sum", "concat", None, False))
    # hash rows: weight[r] = r
    M = 100_000
    po, base, size, keys = embkern.probe_layout({"a": 3}, M, layout="sub_tables", num_tables=2)
    vals = torch.tensor([0, -1, -(1 << 63), (1 << 63) - 1, 12345])
    offs = torch.tensor([0, 5])
    wr = torch.arange(M, dtype=torch.float64).unsqueeze(1)
    cpu = OPS.mux_embedding_bag(wr, vals, offs, po, base, size, keys, "none", "concat", None, False)
    gpu = OPS.mux_embedding_bag(*cuda((wr, vals, offs, po, base, size, keys)), "none", "concat", None, False)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooling,combine", [("sum", "concat"), ("mean", "sum"), ("none", "concat")])
def test_backward_and_optimizers_cuda_equal_cpu(dtype, pooling, combine):
    w, v, o, lay = make_problem(FEATS, 300, 37, 50, seed=3, dtype=dtype, max_len=6)
    out = OPS.mux_embedding_bag(w, v, o, *lay, pooling, combine, None, False)
    g = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    dense = OPS.mux_embedding_bag_backward(g, w, v, o, *lay, pooling, combine, None)
    assert torch.equal(OPS.mux_embedding_bag_backward(*cuda((g, w, v, o, *lay)), pooling, combine, None).cpu(), dense)
    rows, vals = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, pooling, combine, None)
    rows_g, vals_g = OPS.mux_embedding_bag_backward_sparse(*cuda((g, w, v, o, *lay)), pooling, combine, None)
    assert torch.equal(rows_g.cpu(), rows) and torch.equal(vals_g.cpu(), vals)
    mdt = torch.float64 if dtype == torch.float64 else torch.float32
    w1, m1 = w.clone(), torch.rand(300, dtype=mdt)
    w2, m2 = w1.cuda(), m1.cuda()
    OPS.mux_embedding_bag_rowwise_adagrad_(w1, m1, g, v, o, *lay, pooling, combine, None, 0.1, 1e-6)
    OPS.mux_embedding_bag_rowwise_adagrad_(w2, m2, *cuda((g, v, o, *lay)), pooling, combine, None, 0.1, 1e-6)
    assert torch.equal(w2.cpu(), w1) and torch.equal(m2.cpu(), m1)
    w3, w4 = w.clone(), w.cuda()
    OPS.mux_embedding_bag_sgd_(w3, g, v, o, *lay, pooling, combine, None, 0.3)
    OPS.mux_embedding_bag_sgd_(w4, *cuda((g, v, o, *lay)), pooling, combine, None, 0.3)
    assert torch.equal(w4.cpu(), w3)


def test_cuda_deterministic_and_hot_row():
    po, base, size, keys = embkern.probe_layout({"a": 2}, 10)
    w = torch.randn(10, 33, device="cuda")
    v = torch.full((100_000,), 3, dtype=torch.int64, device="cuda")
    o = torch.tensor([0, 50_000, 100_000], device="cuda")
    lay = cuda((po, base, size, keys))
    g = torch.randn(2, 66, device="cuda")
    a = OPS.mux_embedding_bag_backward(g, w, v, o, *lay, "mean", "concat", None)
    b = OPS.mux_embedding_bag_backward(g, w, v, o, *lay, "mean", "concat", None)
    assert torch.equal(a, b)
    assert torch.equal(a.cpu(), OPS.mux_embedding_bag_backward(g.cpu(), w.cpu(), v.cpu(), o.cpu(), po, base, size, keys,
                                                               "mean", "concat", None))


def test_cuda_empty_and_errors():
    po, base, size, keys = cuda(embkern.probe_layout({"a": 2, "b": 1}, 50))
    w = torch.randn(50, 4, device="cuda")
    out = OPS.mux_embedding_bag(w, torch.zeros(0, dtype=torch.int64, device="cuda"),
                                torch.zeros(7, dtype=torch.int64, device="cuda"), po, base, size, keys, "sum",
                                "concat", None, False)
    assert out.shape == (3, 12) and torch.all(out == 0)
    v, o = torch.tensor([1, 2, 3], device="cuda"), torch.tensor([0, 2, 1, 2, 3], device="cuda")
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        OPS.mux_embedding_bag(w, v, o, po, base, size, keys, "sum", "concat", None, False)
    with pytest.raises(ValueError, match="must be on the same device"):
        OPS.mux_embedding_bag(w, v.cpu(), o, po, base, size, keys, "sum", "concat", None, False)


def test_module_and_autograd_cuda():
    m = embkern.UnifiedEmbedding(1000, 8, {"u": 2, "i": 1}, optimizer="rowwise_adagrad", lr=0.1, device="cuda")
    m_cpu = embkern.UnifiedEmbedding(1000, 8, {"u": 2, "i": 1}, optimizer="rowwise_adagrad", lr=0.1)
    m_cpu.weight.data.copy_(m.weight.data.cpu())
    x = {"u": (torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])), "i": (torch.tensor([5, 6]), torch.tensor([0, 1, 2]))}
    xg = {k: (a.cuda(), b.cuda()) for k, (a, b) in x.items()}
    m(xg).square().sum().backward()
    m_cpu(x).square().sum().backward()
    assert torch.equal(m.weight.detach().cpu(), m_cpu.weight.detach())
    w = torch.randn(40, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    ww, v, o, lay = make_problem({"a": 2, "b": 1}, 40, 5, 4, seed=2, dtype=torch.float64)
    psw = torch.rand(v.numel(), dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w_, p_: OPS.mux_embedding_bag(w_, *cuda((v, o, *lay)), "sum", "concat", p_, False), (w, psw))


# ---- opcheck ------------------------------------------------------------------------------------------


def _opcheck_all(device):
    """torch.library.opcheck on every embedding op with a CUDA kernel, the arguments of test_embedding's
    test_opcheck (plus the sparse backward) on `device`; in-place ops get a fresh clone per call."""
    w, v, o, lay = make_problem({"a": 2, "b": 1}, 40, 6, 3, seed=14)
    w, v, o = w.to(device), v.to(device), o.to(device)
    lay = tuple(t.to(device) for t in lay)
    psw = torch.rand(v.numel(), device=device)
    wg = w.clone().requires_grad_(True)
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "sum", "concat", None, False))
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "mean", "sum", None, False))
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "sum", "concat", psw.requires_grad_(True), False))
    torch.library.opcheck(OPS.mux_embedding_bag, (w, v, o, *lay, "none", "sum", None, False))
    g = torch.randn(3, 18, device=device)
    torch.library.opcheck(OPS.mux_embedding_bag_backward, (g, w, v, o, *lay, "sum", "concat", None))
    torch.library.opcheck(OPS.mux_embedding_bag_backward_sparse, (g, w, v, o, *lay, "sum", "concat", None))
    torch.library.opcheck(OPS.mux_embedding_bag_psw_backward, (g, w, v, o, *lay, "sum", "concat", None))
    torch.library.opcheck(OPS.mux_embedding_bag_sgd_, (w.clone(), g, v, o, *lay, "sum", "concat", None, 0.1))
    torch.library.opcheck(OPS.mux_embedding_bag_rowwise_adagrad_,
                          (w.clone(), torch.zeros(40, device=device), g, v, o, *lay, "sum", "concat", None, 0.1, 1e-8))
    torch.library.opcheck(OPS.mux_embedding_bag_fused,
                          (w.clone(), torch.zeros(0, device=device), v, o, *lay, "sum", "concat", None, "sgd", 0.1,
                           1e-8),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_cuda():
    _opcheck_all("cuda")


# ---- torch.compile on CUDA (inductor: Triton around the custom ops) ------------------------------------


def test_unified_embedding_torch_compile_cuda():
    check_compile_matches_eager("cuda")


@pytest.mark.skipif(embkern.embedding._FUSED_COMPILE_UNSUPPORTED,
                    reason="fused optimizers under torch.compile need torch >= 2.12")
def test_unified_embedding_fused_torch_compile_cuda():
    check_fused_compile_matches_eager("cuda")
