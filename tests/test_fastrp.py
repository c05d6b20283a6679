"""fastrp family: csr_spmm and fastrp against numpy/scipy references on every ISA path, bitwise
determinism across thread counts and ISAs, graph invariances, the SBM quality check, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import embkern
from reference import fastrp_ref as ref


def random_csr(rng, rows, cols, density, weighted=True, empty_rows=True):
    a = sp.random(rows, cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    a.data = rng.uniform(0.1, 2.0, a.nnz) if weighted else np.ones(a.nnz)
    if empty_rows and rows > 3:
        a = a.tolil()
        a[1, :] = 0
        a[rows - 1, :] = 0
        a = a.tocsr()
        a.eliminate_zeros()
    return a.astype(np.float32)


def undirected_graph(rng, n, m, weighted=False):
    """n nodes, about m random undirected edges (both directions stored), no self loops."""
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = u != v
    u, v = u[keep], v[keep]
    w = rng.uniform(0.5, 3.0, len(u)) if weighted else np.ones(len(u))
    a = sp.coo_matrix((np.r_[w, w], (np.r_[u, v], np.r_[v, u])), shape=(n, n)).tocsr()
    a.sum_duplicates()
    return a.astype(np.float32)


# ---- the projection R ------------------------------------------------------------------------------


def test_projection_pins_the_documented_hash():
    keys = np.array([0, 1, 2, -5, 2**62, 123456789], dtype=np.int64)
    for s in (1.0, 3.0, 7.5, 1000.0):
        for seed in (0, 42, -1, 2**64 - 1, 2**63):
            for feature_rows in (False, True):
                got = embkern.fastrp_projection(keys, 45, s, seed, feature_rows=feature_rows)
                np.testing.assert_array_equal(got, ref.projection(keys, 45, s, seed, feature_rows))
    # seed 2**64 - 1 and -1 are the same 64 bits
    np.testing.assert_array_equal(embkern.fastrp_projection(keys, 8, 3.0, -1), embkern.fastrp_projection(keys, 8, 3.0, 2**64 - 1))


def test_projection_known_answer():
    # first entries of key 0, seed 0, s = 3 (from the pure-Python mix64), pinned so the hash never drifts
    h = ref.mix64_int((ref.mix64_int(ref.mix64_int(0) ^ 0) + 0 * ref.GOLDEN) & ref.M64)
    t = int(np.ldexp(0.5 / 3.0, 64))
    want = math.sqrt(3) if h < t else (-math.sqrt(3) if (h ^ ref.M64) < t else 0.0)
    assert embkern.fastrp_projection(np.array([0]), 1, 3.0, 0)[0, 0] == np.float32(want)


@pytest.mark.parametrize("s", [1.0, 3.0, 10.0])
def test_projection_distribution(s):
    r = embkern.fastrp_projection(np.arange(2000), 100, s, 1)
    frac_pos, frac_neg = (r > 0).mean(), (r < 0).mean()
    p = 1 / (2 * s)
    sd = math.sqrt(p * (1 - p) / r.size)
    assert abs(frac_pos - p) < 6 * sd and abs(frac_neg - p) < 6 * sd
    assert set(np.unique(np.abs(r))) <= {0.0, np.float32(math.sqrt(s))}
    assert abs(r.var() - 1.0) < 0.05  # E[R^2] = s * (1/s) = 1


def test_projection_every_isa_identical(isa):
    keys = np.arange(-50, 50)
    np.testing.assert_array_equal(embkern.fastrp_projection(keys, 77, 3.0, 9), ref.projection(keys, 77, 3.0, 9))


# ---- csr_spmm --------------------------------------------------------------------------------------

DIMS = [1, 7, 8, 16, 17, 33, 64, 128, 129, 200]


@pytest.mark.parametrize("d", DIMS)
def test_csr_spmm_matches_scipy(isa, d):
    rng = np.random.default_rng(d)
    a = random_csr(rng, 61, 45, 0.15)
    x = rng.standard_normal((45, d)).astype(np.float32)
    rs = rng.uniform(0.5, 2.0, 61).astype(np.float32)
    got = embkern.csr_spmm(a.indptr, a.indices, a.data, x)
    np.testing.assert_allclose(got, ref.csr_spmm(a.indptr, a.indices, a.data, x), rtol=1e-5, atol=1e-5)
    got = embkern.csr_spmm(a.indptr, a.indices, a.data, x, rs, normalize=True)
    want = ref.csr_spmm(a.indptr, a.indices, a.data, x, rs, normalize=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[1] == 0) and np.all(got[60] == 0)  # empty rows normalize to zero, no NaN
    got = embkern.csr_spmm(a.indptr, a.indices, None, x)
    np.testing.assert_allclose(got, ref.csr_spmm(a.indptr, a.indices, None, x), rtol=1e-5, atol=1e-5)


# d covers every AVX-512 bf16 shape: 32-column loads with tails of 1..31 columns, 1..4 loads per
# 128-column block, a second block
@pytest.mark.parametrize("d", [1, 5, 16, 31, 33, 40, 48, 96, 128, 150, 200])
def test_csr_spmm_bf16_input_is_widened_exactly(isa, d):
    rng = np.random.default_rng(d)
    a = random_csr(rng, 50, 40, 0.2)
    xb = torch.from_numpy(rng.standard_normal((40, d)).astype(np.float32)).to(torch.bfloat16)
    got = embkern.csr_spmm(torch.from_numpy(a.indptr), torch.from_numpy(a.indices), torch.from_numpy(a.data), xb)
    # the bf16 values are exact in fp32: same answer as the fp32 kernel on the widened matrix
    want = embkern.csr_spmm(torch.from_numpy(a.indptr), torch.from_numpy(a.indices), torch.from_numpy(a.data), xb.float())
    assert torch.equal(got, want)
    np.testing.assert_allclose(got.numpy(), ref.csr_spmm(a.indptr, a.indices, a.data, xb.float().numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [1, 16, 17, 64, 141])  # row norms: one partial vector, a tail, whole lines
@pytest.mark.parametrize("bf16_x", [False, True])
def test_csr_spmm_all_isas_bitwise_identical(d, bf16_x):
    rng = np.random.default_rng(3)
    a = random_csr(rng, 300, 200, 0.05)
    x = torch.from_numpy(rng.standard_normal((200, d)).astype(np.float32))
    x = x.bfloat16() if bf16_x else x
    rs = rng.uniform(0.5, 2.0, 300).astype(np.float32)
    best = embkern.build_info()["best_isa"]
    results = []
    for level in ("scalar", "avx2", "avx512"):
        try:
            embkern.set_isa(level)
        except ValueError:
            continue
        results.append(embkern.csr_spmm(a.indptr, a.indices, a.data, x, rs, normalize=True))
        out = torch.ones(300, d)
        embkern.csr_spmm(a.indptr, a.indices, a.data, x, rs, normalize=True, out=out, alpha=0.5)
        results.append(out.numpy())
    embkern.set_isa(best)
    for r in results[2::2]:
        np.testing.assert_array_equal(r, results[0])
    for r in results[3::2]:
        np.testing.assert_array_equal(r, results[1])


def test_csr_spmm_accumulate(isa):
    rng = np.random.default_rng(4)
    a = random_csr(rng, 30, 20, 0.3)
    x = rng.standard_normal((20, 19)).astype(np.float32)
    out = torch.from_numpy(rng.standard_normal((30, 19)).astype(np.float32))
    base = out.numpy().astype(np.float64).copy()
    ret = embkern.csr_spmm(a.indptr, a.indices, a.data, torch.from_numpy(x), out=out, alpha=-2.0, normalize=True)
    assert ret is out
    want = base - 2.0 * ref.csr_spmm(a.indptr, a.indices, a.data, x, normalize=True)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_csr_spmm_edge_shapes(isa):
    x = torch.randn(4, 3)
    empty_ip = torch.zeros(1, dtype=torch.int64)
    assert embkern.csr_spmm(empty_ip, torch.zeros(0, dtype=torch.int64), None, x).shape == (0, 3)
    ip = torch.zeros(6, dtype=torch.int64)  # 5 rows, no entries
    assert torch.equal(embkern.csr_spmm(ip, torch.zeros(0, dtype=torch.int64), None, x), torch.zeros(5, 3))
    one = embkern.csr_spmm(torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3.0]), x)
    assert torch.equal(one, 3.0 * x[2:3])
    # duplicates within a row add up
    dup = embkern.csr_spmm(torch.tensor([0, 3]), torch.tensor([1, 1, 1]), None, x)
    torch.testing.assert_close(dup, 3 * x[1:2])
    assert embkern.csr_spmm(torch.tensor([0, 1]), torch.tensor([0]), None, torch.zeros(4, 0)).shape == (1, 0)


def test_csr_spmm_bitwise_identical_across_threads(threads):
    rng = np.random.default_rng(5)
    a = random_csr(rng, 3000, 3000, 0.01)
    x = rng.standard_normal((3000, 72)).astype(np.float32)
    outs = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        outs.append(embkern.csr_spmm(a.indptr, a.indices, a.data, x, normalize=True))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_csr_spmm_autograd():
    rng = np.random.default_rng(6)
    a = random_csr(rng, 25, 18, 0.3)
    ip, ix, w = torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(), torch.from_numpy(a.data)
    rs = torch.rand(25) + 0.5
    x = torch.randn(18, 11, requires_grad=True)
    y = torch.ops.embkern.csr_spmm(ip, ix, w, x, rs, False)
    g = torch.randn(25, 11)
    (y * g).sum().backward()
    dense = torch.from_numpy(a.toarray())
    torch.testing.assert_close(x.grad, dense.T @ (rs[:, None] * g), rtol=1e-5, atol=1e-5)


def test_csr_spmm_autograd_normalize():
    """Backward through the L2-normalization epilogue against a float64 torch composition whose own
    gradient is checked by gradcheck; rows 1 and 24 are empty (their output is zero)."""
    rng = np.random.default_rng(16)
    a = random_csr(rng, 25, 18, 0.3)
    ip, ix, w = torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(), torch.from_numpy(a.data)
    rs = torch.rand(25) + 0.5
    dense = torch.from_numpy(a.toarray()).double()

    def composition(x64):
        v = rs.double()[:, None] * (dense @ x64)
        return v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)

    g = torch.randn(25, 11)
    for xdtype in (torch.float32, torch.bfloat16):
        x = torch.randn(18, 11).to(xdtype).requires_grad_()
        y = embkern.csr_spmm(ip, ix, w, x, rs, normalize=True)
        (y * g).sum().backward()
        x64 = x.detach().double().requires_grad_()
        assert torch.autograd.gradcheck(composition, (x64,))
        (composition(x64) * g.double()).sum().backward()
        assert x.grad.dtype == xdtype
        tol = 1e-5 if xdtype == torch.float32 else 1e-2  # the bf16 gradient is rounded to bf16
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol)
    assert torch.equal(y[1], torch.zeros(11)) and torch.equal(y[24], torch.zeros(11))


# ---- fastrp ----------------------------------------------------------------------------------------


def reference_embedding(a, dim, weights, n=None, keys=None, s=3.0, seed=0, features=None, feature_dim=0, **kw):
    n = a.shape[0] if n is None else n
    keys = np.arange(n) if keys is None else keys
    r = ref.projection(keys, dim - feature_dim, s, seed)
    p = ref.projection(np.arange(features.shape[1]), feature_dim, s, seed, True) if features is not None else None
    return ref.fastrp(a.indptr, a.indices, a.data, n, dim, weights, R=r, features=features, P=p, **kw)


@pytest.mark.parametrize("normalize", ["merge", "propagate", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fastrp_matches_reference(isa, normalize, weighted):
    rng = np.random.default_rng(7)
    a = undirected_graph(rng, 150, 400, weighted)
    a = a.tolil()
    a[3, :] = 0  # an isolated node
    a[:, 3] = 0
    a = a.tocsr()
    a.eliminate_zeros()
    kw = dict(self_weight=0.5, beta=-0.3, normalize=normalize)
    got = embkern.fastrp(a, 40, [0.0, 1.0, 2.5], s=3.0, seed=11, **kw)
    want = reference_embedding(a, 40, [0.0, 1.0, 2.5], seed=11, **kw)
    assert got.dtype == np.float32 and got.shape == (150, 40)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # the isolated node keeps only its self term
    want3 = 0.5 * reference_embedding(a, 40, [], seed=11, normalize=normalize, self_weight=1.0, beta=-0.3)[3]
    np.testing.assert_allclose(got[3], want3, rtol=1e-5, atol=1e-6)


def test_fastrp_directed_graph_with_sinks_and_zero_weights(isa):
    rng = np.random.default_rng(8)
    a = random_csr(rng, 90, 90, 0.05)  # directed; rows 1 and 89 have no out-edges
    a.data[:5] = 0.0  # zero weights are allowed
    for normalize in ("merge", "propagate", "none"):
        got = embkern.fastrp(a, 24, [1.0, 0.5], beta=0.7, normalize=normalize, seed=3)
        want = reference_embedding(a, 24, [1.0, 0.5], beta=0.7, normalize=normalize, seed=3)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dim", [1, 17, 128, 130])
def test_fastrp_dims_and_sqrt_n(isa, dim):
    rng = np.random.default_rng(dim)
    a = undirected_graph(rng, 64, 200)
    got = embkern.fastrp(a, dim, [1.0, 1.0, 1.0], s="sqrt_n", seed=5)
    want = reference_embedding(a, dim, [1.0, 1.0, 1.0], s=8.0, seed=5)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_fastrp_features(isa):
    rng = np.random.default_rng(9)
    a = undirected_graph(rng, 80, 250)
    feats = rng.standard_normal((80, 6)).astype(np.float32)
    feats[::3, 2] = 0.0
    for fd in (5, 32):
        got = embkern.fastrp(a, 32, [0.0, 1.0], self_weight=1.0, features=feats, feature_dim=fd, seed=2)
        want = reference_embedding(a, 32, [0.0, 1.0], self_weight=1.0, features=feats, feature_dim=fd, seed=2)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_fastrp_bfloat16_storage(isa):
    rng = np.random.default_rng(10)
    a = undirected_graph(rng, 200, 800)
    for normalize in ("merge", "propagate"):
        got = embkern.fastrp(a, 64, [0.0, 1.0, 1.0], normalize=normalize, dtype=torch.bfloat16)
        f32 = embkern.fastrp(a, 64, [0.0, 1.0, 1.0], normalize=normalize)
        assert got.dtype == np.float32
        # iterates rounded to bf16 (8 bits): errors of a few 2^-9 relative per term
        np.testing.assert_allclose(got, f32, rtol=0, atol=2e-2)
        assert np.abs(got - f32).max() > 0  # it really stored bf16


# record sizes change at 112 / 240 columns (codes + a magnitude per row, beta != 0) and at 128 / 256
# (codes only: beta = 0 gives every row the same magnitude)
@pytest.mark.parametrize("dim", [1, 17, 112, 113, 128, 129, 130, 240, 241, 256, 257])
def test_fastrp_coded_first_iteration_is_bitwise_the_materialized_one(isa, dim):
    """The CPU pipeline keeps L R as sign codes; the first iterate must equal csr_spmm on the stored
    L R (fp32 or rounded to bf16) bit for bit, including the self term and beta overflow (L = inf)."""
    rng = np.random.default_rng(30 + dim)
    a = undirected_graph(rng, 120, 400)
    a = a.tolil()
    a[5, :] = 0  # an isolated node (degree 0: L = 1, inv_deg = 0)
    a[:, 5] = 0
    a = a.tocsr()
    a.eliminate_zeros()
    ip, ix = torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64))
    deg = torch.from_numpy(np.diff(a.indptr)).double()
    inv_deg = torch.where(deg > 0, 1.0 / deg, torch.zeros_like(deg)).float()
    r = torch.from_numpy(embkern.fastrp_projection(np.arange(120), dim, 3.0, 4))
    for beta in (0.0, 1.0, 2.0, 200.0):
        lscale = torch.where(deg > 0, deg ** beta, torch.ones_like(deg)).float()
        for dtype in (torch.float32, torch.bfloat16):
            x = (r * lscale[:, None]).to(dtype)
            for normalize in ("merge", "none"):
                got = embkern.fastrp((ip, ix, None), dim, [1.0], beta=beta, seed=4, normalize=normalize, dtype=dtype)
                want = embkern.csr_spmm(ip, ix, None, x, inv_deg, normalize=normalize == "merge")
                np.testing.assert_array_equal(got.numpy(), want.numpy())
            # with a self term the first term is added to it (the self term's own kernel is unchanged)
            got = embkern.fastrp((ip, ix, None), dim, [1.0], self_weight=0.5, beta=beta, seed=4, normalize="none",
                                 dtype=dtype)
            want = 0.5 * (r * lscale[:, None])  # the self term is never rounded to the storage dtype
            want = torch.addcmul(want, torch.ones(()), embkern.csr_spmm(ip, ix, None, x, inv_deg))
            if beta < 100:
                np.testing.assert_array_equal(got.numpy(), want.numpy())
            else:
                assert torch.isnan(got).any() and torch.equal(torch.isnan(got), torch.isnan(want))


@pytest.mark.parametrize("normalize", ["merge", "propagate", "none"])
@pytest.mark.parametrize("weights", [[0.0, 0.5, 2.0], [0.0, 0.0, 1.0, 6.67], [0.7, 1.5], [0.0, 1.0, 0.5, 2.0]])
@pytest.mark.parametrize("dim", [24, 64])  # 64: whole 64-byte rows, streamed stores
def test_fastrp_equals_its_csr_spmm_composition(isa, normalize, weights, dim):
    """The pipeline's buffer schedules (a pending term summed into a dead buffer by the last
    iteration, coded L R) give exactly the bits of the plain composition of csr_spmm calls."""
    rng = np.random.default_rng(40)
    a = undirected_graph(rng, 150, 500, weighted=True)
    ip, ix = torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64))
    w = torch.from_numpy(a.data)
    deg = torch.from_numpy(np.add.reduceat(a.data.astype(np.float64), a.indptr[:-1]) * (np.diff(a.indptr) > 0))
    inv_deg = torch.where(deg > 0, 1.0 / deg, torch.zeros_like(deg)).float()
    x = torch.from_numpy(embkern.fastrp_projection(np.arange(150), dim, 3.0, 6))
    out = None
    for i, wt in enumerate(weights):
        term_norm = normalize != "none"
        if wt != 0 and out is None:
            out = torch.mul(embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=term_norm), wt)
        elif wt != 0:
            embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=term_norm, out=out, alpha=wt)
        x = embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=normalize == "propagate")
    got = embkern.fastrp((ip, ix, w), dim, weights, seed=6, normalize=normalize)
    np.testing.assert_array_equal(got.numpy(), out.numpy())


@pytest.mark.parametrize("normalize", ["merge", "propagate", "none"])
@pytest.mark.parametrize("weights", [[0.0, 0.5, 2.0], [0.0, 0.0, 1.0, 6.67], [0.7, 1.5], [0.0, 1.0, 0.5, 2.0]])
@pytest.mark.parametrize("dim", [24, 64])  # 64: whole 64-byte rows, streamed stores
def test_fastrp_bfloat16_equals_its_csr_spmm_composition(isa, normalize, weights, dim):
    """bf16 storage: every iterate is rounded to bf16 and the next one gathers it. A term is taken from
    the fp32 iterate, except the pending one of the two-buffer schedule (no self term, first weighted
    iteration second to last), which the last iteration reads back from its stored bf16 iterate.
    Bit for bit against that composition of csr_spmm calls (an identity CSR normalizes a stored
    iterate with the kernel's own row norm)."""
    rng = np.random.default_rng(41)
    n = 150
    a = undirected_graph(rng, n, 500, weighted=True)
    ip, ix = torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64))
    w = torch.from_numpy(a.data)
    deg = torch.from_numpy(np.add.reduceat(a.data.astype(np.float64), a.indptr[:-1]) * (np.diff(a.indptr) > 0))
    inv_deg = torch.where(deg > 0, 1.0 / deg, torch.zeros_like(deg)).float()
    eye = torch.arange(n + 1), torch.arange(n)
    x = torch.from_numpy(embkern.fastrp_projection(np.arange(n), dim, 3.0, 6)).bfloat16()
    nz = [i for i, wt in enumerate(weights) if wt != 0]
    pending = nz[0] == len(weights) - 2 and nz[0] >= 1  # the CPU pipeline's two-buffer schedule
    term_norm = normalize != "none"
    out = None
    for i, wt in enumerate(weights):
        v = embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=normalize == "propagate")
        x_next = v.bfloat16()
        if wt != 0 and pending and i == nz[0]:
            out = torch.mul(embkern.csr_spmm(*eye, None, x_next, normalize=normalize == "merge"), wt)
        elif wt != 0 and out is None:
            out = torch.mul(embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=term_norm), wt)
        elif wt != 0:
            embkern.csr_spmm(ip, ix, w, x, inv_deg, normalize=term_norm, out=out, alpha=wt)
        x = x_next
    got = embkern.fastrp((ip, ix, w), dim, weights, seed=6, normalize=normalize, dtype=torch.bfloat16)
    np.testing.assert_array_equal(got.numpy(), out.numpy())


def test_fastrp_unit_weights_equal_no_weights(isa):
    """A weight array of ones (what a scipy matrix of an unweighted graph carries) is dropped by the
    CPU pipeline; the result must be the bits of weights=None, and any other weight must not be."""
    rng = np.random.default_rng(15)
    a = undirected_graph(rng, 300, 1200)
    ip, ix = torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64))
    ones = torch.ones(ix.numel())
    for dtype in (torch.float32, torch.bfloat16):
        want = embkern.fastrp((ip, ix, None), 32, [0.0, 1.0, 1.0], beta=-0.5, dtype=dtype)
        np.testing.assert_array_equal(embkern.fastrp((ip, ix, ones), 32, [0.0, 1.0, 1.0], beta=-0.5, dtype=dtype), want)
        heavier = ones.clone()
        heavier[7] = 2.0
        assert not np.array_equal(embkern.fastrp((ip, ix, heavier), 32, [0.0, 1.0, 1.0], beta=-0.5, dtype=dtype), want)


def test_fastrp_degrees_of_a_graph_weighted_in_one_block_only(isa):
    """The degree pass works on blocks of 4096 rows and takes entry counts where a block's weights are
    all 1: a graph with unit weights except in the second block must still match the reference."""
    rng = np.random.default_rng(16)
    n = 10_000
    a = undirected_graph(rng, n, 30_000)
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    a.data = np.where((rows >= 4096) & (rows < 8192) & (a.indices % 3 == 0), 2.5, 1.0).astype(np.float32)
    kw = dict(beta=-0.5, normalize="merge")
    got = embkern.fastrp(a, 16, [0.0, 1.0, 1.0], seed=3, **kw)
    want = reference_embedding(a, 16, [0.0, 1.0, 1.0], seed=3, **kw)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    unit = embkern.fastrp((a.indptr, a.indices, None), 16, [0.0, 1.0, 1.0], seed=3, **kw)
    assert not np.allclose(got[4096:8192], unit[4096:8192], rtol=1e-3, atol=1e-3)  # the weights mattered


@pytest.mark.parametrize("normalize", ["merge", "propagate", "none"])
@pytest.mark.parametrize("dim", [1, 17, 33, 64, 70, 128])
def test_fastrp_all_isas_bitwise_identical(normalize, dim):
    """Every stage and epilogue branch (row norms with tails, bf16 and fp32 iterates stored plainly
    or streamed as whole lines, the pending term read back in fp32 or bf16) on every ISA."""
    rng = np.random.default_rng(11)
    a = undirected_graph(rng, 300, 1500, weighted=True)
    best = embkern.build_info()["best_isa"]
    outs = []
    for level in ("scalar", "avx2", "avx512"):
        try:
            embkern.set_isa(level)
        except ValueError:
            continue
        for dtype in (torch.float32, torch.bfloat16):
            outs.append(embkern.fastrp(a, dim, [0.2, 1.0, 1.0], self_weight=0.3, beta=-0.5, normalize=normalize, dtype=dtype))
            # P5's weights: coded L R and the two-buffer schedule (its last iteration streams whole lines at dim % 16 == 0)
            outs.append(embkern.fastrp(a, dim, [0.0, 1.0, 1.0], beta=-0.5, normalize=normalize, dtype=dtype))
    embkern.set_isa(best)
    assert len(outs) >= 8
    for i in range(4, len(outs)):
        np.testing.assert_array_equal(outs[i], outs[i % 4])


def test_fastrp_bitwise_identical_across_threads(threads):
    rng = np.random.default_rng(12)
    a = undirected_graph(rng, 4000, 20000)
    outs = []
    for t in (1, 2, 4):
        torch.set_num_threads(t)
        for normalize in ("merge", "propagate"):
            for dtype in (torch.bfloat16, torch.float32):  # coded L R and the two-buffer schedule
                for dim in (48, 64):  # 64: bf16 rows of whole 64-byte lines take the streamed stores too
                    outs.append(embkern.fastrp(a, dim, [0.0, 1.0, 1.0], normalize=normalize, dtype=dtype))
    for i in range(8, len(outs)):
        np.testing.assert_array_equal(outs[i], outs[i % 8])


def test_fastrp_permuting_nodes_and_keys_permutes_rows():
    rng = np.random.default_rng(13)
    a = undirected_graph(rng, 120, 500, weighted=True)
    keys = rng.integers(-(2**62), 2**62, 120, dtype=np.int64)  # arbitrary stable ids
    perm = rng.permutation(120)
    pm = sp.csr_matrix((np.ones(120), (np.arange(120), perm)), shape=(120, 120))
    ap = (pm @ a @ pm.T).tocsr().astype(np.float32)  # node perm[i] becomes node i
    e = embkern.fastrp(a, 32, [0.0, 1.0, 1.0], node_keys=keys, beta=-0.5, self_weight=0.2)
    ep = embkern.fastrp(ap, 32, [0.0, 1.0, 1.0], node_keys=keys[perm], beta=-0.5, self_weight=0.2)
    np.testing.assert_allclose(ep, e[perm], rtol=1e-5, atol=1e-6)
    # without keys the rows are seeded by position, so the embedding changes
    assert not np.allclose(embkern.fastrp(ap, 32, [0.0, 1.0, 1.0], beta=-0.5, self_weight=0.2), e[perm], atol=1e-3)


def test_fastrp_input_forms_agree():
    rng = np.random.default_rng(14)
    a = undirected_graph(rng, 50, 150, weighted=True)
    want = embkern.fastrp(a, 16, [1.0, 1.0])
    assert isinstance(want, np.ndarray)
    t = torch.sparse_csr_tensor(torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(),
                                torch.from_numpy(a.data), size=a.shape)
    got_t = embkern.fastrp(t, 16, [1.0, 1.0])
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), want)
    np.testing.assert_array_equal(embkern.fastrp((a.indptr, a.indices, a.data), 16, [1.0, 1.0]), want)
    np.testing.assert_array_equal(embkern.fastrp(a.tocoo(), 16, [1.0, 1.0]), want)
    np.testing.assert_array_equal(embkern.fastrp(t.to_sparse_coo(), 16, [1.0, 1.0]).numpy(), want)
    unweighted = embkern.fastrp((a.indptr, a.indices, None), 16, [1.0, 1.0])
    a1 = a.copy()
    a1.data[:] = 1
    np.testing.assert_array_equal(unweighted, embkern.fastrp(a1, 16, [1.0, 1.0]))


def test_int32_and_int64_column_ids_give_the_same_bits(isa):
    """int32 column ids (scipy's) are read in place by every kernel: the same bits as int64."""
    rng = np.random.default_rng(21)
    a = random_csr(rng, 60, 45, 0.15)
    ip = torch.from_numpy(a.indptr).long()
    ix64, ix32 = torch.from_numpy(a.indices).long(), torch.from_numpy(a.indices).int()
    w, x, rs = torch.from_numpy(a.data), torch.randn(45, 37), torch.rand(60)
    for xx in (x, x.bfloat16()):
        for args in ((w, xx, rs, True), (None, xx, None, False)):
            want = embkern.csr_spmm(ip, ix64, *args[:3], normalize=args[3])
            assert torch.equal(embkern.csr_spmm(ip, ix32, *args[:3], normalize=args[3]), want)
    strided = torch.stack([ix32, ix32], 1)[:, 0]  # a non-contiguous int32 view
    assert not strided.is_contiguous()
    assert torch.equal(torch.ops.embkern.csr_spmm(ip, strided, w, x, rs, False), embkern.csr_spmm(ip, ix64, w, x, rs))
    grads = []
    for ids in (ix64, ix32):  # the backward sorts the column ids of either width
        xg = x.clone().requires_grad_(True)
        embkern.csr_spmm(ip, ids, w, xg, rs, normalize=True).square().sum().backward()
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1])
    g = undirected_graph(rng, 300, 900, weighted=True)
    gi = torch.from_numpy(g.indptr).long()
    g64, g32 = torch.from_numpy(g.indices).long(), torch.from_numpy(g.indices).int()
    gw = torch.from_numpy(g.data)
    for kw in (dict(), dict(beta=-0.5, dtype=torch.bfloat16), dict(self_weight=0.3, normalize="propagate")):
        for weights in (gw, None):  # None: codes-only records and the unweighted degree pass
            want = embkern.fastrp((gi, g64, weights), 24, [0.0, 1.0, 1.0], seed=3, **kw)
            assert torch.equal(embkern.fastrp((gi, g32, weights), 24, [0.0, 1.0, 1.0], seed=3, **kw), want)


def test_fastrp_self_weight_only_and_trailing_zero_weights():
    rng = np.random.default_rng(15)
    a = undirected_graph(rng, 40, 100)
    only_self = embkern.fastrp(a, 8, [], self_weight=2.0, normalize="none")
    np.testing.assert_allclose(only_self, 2.0 * ref.projection(np.arange(40), 8, 3.0, 0), rtol=1e-6)
    np.testing.assert_array_equal(embkern.fastrp(a, 8, [1.0, 0.0, 0.0]), embkern.fastrp(a, 8, [1.0]))
    assert embkern.fastrp((np.zeros(1, np.int64), np.zeros(0, np.int64), None), 8, [1.0]).shape == (0, 8)


def test_fastrp_presets():
    rng = np.random.default_rng(16)
    a = undirected_graph(rng, 100, 300)
    paper = embkern.fastrp_preset("paper")
    assert paper["s"] == "sqrt_n" and paper["normalize"] == "merge" and list(paper["iteration_weights"]) == [0, 0, 1, 6.67]
    e = embkern.fastrp(a, 16, **paper)
    want = reference_embedding(a, 16, [0, 0, 1, 6.67], s=10.0, beta=-0.64, normalize="merge")
    np.testing.assert_allclose(e, want, rtol=2e-5, atol=2e-5)
    gds = embkern.fastrp_preset("gds", self_weight=0.5)
    assert gds["s"] == 3.0 and gds["normalize"] == "propagate" and gds["self_weight"] == 0.5
    np.testing.assert_allclose(embkern.fastrp(a, 16, **gds),
                               reference_embedding(a, 16, [0, 1, 1], normalize="propagate", self_weight=0.5),
                               rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="name must be one of"):
        embkern.fastrp_preset("neo4j")


def test_fastrp_sbm_quality():
    """5 blocks x 400 nodes, p_in 0.02, p_out 0.002: nearest-centroid on 10% of labels."""
    rng = np.random.default_rng(17)
    blocks, size = 5, 400
    n = blocks * size
    y = np.repeat(np.arange(blocks), size)
    p = np.where(y[:, None] == y[None, :], 0.02, 0.002)
    upper = np.triu(rng.random((n, n)) < p, 1)
    a = sp.csr_matrix(upper | upper.T, dtype=np.float32)
    train = rng.random(n) < 0.1

    def micro_f1(e):
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        centroids = np.stack([e[train & (y == k)].mean(0) for k in range(blocks)])
        pred = np.argmax(e[~train] @ centroids.T, axis=1)
        return (pred == y[~train]).mean()  # micro-F1 of single-label prediction = accuracy

    emb = embkern.fastrp(a, 128, [0.0, 1.0, 1.0, 1.0], seed=1)
    f1 = micro_f1(emb)
    f1_random = micro_f1(rng.standard_normal((n, 128)))
    assert f1 > 0.9, f1
    assert f1_random < 0.35, f1_random


def test_fastrp_bad_inputs():
    ip = np.array([0, 2, 3, 4], dtype=np.int64)
    ix = np.array([1, 2, 0, 0], dtype=np.int64)
    w = np.ones(4, dtype=np.float32)
    ok = (ip, ix, w)
    embkern.fastrp(ok, 4, [1.0])
    with pytest.raises(ValueError, match=r"indptr must have length 4 \(number of rows \+ 1\), got 3"):
        embkern.fastrp((ip[:3], ix, w), 4, [1.0], node_keys=np.arange(3))
    with pytest.raises(ValueError, match=r"indptr\[0\] must be 0, got 1"):
        embkern.fastrp((np.array([1, 2, 3, 4]), ix, w), 4, [1.0])
    with pytest.raises(ValueError, match=r"non-decreasing, got indptr\[2\] = 1 < indptr\[1\] = 3"):
        embkern.fastrp((np.array([0, 3, 1, 4]), ix, w), 4, [1.0])
    with pytest.raises(ValueError, match=r"indptr\[-1\] must equal the number of entries len\(indices\) = 4, got 3"):
        embkern.fastrp((np.array([0, 1, 2, 3]), ix, w), 4, [1.0])
    with pytest.raises(IndexError, match=r"indices must be in \[0, 3\), got indices\[1\] = 3"):
        embkern.fastrp((ip, np.array([1, 3, 0, 0]), w), 4, [1.0])
    with pytest.raises(IndexError, match=r"got indices\[3\] = -1"):
        embkern.fastrp((ip, np.array([1, 2, 0, -1]), w), 4, [1.0])
    with pytest.raises(ValueError, match=r"weights must have one entry per index \(4\), got 3"):
        embkern.fastrp((ip, ix, w[:3]), 4, [1.0])
    for bad in (-1.0, np.nan, np.inf):
        wb = w.copy()
        wb[2] = bad
        with pytest.raises(ValueError, match=r"weights must be finite and non-negative, got weights\[2\] = "):
            embkern.fastrp((ip, ix, wb), 4, [1.0])
    with pytest.raises(ValueError, match=r"dim must be > 0, got 0"):
        embkern.fastrp(ok, 0, [1.0])

    with pytest.raises(ValueError, match=r"iteration_weights has no non-zero entry .* self_weight is 0"):
        embkern.fastrp(ok, 4, [])
    with pytest.raises(ValueError, match=r"iteration_weights has no non-zero entry"):
        embkern.fastrp(ok, 4, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"iteration_weights must be finite"):
        embkern.fastrp(ok, 4, [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"s must be a finite number >= 1, got 0.5"):
        embkern.fastrp(ok, 4, [1.0], s=0.5)
    with pytest.raises(ValueError, match=r"s must be a number >= 1 or 'sqrt_n', got 'sqrt'"):
        embkern.fastrp(ok, 4, [1.0], s="sqrt")
    with pytest.raises(ValueError, match=r"feature_dim must be in \[0, dim = 4\], got 5"):
        embkern.fastrp(ok, 4, [1.0], features=np.ones((3, 2), np.float32), feature_dim=5)
    with pytest.raises(ValueError, match=r"feature_dim must be in \[0, dim = 4\], got -1"):
        embkern.fastrp(ok, 4, [1.0], feature_dim=-1)
    with pytest.raises(ValueError, match=r"feature_dim = 2 needs features"):
        embkern.fastrp(ok, 4, [1.0], feature_dim=2)
    with pytest.raises(ValueError, match=r"features were given but feature_dim is 0"):
        embkern.fastrp(ok, 4, [1.0], features=np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"features must have shape \[num_nodes = 3, F >= 1\], got \[4, 2\]"):
        embkern.fastrp(ok, 4, [1.0], node_keys=np.arange(3), features=np.ones((4, 2), np.float32), feature_dim=2)
    with pytest.raises(ValueError, match=r"normalize must be 'merge', 'propagate' or 'none', got 'l2'"):
        embkern.fastrp(ok, 4, [1.0], normalize="l2")
    with pytest.raises(TypeError, match=r"dtype must be torch.float32 or torch.bfloat16, got torch.float16"):
        embkern.fastrp(ok, 4, [1.0], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"node_keys must have one key per node \(3\), got 2"):
        embkern.fastrp(sp.csr_matrix(np.ones((3, 3), np.float32)), 4, [1.0], node_keys=np.arange(2))
    with pytest.raises(ValueError, match=r"adjacency must be square"):
        embkern.fastrp(sp.csr_matrix(np.ones((3, 4), np.float32)), 4, [1.0])
    with pytest.raises(TypeError, match=r"adjacency must be a scipy sparse matrix"):
        embkern.fastrp(np.ones((3, 3)), 4, [1.0])
    with pytest.raises(TypeError, match=r"seed must be an int"):
        embkern.fastrp(ok, 4, [1.0], seed=1.5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fastrp_bad_inputs_report_the_first_offender_of_a_large_graph(threads):
    """The checks scan blocks of entries in parallel; with several offenders far apart (other
    blocks, other threads) the error still names the first one."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n, nnz = 5000, 100_000
        rng = np.random.default_rng(14)
        ip = np.linspace(0, nnz, n + 1).astype(np.int64)
        ix = rng.integers(0, n, nnz)
        w = np.ones(nnz, dtype=np.float32)
        embkern.fastrp((ip, ix, w), 8, [1.0])
        bad_ix = ix.copy()
        bad_ix[[97_000, 41_000, 8_195]] = [n, -3, n + 7]
        with pytest.raises(IndexError, match=rf"got indices\[8195\] = {n + 7}"):
            embkern.fastrp((ip, bad_ix, w), 8, [1.0])
        bad_w = w.copy()
        bad_w[[99_999, 60_000, 4_096]] = [np.nan, -1.0, np.inf]
        with pytest.raises(ValueError, match=r"got weights\[4096\] = inf"):
            embkern.fastrp((ip, ix, bad_w), 8, [1.0])
        bad_ip = ip.copy()
        bad_ip[[4_500, 4_200]] -= 40  # indptr[4200] < indptr[4199] first
        with pytest.raises(ValueError, match=r"got indptr\[4200\] = \d+ < indptr\[4199\]"):
            embkern.fastrp((bad_ip, ix, w), 8, [1.0])
    finally:
        torch.set_num_threads(before)


def test_csr_spmm_bad_inputs():
    ip, ix = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    x = torch.randn(2, 3)
    with pytest.raises(IndexError, match=r"csr_spmm: indices must be in \[0, 2\), got indices\[1\] = 2"):
        embkern.csr_spmm(ip, torch.tensor([0, 2]), None, x)
    with pytest.raises(IndexError, match=r"csr_spmm: indices must be in \[0, 2\), got indices\[1\] = -1"):
        embkern.csr_spmm(ip, torch.tensor([0, -1], dtype=torch.int32), None, x)
    with pytest.raises(IndexError, match=r"fastrp: indices must be in \[0, 2\), got indices\[1\] = 5"):
        embkern.fastrp((ip, torch.tensor([1, 5], dtype=torch.int32), None), 4, [1.0])
    with pytest.raises(TypeError, match=r"csr_spmm: indices must have dtype int64 or int32, got torch.float32"):
        torch.ops.embkern.csr_spmm(ip, ix.float(), None, x, None, False)
    with pytest.raises(TypeError, match=r"x must have dtype torch.float32 or torch.bfloat16, got torch.float64"):
        embkern.csr_spmm(ip, ix, None, x.double())
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor, got 1-D"):
        embkern.csr_spmm(ip, ix, None, x[0])
    with pytest.raises(ValueError, match=r"row_scale must have one entry per row \(2\), got 3"):
        embkern.csr_spmm(ip, ix, None, x, torch.ones(3))
    with pytest.raises(ValueError, match=r"weights must have one entry per index \(2\), got 1"):
        embkern.csr_spmm(ip, ix, torch.ones(1), x)
    with pytest.raises(TypeError, match=r"indptr must have dtype torch.int64, got torch.float32"):
        embkern.csr_spmm(ip.float(), ix, None, x)
    with pytest.raises(ValueError, match=r"indptr must have at least 1 entry"):
        embkern.csr_spmm(torch.zeros(0, dtype=torch.int64), ix[:0], None, x)
    with pytest.raises(ValueError, match=r"out must have shape \[2, 3\], got \[2, 4\]"):
        embkern.csr_spmm(ip, ix, None, x, out=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"fastrp_projection: dim must be > 0"):
        embkern.fastrp_projection(np.arange(3), 0)


# ---- torch.library contracts -------------------------------------------------------------------------


def _opcheck_samples():
    rng = np.random.default_rng(18)
    a = random_csr(rng, 40, 40, 0.1)
    ip, ix, w = torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(), torch.from_numpy(a.data)
    x = torch.randn(40, 19)
    return [
        (torch.ops.embkern.csr_spmm.default, (ip, ix, w, x, torch.rand(40), True)),
        (torch.ops.embkern.csr_spmm.default, (ip, ix, None, x.bfloat16(), None, False)),
        (torch.ops.embkern.csr_spmm.default, (ip, ix.int(), w, x, None, False)),
        (torch.ops.embkern.csr_spmm_accumulate_.default, (torch.zeros(40, 19), ip, ix, w, x, None, 0.5, True)),
        (torch.ops.embkern.fastrp.default, (ip, ix, w, 40, 16, [0.0, 1.0, 1.0], 0.5, -0.2, 3.0, 7, None, "propagate", None, 0, torch.bfloat16)),
        (torch.ops.embkern.fastrp_projection.default, (torch.arange(10), 12, 3.0, 1, False)),
    ]


@pytest.mark.parametrize("op,args", _opcheck_samples())
def test_opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_opcheck_autograd():
    rng = np.random.default_rng(19)
    a = random_csr(rng, 30, 20, 0.2)
    ip, ix, w = torch.from_numpy(a.indptr).long(), torch.from_numpy(a.indices).long(), torch.from_numpy(a.data)
    for normalize, ids in ((False, ix), (True, ix), (False, ix.int())):
        x = torch.randn(20, 9, requires_grad=True)
        torch.library.opcheck(torch.ops.embkern.csr_spmm.default, (ip, ids, w, x, torch.rand(30), normalize))


def check_compile_fullgraph(device):
    """fastrp then csr_spmm under torch.compile(fullgraph=True): the eager result bit for bit."""
    rng = np.random.default_rng(20)
    a = random_csr(rng, 30, 30, 0.2)
    ip, ix, w = (torch.from_numpy(t).to(device) for t in (a.indptr.astype(np.int64), a.indices.astype(np.int64), a.data))

    @torch.compile(fullgraph=True, backend="eager")
    def f(ip, ix, w):
        e = torch.ops.embkern.fastrp(ip, ix, w, 30, 8, [1.0, 1.0], 0.0, 0.0, 3.0, 0, None, "merge", None, 0, None)
        return torch.ops.embkern.csr_spmm(ip, ix, w, e, None, True)

    want = embkern.csr_spmm(ip, ix, w, embkern.fastrp((ip, ix, w), 8, [1.0, 1.0]), normalize=True)
    assert torch.equal(f(ip, ix, w), want)


def test_torch_compile_fullgraph():
    check_compile_fullgraph("cpu")
