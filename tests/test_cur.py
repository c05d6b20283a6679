"""cur family: score_topk against numpy (every ISA path, bit for bit), CURIndex, ANNCUR, adaCUR."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import embkern
from reference import cur_ref

DTYPES = ["float32", "bfloat16", "int8"]


def make_E(rng, r, n, dtype):
    """(E tensor, scales tensor or None, E as float32 numpy, scales numpy or None)."""
    x = rng.standard_normal((r, n)).astype(np.float32)
    if dtype == "float32":
        return torch.from_numpy(x), None, x, None
    if dtype == "bfloat16":
        bits = cur_ref.f32_to_bf16_bits(x)
        t = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
        return t, None, cur_ref.bf16_to_f32(bits), None
    q = rng.integers(-127, 128, size=(r, n), dtype=np.int8)
    s = (rng.random(n) * 0.1).astype(np.float32)
    return torch.from_numpy(q), torch.from_numpy(s), q.astype(np.float32), s


# ---- score_topk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,r,n", [(1, 64, 1037), (3, 7, 100), (13, 33, 517), (2, 1, 31), (25, 16, 65), (1, 5, 1),
                                   (14, 40, 600), (64, 19, 1500), (29, 300, 1100)])
def test_score_topk_matches_reference(isa, dtype, b, r, n):
    rng = np.random.default_rng(b * 1000 + r * 10 + n)
    E, S, Ef, Sf = make_E(rng, r, n, dtype)
    C = rng.standard_normal((b, r)).astype(np.float32)
    for k in sorted({1, min(10, n), n}):
        v, i = embkern.score_topk(torch.from_numpy(C), E, k, scales=S)
        rv, ri = cur_ref.score_topk(C, Ef, k, scales=Sf)
        assert v.dtype == torch.float32 and i.dtype == torch.int64 and v.shape == (b, k)
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_array_equal(v.numpy(), rv)  # bitwise: one FMA chain per score on every path


@pytest.mark.parametrize("dtype", DTYPES)
def test_score_topk_ties_go_to_lower_index(isa, dtype):
    # Small integers: every score is exact, and most of them tie.
    rng = np.random.default_rng(3)
    r, n, b = 5, 700, 9
    Ef = rng.integers(-2, 3, size=(r, n)).astype(np.float32)
    C = rng.integers(-2, 3, size=(b, r)).astype(np.float32)
    if dtype == "int8":
        E, S = torch.from_numpy(Ef.astype(np.int8)), torch.ones(n)
    else:
        E, S = torch.from_numpy(Ef).to(getattr(torch, dtype)), None
    want_scores = C.astype(np.int64) @ Ef.astype(np.int64)
    for k in (1, 2, 17, 300, n):
        v, i = embkern.score_topk(torch.from_numpy(C), E, k, scales=S)
        order = np.lexsort((np.tile(np.arange(n), (b, 1)), -want_scores), axis=1)[:, :k]
        np.testing.assert_array_equal(i.numpy(), order)
        np.testing.assert_array_equal(v.numpy(), np.take_along_axis(want_scores, order, 1).astype(np.float32))
    # Against torch matmul + a stable sort (torch.topk does not promise the lower index on ties).
    ref = torch.from_numpy(C) @ torch.from_numpy(Ef)
    idx = torch.sort(ref, dim=1, descending=True, stable=True).indices[:, :50]
    assert torch.equal(embkern.score_topk(torch.from_numpy(C), E, 50, scales=S)[1], idx)


def test_score_topk_close_to_torch_matmul_topk(isa):
    rng = np.random.default_rng(5)
    C, E = torch.from_numpy(rng.standard_normal((6, 256)).astype(np.float32)), torch.randn(256, 3001, generator=torch.Generator().manual_seed(1))
    v, i = embkern.score_topk(C, E, 100)
    tv, ti = torch.topk(C @ E, 100)
    torch.testing.assert_close(v, tv, rtol=1e-5, atol=1e-4)
    assert (i == ti).float().mean() > 0.99  # float32 rounding may swap near-equal neighbours


@pytest.mark.parametrize("dtype", DTYPES)
def test_score_topk_exclude(isa, dtype):
    rng = np.random.default_rng(11)
    b, r, n = 5, 24, 300
    E, S, Ef, Sf = make_E(rng, r, n, dtype)
    C = rng.standard_normal((b, r)).astype(np.float32)
    ex = np.full((b, 40), -1, dtype=np.int64)
    for q in range(b):
        m = [0, 25, 3, 1][q % 4] if q < 4 else 40
        ex[q, :m] = rng.integers(0, n, size=m)
        if m:
            ex[q, m - 1] = ex[q, 0]  # a duplicate counts once
    ex[0, 0] = 299  # the last id
    distinct = max(len(set(row[row >= 0].tolist())) for row in ex)
    scores = cur_ref.fma_chain_scores(C, Ef, Sf)
    for k in (1, 10, n - distinct):
        v, i = embkern.score_topk(torch.from_numpy(C), E, k, exclude=torch.from_numpy(ex), scales=S)
        rv, ri = cur_ref.topk_from_scores(scores, k, ex)
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_array_equal(v.numpy(), rv)
        for q in range(b):
            assert not set(i[q].tolist()) & set(ex[q][ex[q] >= 0].tolist())
    with pytest.raises(ValueError, match="k must be in"):
        embkern.score_topk(torch.from_numpy(C), E, n - distinct + 1, exclude=torch.from_numpy(ex), scales=S)


def test_score_topk_excluded_best_items_never_appear(isa):
    E = torch.zeros(2, 50)
    E[0, 10] = E[0, 20] = 100.0  # the two best items, both excluded
    C = torch.tensor([[1.0, 0.0]])
    v, i = embkern.score_topk(C, E, 48, exclude=torch.tensor([[20, -1, 10]]))
    assert 10 not in i[0].tolist() and 20 not in i[0].tolist()
    assert i[0].tolist() == [j for j in range(50) if j not in (10, 20)]


def test_score_topk_thread_count_independent(isa, threads):
    rng = np.random.default_rng(17)
    C = torch.from_numpy(rng.standard_normal((4, 20)).astype(np.float32))
    E = torch.from_numpy(rng.standard_normal((20, 40000)).astype(np.float32))
    ex = torch.from_numpy(rng.integers(-1, 40000, size=(4, 30)))
    torch.set_num_threads(1)
    v1, i1 = embkern.score_topk(C, E, 64, exclude=ex)
    torch.set_num_threads(2)
    v2, i2 = embkern.score_topk(C, E, 64, exclude=ex)
    assert torch.equal(i1, i2) and torch.equal(v1, v2)
    rv, ri = cur_ref.score_topk(C.numpy(), E.numpy(), 64, exclude=ex.numpy())
    np.testing.assert_array_equal(i2.numpy(), ri)


def test_score_topk_edge_shapes(isa):
    E = torch.randn(3, 10)
    v, i = embkern.score_topk(torch.zeros(0, 3), E, 4)
    assert v.shape == (0, 4) and i.shape == (0, 4)
    v, i = embkern.score_topk(torch.zeros(2, 0), torch.zeros(0, 10), 3)  # r = 0: all scores 0
    assert v.tolist() == [[0.0] * 3] * 2 and i.tolist() == [[0, 1, 2]] * 2
    v, i = embkern.score_topk(np.ones(3, dtype=np.float32), E.numpy(), 2)  # numpy, one query
    assert isinstance(v, np.ndarray) and v.shape == (2,) and i.dtype == np.int64
    wide = torch.randn(3, 25)
    Ev = wide[:, 5:22]  # strided rows (a column slice)
    C = torch.randn(2, 3)
    assert torch.equal(embkern.score_topk(C, Ev, 5)[1], embkern.score_topk(C, Ev.contiguous(), 5)[1])


def test_score_topk_nan_scores_are_skipped_or_raise(isa):
    E = torch.randn(4, 40)
    E[1, 7] = float("nan")
    C = torch.randn(2, 4)
    v, i = embkern.score_topk(C, E, 39)
    assert 7 not in i[0].tolist() and 7 not in i[1].tolist()
    with pytest.raises(ValueError, match="non-NaN"):
        embkern.score_topk(C, E, 40)


def test_score_topk_bad_inputs():
    C, E = torch.randn(2, 4), torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 0"):
        embkern.score_topk(C, E, 0)
    with pytest.raises(ValueError, match=r"got 11"):
        embkern.score_topk(C, E, 11)
    with pytest.raises(ValueError, match="C must have as many columns as E has rows"):
        embkern.score_topk(torch.randn(2, 5), E, 3)
    for bad in (float("nan"), float("inf")):
        Cb = C.clone()
        Cb[1, 2] = bad
        with pytest.raises(ValueError, match="C must be finite"):
            embkern.score_topk(Cb, E, 3)
    with pytest.raises(TypeError, match="C must have dtype torch.float32, got torch.float64"):
        embkern.score_topk(C.double(), E, 3)
    with pytest.raises(TypeError, match="E must have dtype"):
        embkern.score_topk(C, E.half(), 3)
    with pytest.raises(ValueError, match="E must be a 2-D tensor"):
        embkern.score_topk(C, E[0], 3)
    with pytest.raises(ValueError, match="needs scales"):
        embkern.score_topk(C, E.to(torch.int8), 3)
    with pytest.raises(ValueError, match="scales are only for E of dtype torch.int8"):
        embkern.score_topk(C, E, 3, scales=torch.ones(10))
    with pytest.raises(ValueError, match=r"scales must have shape \[10\]"):
        embkern.score_topk(C, E.to(torch.int8), 3, scales=torch.ones(9))
    with pytest.raises(IndexError, match=r"exclude\[1, 0\] = 10 is out of range"):
        embkern.score_topk(C, E, 3, exclude=torch.tensor([[1], [10]]))
    with pytest.raises(IndexError, match="out of range"):
        embkern.score_topk(C, E, 3, exclude=torch.tensor([[-2], [1]]))
    with pytest.raises(ValueError, match="exclude must have one row per query"):
        embkern.score_topk(C, E, 3, exclude=torch.tensor([[1]]))
    with pytest.raises(TypeError, match="exclude must have dtype torch.int64"):
        embkern.score_topk(C, E, 3, exclude=torch.tensor([[1], [2]], dtype=torch.int32))
    with pytest.raises(ValueError, match="k must be in"):
        embkern.score_topk(C, torch.zeros(4, 0), 1)


# The AVX-512 VNNI path (B >= 5) filters columns with an integer approximation and a proven error
# bound, then rescores candidates with the exact chain: results must stay bitwise the reference's on
# data that stresses the bound (mixed column magnitudes, heavy tails, zero rows and columns, the
# largest depth it takes and the first it refuses) and where it must hand panels to the float path.
def _stress_E(rng, r, n, dtype):
    E, S, Ef, Sf = make_E(rng, r, n, dtype)
    if dtype == "int8":
        S = torch.from_numpy(Sf * np.where(rng.random(n) < 0.2, -1.0, 1.0).astype(np.float32))
        S[5] = 0.0
        return E, S, Ef, S.numpy()
    x = rng.standard_t(2, size=(r, n)).astype(np.float32)
    x *= np.exp(rng.uniform(-8, 8, size=n)).astype(np.float32)  # columns of very different magnitude
    x[:, 7] = 0.0
    if dtype == "float32":
        return torch.from_numpy(x), None, x, None
    bits = cur_ref.f32_to_bf16_bits(x)
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), None, cur_ref.bf16_to_f32(bits), None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,r", [(5, 3), (16, 37), (64, 256), (7, 512), (6, 513)])
def test_score_topk_integer_prefilter_is_exact(isa, dtype, b, r):
    rng = np.random.default_rng(b * 7 + r)
    n = 2600  # several panels whichever r
    E, S, Ef, Sf = _stress_E(rng, r, n, dtype)
    C = rng.standard_normal((b, r)).astype(np.float32)
    C[1] = 0.0                                     # a zero query
    C[2] *= np.exp(rng.uniform(-6, 6, size=r)).astype(np.float32)  # wide dynamic range
    for k in (1, 10, 100):
        v, i = embkern.score_topk(torch.from_numpy(C), E, k, scales=S)
        rv, ri = cur_ref.score_topk(C, Ef, k, scales=Sf)
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_array_equal(v.numpy(), rv)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_score_topk_prefilter_hands_odd_panels_to_the_float_path(isa, dtype):
    # NaN, Inf and magnitudes outside the bound's safe range in late panels; NaN scores are skipped.
    rng = np.random.default_rng(11)
    r, n, b = 24, 3000, 9
    x = rng.standard_normal((r, n)).astype(np.float32)
    x[3, 1500] = np.nan
    x[:, 1800] = 1e-30
    x[:, 2100] = 1e30
    x[5, 2500] = np.inf
    if dtype == "float32":
        E, Ef = torch.from_numpy(x), x
    else:
        bits = cur_ref.f32_to_bf16_bits(np.nan_to_num(x, nan=0.0, posinf=0.0))
        bits[3, 1500], bits[5, 2500] = 0x7FC0, 0x7F80
        E, Ef = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16), cur_ref.bf16_to_f32(bits)
    C = rng.standard_normal((b, r)).astype(np.float32)
    v, i = embkern.score_topk(torch.from_numpy(C), E, 20)
    rv, ri = cur_ref.score_topk(C, Ef, 20)
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_array_equal(v.numpy(), rv)


def test_score_topk_prefilter_int8_extreme_scales_and_exclusions(isa):
    rng = np.random.default_rng(12)
    r, n, b = 40, 4000, 12
    E, S, Ef, Sf = make_E(rng, r, n, "int8")
    Sf = Sf.copy()
    Sf[2000] = 1e-45  # subnormal: outside the bound's range, that panel goes to the float path
    Sf[2600] = 1e38   # beyond the bound's range as well (its scores overflow to inf)
    C = rng.standard_normal((b, r)).astype(np.float32)
    ex = np.full((b, 30), -1, dtype=np.int64)
    for q in range(b):  # exclude each query's best late items
        with np.errstate(over="ignore"):
            late = cur_ref.fma_chain_scores(C[q : q + 1], Ef, Sf)[0]
        late[:1000] = -np.inf
        ex[q, :20] = np.argsort(-late, kind="stable")[:20]
    v, i = embkern.score_topk(torch.from_numpy(C), E, 15, exclude=torch.from_numpy(ex), scales=torch.from_numpy(Sf))
    with np.errstate(over="ignore"):
        rv, ri = cur_ref.score_topk(C, Ef, 15, exclude=ex, scales=Sf)
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_array_equal(v.numpy(), rv)
    assert not any(np.isin(i.numpy()[q], ex[q]).any() for q in range(b))


def test_score_topk_opcheck():
    C, E = torch.randn(3, 8), torch.randn(8, 100)
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E, 5, torch.tensor([[1, -1], [2, 3], [-1, -1]]), None))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E.to(torch.int8), 5, None, torch.rand(100)))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C, E.bfloat16(), 7))
    torch.library.opcheck(torch.ops.embkern.score_topk, (C.clone().requires_grad_(), E.clone().requires_grad_(), 6))


def test_score_topk_torch_compile():
    f = torch.compile(lambda c, e: torch.ops.embkern.score_topk(c, e, 4), fullgraph=True)
    C, E = torch.randn(2, 8), torch.randn(8, 50)
    assert torch.equal(f(C, E)[1], embkern.score_topk(C, E, 4)[1])


# ---- CURIndex ----------------------------------------------------------------------------------------


def low_rank(rng, nq, n, rank, noise=0.0):
    A = rng.standard_normal((nq, rank))
    B = rng.standard_normal((rank, n))
    M = A @ B
    if noise:
        M = M + noise * rng.standard_normal(M.shape)
    return M


def test_build_exact_recovery_for_low_rank():
    rng = np.random.default_rng(0)
    rank, n = 12, 400
    M = low_rank(rng, 60, n, rank)  # 60 queries: rows 0..29 anchors, 30..59 test queries
    anchors = rng.choice(n, size=20, replace=False)
    index = embkern.CURIndex.build(M[:30], anchors)
    test = M[30:]
    c = test[:, anchors]
    approx64 = c @ (index.U.numpy() @ M[:30])
    err = np.abs(approx64 - test).max() / np.abs(test).max()
    assert err < 1e-11, err
    approx32 = embkern.CURIndex.build(M[:30], anchors).approx_scores(c.astype(np.float32))
    assert np.abs(approx32 - test).max() / np.abs(test).max() < 1e-5


def recall_at(approx_topk, true_topk):
    return np.mean([len(set(a) & set(t)) / len(t) for a, t in zip(approx_topk, true_topk)])


def test_regularization_rescues_k_i_equal_k_q():
    # rank-40 + noise, k_i = k_q: the unregularized pseudo-inverse amplifies the noise (double descent).
    rng = np.random.default_rng(1)
    n, kq = 3000, 100
    M = low_rank(rng, kq + 50, n, 40, noise=1.0)
    anchors = rng.choice(n, size=kq, replace=False)
    test = M[kq:]
    true10 = np.argsort(-test, axis=1)[:, :10]
    c = torch.from_numpy(test[:, anchors].astype(np.float32))
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        plain = embkern.CURIndex.build(M[:kq], anchors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = embkern.CURIndex.build(M[:kq], anchors, rcond=0.05)
        ridge = embkern.CURIndex.build(M[:kq], anchors, ridge=100.0)
    r_plain = recall_at(plain.topk(c, 100)[1].numpy(), true10)
    r_reg = recall_at(reg.topk(c, 100)[1].numpy(), true10)
    r_ridge = recall_at(ridge.topk(c, 100)[1].numpy(), true10)
    print(f"top-10 recall@100 at k_i = k_q = {kq}: unregularized {r_plain:.3f}, rcond=0.05 {r_reg:.3f}, ridge=100 {r_ridge:.3f}")
    assert r_reg > 0.8 and r_ridge > 0.8, (r_plain, r_reg, r_ridge)
    assert r_plain < 0.5, (r_plain, r_reg, r_ridge)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_build_storage_dtypes(dtype):
    rng = np.random.default_rng(2)
    M = low_rank(rng, 40, 500, 8, noise=0.01)
    anchors = np.arange(0, 500, 25)
    index = embkern.CURIndex.build(torch.from_numpy(M[:30]), torch.from_numpy(anchors), rcond=1e-3, dtype=dtype)
    assert index.E.dtype == dtype and index.E.shape == (20, 500)
    assert (index.scales is not None) == (dtype == torch.int8)
    c = torch.from_numpy(M[30:, anchors].astype(np.float32))
    exact = torch.from_numpy(c.double().numpy() @ index.U.numpy() @ M[:30]).float()
    approx = index.approx_scores(c)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.int8: 2e-2}[dtype]
    assert (approx - exact).abs().max() <= tol * exact.abs().max()
    v, i = index.topk(c, 10)
    Ef = index.E.float().numpy()
    rv, ri = cur_ref.score_topk(c.numpy(), Ef, 10, scales=None if index.scales is None else index.scales.numpy())
    np.testing.assert_array_equal(i.numpy(), ri)
    v, i = index.topk(c, 10, exclude=torch.from_numpy(ri[:, :3]))
    np.testing.assert_array_equal(i.numpy()[:, :7], ri[:, 3:])


def test_build_bad_inputs():
    M = np.random.default_rng(0).standard_normal((10, 50))
    with pytest.raises(ValueError, match="duplicate"):
        embkern.CURIndex.build(M, [1, 2, 2])
    with pytest.raises(IndexError, match="id 50, out of range"):
        embkern.CURIndex.build(M, [1, 50])
    with pytest.raises(IndexError, match="id -1"):
        embkern.CURIndex.build(M, [-1, 3])
    bad = M.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="anchor_scores must be finite"):
        embkern.CURIndex.build(bad, [1, 2])
    with pytest.raises(ValueError, match="rcond must be a finite number >= 0, got -0.1"):
        embkern.CURIndex.build(M, [1, 2], rcond=-0.1)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        embkern.CURIndex.build(M, [1, 2], ridge=-1.0)
    with pytest.raises(TypeError, match="dtype must be"):
        embkern.CURIndex.build(M, [1, 2], dtype=torch.float16)
    with pytest.raises(ValueError, match="2-D"):
        embkern.CURIndex.build(M[0], [1, 2])
    index = embkern.CURIndex.build(M, [1, 2])
    with pytest.raises(ValueError, match=r"c must have shape \[B, 2\]"):
        index.topk(torch.randn(3, 4), 2)


# ---- ANNCUR / adaCUR -----------------------------------------------------------------------------------


class CrossEncoder:
    """A fake CE over a fixed score matrix; records every (query, item) it scores."""

    def __init__(self, scores: np.ndarray):
        self.scores = torch.from_numpy(scores.astype(np.float32))
        self.seen: list[tuple[int, int]] = []
        self.calls = 0

    def __call__(self, queries, ids):
        self.calls += 1
        q = torch.as_tensor(queries).unsqueeze(1).expand_as(ids)
        self.seen += list(zip(q.flatten().tolist(), ids.flatten().tolist()))
        return self.scores[q, ids]


def test_anncur_exact_on_low_rank_and_keeps_anchor_scores():
    rng = np.random.default_rng(4)
    n = 800
    M = low_rank(rng, 70, n, 10)
    anchors = rng.choice(n, size=16, replace=False)
    test = M[40:].copy()
    test[0, anchors[3]] = test[0].max() + 5.0  # query 0's best item is an anchor
    index = embkern.CURIndex.build(M[:40], anchors)
    ce = CrossEncoder(test)
    res = embkern.anncur_search(index, ce, np.arange(30), k=10, k_rerank=50)
    assert res.num_calls == ce.calls == 2 and res.num_scored == 66
    assert res.scores.shape == (30, 10) and res.indices.dtype == torch.int64
    assert res.indices[0, 0].item() == anchors[3]
    true = np.argsort(-test, axis=1, kind="stable")[:, :10]
    assert recall_at(res.indices.numpy(), true) > 0.95
    np.testing.assert_array_equal(res.scores.numpy(), np.take_along_axis(test.astype(np.float32), res.indices.numpy(), 1))
    assert len(ce.seen) == len(set(ce.seen)) == 30 * 66
    only = embkern.anncur_search(index, CrossEncoder(test), np.arange(30), k=5, k_rerank=0)
    assert only.num_calls == 1 and set(only.indices[1].tolist()) <= set(anchors.tolist())


def test_adacur_budget_uniqueness_exactness_determinism():
    rng = np.random.default_rng(6)
    n, kq = 1500, 60
    M = low_rank(rng, kq + 12, n, 15, noise=0.05)
    test = M[kq:]
    ce = CrossEncoder(test)
    queries = np.arange(12)
    res = embkern.adacur_search(M[:kq], ce, queries, k=10, budget=103, rounds=5, seed=3)
    assert res.num_calls == ce.calls == 5 and res.num_scored == 103
    per_query = {}
    for q, i in ce.seen:
        per_query.setdefault(q, []).append(i)
    for q in range(12):
        assert len(per_query[q]) == 103 and len(set(per_query[q])) == 103  # exactly the budget, no repeats
        scored = np.array(sorted(per_query[q]))
        s = test[q, scored].astype(np.float32)
        best = scored[np.lexsort((scored, -s))[:10]]
        np.testing.assert_array_equal(res.indices[q].numpy(), best)  # exact top-k of what it scored
    again = embkern.adacur_search(M[:kq], CrossEncoder(test), queries, k=10, budget=103, rounds=5, seed=3)
    assert torch.equal(again.indices, res.indices) and torch.equal(again.scores, res.scores)
    true = np.argsort(-test, axis=1)[:, :10]
    rand = embkern.adacur_search(M[:kq], CrossEncoder(test), queries, k=10, budget=103, rounds=1, seed=3)
    r_ada, r_rand = recall_at(res.indices.numpy(), true), recall_at(rand.indices.numpy(), true)
    assert r_ada > r_rand and r_ada > 0.8, (r_ada, r_rand)


def test_search_bad_inputs():
    rng = np.random.default_rng(8)
    M = low_rank(rng, 30, 200, 5)
    ce = CrossEncoder(M[20:])
    q = np.arange(10)
    with pytest.raises(ValueError, match="budget must be >= rounds"):
        embkern.adacur_search(M[:20], ce, q, k=2, budget=3, rounds=4)
    with pytest.raises(ValueError, match="k must be <= budget"):
        embkern.adacur_search(M[:20], ce, q, k=20, budget=10, rounds=2)
    with pytest.raises(ValueError, match="budget must be <= N"):
        embkern.adacur_search(M[:20], ce, q, k=2, budget=201, rounds=2)
    with pytest.raises(ValueError, match="rcond must be a finite number >= 0"):
        embkern.adacur_search(M[:20], ce, q, k=2, budget=10, rounds=2, rcond=-1.0)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(10, 4\), expected \(10, 5\)"):
        embkern.adacur_search(M[:20], lambda qs, ids: torch.zeros(ids.shape[0], ids.shape[1] - 1), q, k=2, budget=10, rounds=2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        embkern.adacur_search(M[:20], lambda qs, ids: torch.full(ids.shape, float("nan")), q, k=2, budget=10, rounds=2)
    index = embkern.CURIndex.build(M[:20], [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"k must be <= k_i \+ k_rerank = 8"):
        embkern.anncur_search(index, ce, q, k=9, k_rerank=3)
    with pytest.raises(ValueError, match="k_rerank must be <= N - k_i = 195"):
        embkern.anncur_search(index, ce, q, k=2, k_rerank=196)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        embkern.anncur_search(index, None, q, k=2, k_rerank=3)
    with pytest.raises(ValueError, match="score_fn returned shape"):
        embkern.anncur_search(index, lambda qs, ids: np.zeros((3, 3), np.float32), q, k=2, k_rerank=3)


def assert_within_fp32_sum_bound(got, exact, magnitude, terms):
    """|got - exact| <= (terms + 2) u sum|products|: what any fp32 summation order (plus the rounding
    of a scaled operand) guarantees, so two correct implementations that add in different orders both
    pass, however much the sum cancels."""
    err = (got.double() - exact).abs()
    bound = (terms + 2) * 2.0**-24 * magnitude
    assert bool((err <= bound).all()), f"error {err.max().item():.3g} over bound {bound[err > bound].min().item():.3g}"


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_score_topk_autograd_matches_gathered_matmul(dtype):
    rng = np.random.default_rng(21)
    C = torch.from_numpy(rng.standard_normal((4, 12)).astype(np.float32)).requires_grad_()
    if dtype == "int8":
        E = torch.from_numpy(rng.integers(-127, 128, size=(12, 300), dtype=np.int8))
        S = torch.from_numpy(rng.uniform(0.0, 1.0, 300).astype(np.float32))
        Ef = E.float() * S
    else:
        E = torch.from_numpy(rng.standard_normal((12, 300)).astype(np.float32)).requires_grad_()
        S, Ef = None, E
    v, i = embkern.score_topk(C, E, 7, scales=S)
    g = torch.from_numpy(rng.standard_normal((4, 7)).astype(np.float32))
    got = torch.autograd.grad(v, [C] + ([E] if dtype == "float32" else []), g)
    want_v = (C @ Ef).gather(1, i)
    want = torch.autograd.grad(want_v, [C] + ([E] if dtype == "float32" else []), g)
    # float64 references of the same sums: the scores, dC = sum_k g[b, k] E[:, i[b, k]] and
    # dE[:, j] = sum over (b, k) with i[b, k] = j of g[b, k] C[b, :]. Both our kernels and torch's
    # composition must be within the fp32 bound of them (~1e-5 absolute tolerances failed for torch's
    # own composition on some draws of the scales: the gradient sums cancel).
    Cd, Ed, gd = C.detach().double(), Ef.detach().double(), g.double()
    Eg = Ed.t()[i]  # [4, 7, 12]: the gathered columns
    exact_v = (Cd.unsqueeze(1) * Eg).sum(2)
    mag_v = (Cd.abs().unsqueeze(1) * Eg.abs()).sum(2)
    exact_dc, mag_dc = (gd.unsqueeze(2) * Eg).sum(1), (gd.abs().unsqueeze(2) * Eg.abs()).sum(1)
    for val in (v, want_v.detach()):
        assert_within_fp32_sum_bound(val, exact_v, mag_v, 12)
    for dc in (got[0], want[0]):
        assert_within_fp32_sum_bound(dc, exact_dc, mag_dc, 7)
    if dtype == "float32":
        exact_de = torch.zeros(12, 300, dtype=torch.float64).index_add_(1, i.flatten(), (gd.unsqueeze(2) * Cd.unsqueeze(1)).reshape(28, 12).t())
        mag_de = torch.zeros(12, 300, dtype=torch.float64).index_add_(1, i.flatten(), (gd.abs().unsqueeze(2) * Cd.abs().unsqueeze(1)).reshape(28, 12).t())
        for de in (got[1], want[1]):
            assert_within_fp32_sum_bound(de, exact_de, mag_de, 4)
    assert not i.requires_grad
