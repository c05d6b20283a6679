"""int8 family: calibration, quantization, int8_topk, rescore and SearchIndex against numpy, on
every ISA path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern
from reference import int8_ref

DIMS = [1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 100, 384]


def codes(rng, n, dim):
    return rng.integers(-128, 128, size=(n, dim), dtype=np.int8)


# ---- quantize / dequantize ----------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 7, 8, 15, 16, 17, 33, 100, 384])
@pytest.mark.parametrize("per_dim", [False, True])
def test_quantize_matches_numpy(isa, dim, per_dim):
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((29, dim)) * 3).astype(np.float32)
    if per_dim:
        scale = rng.uniform(0.01, 0.05, dim).astype(np.float32)
        zp = rng.integers(-20, 20, dim).astype(np.int32)
    else:
        scale, zp = np.float32(0.025), np.int32(-3)
    # Exact halves (round half to even), and values far past the range (saturate, never wrap).
    x[0] = (np.arange(dim) % 7 - 3 + 0.5).astype(np.float32) * np.broadcast_to(scale, (dim,))
    x[1] = 1e6
    x[2] = -1e30
    params = embkern.Int8Params(torch.tensor(scale), torch.tensor(zp))
    got = embkern.int8_quantize(x, params)
    assert isinstance(got, np.ndarray) and got.dtype == np.int8
    want = int8_ref.quantize(x, scale, zp)
    np.testing.assert_array_equal(got, want)
    assert (got[1] == 127).all() and (got[2] == -128).all()


def test_quantize_rounds_half_to_even(isa):
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5, 200.0]])
    p = embkern.Int8Params(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32))
    assert embkern.int8_quantize(x, p).tolist() == [[0, 2, 2, 0, -2, -2, 126, 127, -128, 127]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quantize_other_float_dtypes_go_through_float32(dtype):
    x = torch.randn(13, 40, dtype=torch.float64).to(dtype)
    p = embkern.int8_calibrate(x, "absmax", per_dim=True)
    got = embkern.int8_quantize(x, p)
    want = int8_ref.quantize(x.to(torch.float32).numpy(), p.scale.numpy(), p.zero_point.numpy())
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("col", [0, 16, 20])  # vector body and scalar/masked tail
def test_quantize_rejects_nan_and_inf(isa, bad, col):
    x = torch.zeros(3, 21)
    x[2, col] = bad
    p = embkern.Int8Params(torch.tensor(0.1), torch.tensor(0, dtype=torch.int32))
    with pytest.raises(ValueError, match=rf"int8_quantize: x must be finite, got {bad} at \[2, {col}\]"):
        embkern.int8_quantize(x, p)


def test_quantize_rejects_bad_params():
    x = torch.zeros(2, 4)
    z = torch.tensor(0, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"scale must be finite and > 0 everywhere, got 0 at index 0"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor(0.0), z))
    with pytest.raises(ValueError, match=r"scale must be finite and > 0 everywhere, got -1 at index 2"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor([1.0, 1.0, -1.0, 1.0]), torch.zeros(4, dtype=torch.int32)))
    with pytest.raises(ValueError, match=r"scale must be finite and > 0 everywhere, got nan"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor(float("nan")), z))
    with pytest.raises(ValueError, match=r"zero_point must be in \[-128, 127\], got 128"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor(1.0), torch.tensor(128, dtype=torch.int32)))
    with pytest.raises(ValueError, match=r"scale must be a scalar or have shape \[4\].*got shape \[3\]"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.ones(3), torch.zeros(3, dtype=torch.int32)))
    with pytest.raises(TypeError, match=r"scale must have dtype torch.float32, got torch.float64"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor(1.0, dtype=torch.float64), z))
    with pytest.raises(TypeError, match=r"zero_point must have dtype torch.int32, got torch.int64"):
        embkern.int8_quantize(x, embkern.Int8Params(torch.tensor(1.0), torch.tensor(0)))
    with pytest.raises(TypeError, match=r"x must be a floating tensor.*got dtype torch.int32"):
        embkern.int8_quantize(x.int(), embkern.Int8Params(torch.tensor(1.0), z))
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor, got 3-D"):
        embkern.int8_quantize(torch.zeros(2, 2, 2), embkern.Int8Params(torch.tensor(1.0), z))


def test_quantize_empty_and_one_row(isa):
    p = embkern.Int8Params(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32))
    assert embkern.int8_quantize(torch.zeros(0, 5), p).shape == (0, 5)
    assert embkern.int8_quantize(torch.tensor([1.0, -1.0, 0.2]), p).tolist() == [2, -2, 0]


def test_dequantize_inverts_within_half_a_step():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 33)).astype(np.float32)
    for method in ("absmax", "minmax"):
        for per_dim in (False, True):
            p = embkern.int8_calibrate(x, method, per_dim=per_dim)
            c = embkern.int8_quantize(x, p)
            back = embkern.int8_dequantize(c, p)
            assert back.dtype == np.float32
            np.testing.assert_array_equal(back, int8_ref.dequantize(c, p.scale.numpy(), p.zero_point.numpy()))
            step = np.broadcast_to(p.scale.numpy(), (33,))
            assert (np.abs(back - x) <= step / 2 * (1 + 1e-5)).all()
    with pytest.raises(TypeError, match="codes must have dtype torch.int8, got torch.uint8"):
        embkern.int8_dequantize(torch.zeros(2, 3, dtype=torch.uint8), p)


# ---- calibrate ----------------------------------------------------------------------------------------------


def test_calibrate_methods():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    x[:, 5] = np.abs(x[:, 5]) + 1.0  # a dimension that never crosses 0
    p = embkern.int8_calibrate(x, "absmax")
    assert p.scale.shape == () and p.zero_point.item() == 0
    assert p.scale.item() == pytest.approx(np.abs(x).max() / 127, rel=1e-6)
    p = embkern.int8_calibrate(x, "absmax", per_dim=True)
    np.testing.assert_allclose(p.scale.numpy(), np.abs(x).max(0) / 127, rtol=1e-6)
    q = embkern.int8_calibrate(x, "quantile", quantile=0.9, per_dim=True)
    np.testing.assert_allclose(q.scale.numpy(), np.quantile(np.abs(x), 0.9, axis=0) / 127, rtol=1e-6)
    assert (q.scale < p.scale).all()
    m = embkern.int8_calibrate(x, "minmax", per_dim=True)
    c = embkern.int8_quantize(x, m)
    lo, hi = np.minimum(x.min(0), 0), np.maximum(x.max(0), 0)
    np.testing.assert_allclose(m.scale.numpy(), (hi - lo) / 255, rtol=1e-6)
    # The range ends land on (or within rounding of) the int8 ends.
    assert (c.min(0)[:5] <= -127).all() and (c.max(0) >= 126).all()
    assert m.zero_point[5].item() == -128  # range [0, max]: 0 maps to -128


def test_calibrate_zero_range_and_errors():
    x = torch.zeros(10, 3)
    x[:, 1] = 2.0
    for method in ("absmax", "minmax", "quantile"):
        p = embkern.int8_calibrate(x, method, per_dim=True)
        assert p.scale[0].item() == 1.0 and (p.scale > 0).all()
        c = embkern.int8_quantize(x, p)
        assert (c[:, 0] == 0).all() and (embkern.int8_dequantize(c, p)[:, 0] == 0).all()
        np.testing.assert_allclose(embkern.int8_dequantize(c, p)[:, 1], 2.0, rtol=1e-2)
    assert embkern.int8_calibrate(torch.zeros(4, 4)).scale.item() == 1.0
    with pytest.raises(ValueError, match=r"x must be finite, got nan at \[1, 2\]"):
        bad = torch.zeros(3, 3)
        bad[1, 2] = float("nan")
        embkern.int8_calibrate(bad)
    with pytest.raises(ValueError, match="method must be 'absmax', 'minmax' or 'quantile', got 'max'"):
        embkern.int8_calibrate(x, "max")
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\], got 1.5"):
        embkern.int8_calibrate(x, "quantile", quantile=1.5)
    with pytest.raises(ValueError, match="at least one row"):
        embkern.int8_calibrate(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        embkern.int8_calibrate(torch.zeros(3, 3, dtype=torch.int8))


# ---- int8_topk ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("k", [1, 10, 1037])
def test_int8_topk_dot_matches_int64_reference(isa, dim, k):
    rng = np.random.default_rng(dim * 7 + k)
    q, db = codes(rng, 19, dim), codes(rng, 1037, dim)  # 19: not a multiple of any query tile
    v, i = embkern.int8_topk(q, db, k)
    rv, ri = int8_ref.int8_topk(q, db, k)
    assert v.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(v, rv)  # |dot| < 2^24 here, so the float32 scores are exact


@pytest.mark.parametrize("dim", [1, 5, 64, 100, 384])
@pytest.mark.parametrize("k", [1, 7, 600])
def test_int8_topk_cosine_matches_reference(isa, dim, k):
    rng = np.random.default_rng(dim + k)
    q, db = codes(rng, 11, dim), codes(rng, 600, dim)
    q[q == 0] = 1  # no zero-norm rows when dim is 1
    db[db == 0] = 1
    v, i = embkern.int8_topk(q, db, k, metric="cosine")
    rv, ri = int8_ref.int8_topk(q, db, k, "cosine")
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(v, rv)
    norms = embkern.int8_norms(db)
    np.testing.assert_array_equal(norms, int8_ref.norms(db))
    v2, i2 = embkern.int8_topk(q, db, k, metric="cosine", database_norms=norms)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(i2, i)


def test_int8_topk_extremes_exact(isa):
    # All -128: the largest products; the VNNI bias (-128 * sum q) is at its largest too.
    for dim in (1000, 4099):
        q = np.full((3, dim), -128, dtype=np.int8)
        q[1] = 127
        db = np.full((40, dim), -128, dtype=np.int8)
        db[::3] = 127
        db[5, : dim // 2] = 0
        v, i = embkern.int8_topk(q, db, 40)
        rv, ri = int8_ref.int8_topk(q, db, 40)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(v, rv)  # float32 of the exact int64 score
        assert ri[0, 0] == 0 or v[0, 0] == dim * 128 * 128


def test_int8_topk_overflow_check_on_dim():
    ok = torch.full((1, 131071), -128, dtype=torch.int8)
    v, _ = embkern.int8_topk(ok, ok, 1)
    assert v.item() == float(131071 * 16384)  # 2147467264 < 2^31, exact in float32? it is: 2^31 - 2^14
    too_big = torch.zeros(1, 131072, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"dimension 131072 could overflow int32 accumulation.*D <= 131071"):
        embkern.int8_topk(too_big, too_big, 1)


def test_int8_topk_ties_go_to_lower_index(isa):
    rng = np.random.default_rng(5)
    base = codes(rng, 40, 37)
    db = np.repeat(base, 3, axis=0)
    rng.shuffle(db)
    q = codes(rng, 9, 37)
    for metric in ("dot", "cosine"):
        for k in (1, 2, 3, 7, 120):
            v, i = embkern.int8_topk(q, db, k, metric)
            rv, ri = int8_ref.int8_topk(q, db, k, metric)
            np.testing.assert_array_equal(i, ri)
            np.testing.assert_array_equal(v, rv)
    same = np.ones((700, 20), dtype=np.int8)
    _, i = embkern.int8_topk(q[:, :20], same, 25)
    np.testing.assert_array_equal(i, np.tile(np.arange(25), (9, 1)))


def test_int8_topk_one_row_one_query_and_no_queries(isa):
    rng = np.random.default_rng(6)
    db = codes(rng, 1, 9)
    q = codes(rng, 4, 9)
    v, i = embkern.int8_topk(q, db, 1)
    np.testing.assert_array_equal(v[:, 0], int8_ref.dot_scores(q, db)[:, 0].astype(np.float32))
    np.testing.assert_array_equal(i, np.zeros((4, 1)))
    v1, i1 = embkern.int8_topk(torch.from_numpy(q[0]), torch.from_numpy(db), 1)
    assert v1.shape == (1,) and i1.tolist() == [0]
    v0, i0 = embkern.int8_topk(torch.zeros(0, 9, dtype=torch.int8), torch.from_numpy(db), 1)
    assert v0.shape == (0, 1) and i0.shape == (0, 1)


def test_int8_topk_database_split_and_thread_count_independence(isa, threads):
    rng = np.random.default_rng(13)
    q = codes(rng, 3, 48)
    db = codes(rng, 20000, 48)
    db[19999] = 127
    q[0] = 127  # row 19999 is the unique best match of query 0, at the very end
    for metric in ("dot", "cosine"):
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(embkern.int8_topk(q, db, 30, metric))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        rv, ri = int8_ref.int8_topk(q, db, 30, metric)
        np.testing.assert_array_equal(results[1][1], ri)
        np.testing.assert_array_equal(results[1][0], rv)
        assert results[1][1][0, 0] == 19999


def test_int8_topk_permuting_the_database_permutes_indices(isa):
    rng = np.random.default_rng(17)
    q, db = codes(rng, 5, 70), codes(rng, 2000, 70)
    perm = rng.permutation(2000)
    v0, i0 = embkern.int8_topk(q, db, 2000)
    v1, i1 = embkern.int8_topk(q, db[perm], 2000)
    np.testing.assert_array_equal(v0, v1)
    for r in range(5):
        for s in np.unique(v0[r]):
            assert set(i0[r][v0[r] == s]) == set(perm[i1[r][v1[r] == s]])


def test_isa_paths_agree_bitwise():
    from conftest import isa_paths

    rng = np.random.default_rng(19)
    q, db = codes(rng, 40, 45), codes(rng, 5000, 45)
    x = rng.standard_normal((300, 45)).astype(np.float32)
    p = embkern.int8_calibrate(x, "minmax", per_dim=True)
    outs = []
    for level, disabled in isa_paths():
        embkern.set_isa(level, disabled)
        outs.append((embkern.int8_topk(q, db, 20), embkern.int8_topk(q, db, 20, "cosine"), embkern.int8_quantize(x, p)))
    embkern.set_isa(embkern.build_info()["best_isa"])
    for o in outs[1:]:
        for a, b in zip(o[:2], outs[0][:2]):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(o[2], outs[0][2])


def test_int8_topk_bad_inputs_raise_clear_errors():
    db = torch.zeros(10, 4, dtype=torch.int8)
    q = torch.ones(2, 4, dtype=torch.int8)
    with pytest.raises(TypeError, match=r"queries must have dtype torch.int8, got torch.float32"):
        embkern.int8_topk(q.float(), db, 1)
    with pytest.raises(TypeError, match=r"database must have dtype torch.int8, got torch.uint8"):
        embkern.int8_topk(q, db.to(torch.uint8), 1)
    with pytest.raises(ValueError, match=r"database must be a 2-D tensor, got 1-D"):
        embkern.int8_topk(q, db[0], 1)
    with pytest.raises(ValueError, match=r"same dimension, got 3 and 4"):
        embkern.int8_topk(q[:, :3], db, 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 11"):
        embkern.int8_topk(q, db, 11)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 0"):
        embkern.int8_topk(q, db, 0)
    with pytest.raises(ValueError, match=r"database must not be empty"):
        embkern.int8_topk(q, db[:0], 1)
    with pytest.raises(ValueError, match=r"metric must be 'dot' or 'cosine', got 'l2'"):
        embkern.int8_topk(q, db, 1, "l2")
    with pytest.raises(ValueError, match=r"needs a finite, non-zero norm for every row of database_norms, got 0 for row 0"):
        embkern.int8_topk(q, db, 1, "cosine")
    with pytest.raises(ValueError, match=r"non-zero norm for every row of queries, got 0 for row 1"):
        q2 = q.clone()
        q2[1] = 0
        embkern.int8_topk(q2, q, 1, "cosine")
    with pytest.raises(ValueError, match=r"database_norms must have shape \[10\], got shape \[9\]"):
        embkern.int8_topk(q, db, 1, "cosine", torch.ones(9))
    with pytest.raises(TypeError, match=r"database_norms must have dtype torch.float32, got torch.float64"):
        embkern.int8_topk(q, db, 1, "cosine", torch.ones(10, dtype=torch.float64))


# ---- rescore ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_rescore_matches_reference(dtype, metric):
    rng = np.random.default_rng(23)
    corpus = torch.from_numpy(rng.standard_normal((500, 48)).astype(np.float32)).to(dtype)
    q = rng.standard_normal((7, 48)).astype(np.float32)
    cand = rng.integers(-1, 500, size=(7, 30))
    cand[0, :5] = cand[0, 5]  # repeats count once
    cand[1] = -1
    cand[1, 3] = 42  # one valid candidate: padded with -1
    v, i = embkern.rescore(q, cand, corpus, 10, metric)
    rv, ri = int8_ref.rescore(q, cand, corpus.to(torch.float32).numpy(), 10, metric)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-5)
    assert i[1].tolist() == [42] + [-1] * 9 and np.isneginf(v[1, 1:]).all()


def test_rescore_int8_corpus_with_and_without_params():
    rng = np.random.default_rng(29)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    p = embkern.int8_calibrate(x, "minmax", per_dim=True)
    c = embkern.int8_quantize(x, p)
    q = rng.standard_normal((5, 32)).astype(np.float32)
    cand = np.tile(np.arange(300), (5, 1))
    v, i = embkern.rescore(q, cand, c, 8, params=p)
    rv, ri = int8_ref.rescore(q, cand, int8_ref.dequantize(c, p.scale.numpy(), p.zero_point.numpy()), 8)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-4)
    v, i = embkern.rescore(q, cand, c, 8)
    rv, ri = int8_ref.rescore(q, cand, c.astype(np.float32), 8)
    np.testing.assert_array_equal(i, ri)


def test_rescore_ties_go_to_lower_id():
    corpus = torch.ones(10, 4)
    cand = torch.tensor([[9, 3, 7, 1, -1]])
    _, i = embkern.rescore(torch.ones(1, 4), cand, corpus, 3)
    assert i.tolist() == [[1, 3, 7]]


def test_rescore_bad_inputs():
    corpus = torch.randn(10, 4)
    q = torch.randn(2, 4)
    cand = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(IndexError, match=r"candidates must be -1 or in \[0, 10\).*got 10"):
        embkern.rescore(q, cand + 10, corpus, 1)
    with pytest.raises(IndexError, match=r"got -2"):
        embkern.rescore(q, cand - 2, corpus, 1)
    with pytest.raises(TypeError, match=r"candidates must have dtype torch.int64, got torch.int32"):
        embkern.rescore(q, cand.int(), corpus, 1)
    with pytest.raises(ValueError, match=r"candidates must have shape \[2, C\]"):
        embkern.rescore(q, cand[:1], corpus, 1)
    with pytest.raises(TypeError, match=r"corpus must have dtype .* got torch.float64"):
        embkern.rescore(q, cand, corpus.double(), 1)
    with pytest.raises(ValueError, match=r"corpus must have shape \[N, 4\]"):
        embkern.rescore(q, cand, corpus[:, :3], 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        embkern.rescore(q, cand, corpus, 4)
    with pytest.raises(ValueError, match=r"queries must be finite"):
        embkern.rescore(q * float("inf"), cand, corpus, 1)
    z = corpus.clone()
    z[0] = 0
    with pytest.raises(ValueError, match=r"zero norm for corpus row 0"):
        embkern.rescore(q, cand, z, 1, "cosine")


# ---- SearchIndex --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["binary", "int8"])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_search_index_full_rescore_is_exact(kind, metric):
    rng = np.random.default_rng(31)
    x = rng.standard_normal((400, 40)).astype(np.float32)
    q = rng.standard_normal((6, 40)).astype(np.float32)
    index = embkern.SearchIndex(40, kind, metric=metric)
    index.add(x[:150])
    index.add(x[150:])  # ids continue across adds
    assert len(index) == 400
    v, i = index.search(q, 5, rescore=400 / 5)  # every row is a candidate: exact float search
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    rv, ri = int8_ref.rescore(q, np.tile(np.arange(400), (6, 1)), xs, 5, metric)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-5)


def test_search_index_first_pass_equals_the_ops():
    rng = np.random.default_rng(37)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    q = rng.standard_normal((4, 24)).astype(np.float32)
    b = embkern.SearchIndex(24, "binary")
    b.add(x)
    v, i = b.search(q, 7)
    d, ri = embkern.hamming_topk(embkern.pack_bits(q), embkern.pack_bits(x), 7)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(v, (24 - 2 * d).astype(np.float32))
    n = embkern.SearchIndex(24, "int8")
    n.add(x)
    v, i = n.search(q, 7)
    p = embkern.int8_calibrate(x)
    rv, ri = embkern.int8_topk(embkern.int8_quantize(q, p), embkern.int8_quantize(x, p), 7)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(v, rv)
    # binary first pass, int8 rows for rescoring (the 1-bit -> 8-bit cascade)
    c = embkern.SearchIndex(24, "binary", store="int8")
    c.add(x)
    assert c.nbytes() == {"codes": 300 * 3, "rows": 300 * 24}
    v, i = c.search(q, 3, rescore=100)
    rv, ri = embkern.rescore(q, np.tile(np.arange(300), (4, 1)), embkern.int8_quantize(x, c.params), 3, params=c.params)
    np.testing.assert_array_equal(i, ri)


def test_search_index_errors():
    with pytest.raises(NotImplementedError, match="kind='rbe'"):
        embkern.SearchIndex(8, "rbe")
    with pytest.raises(ValueError, match="kind must be 'binary', 'int8' or 'rbe', got 'pq'"):
        embkern.SearchIndex(8, "pq")
    index = embkern.SearchIndex(8, "int8", store=None)
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(torch.zeros(1, 8), 1)
    index.add(torch.randn(5, 8))
    with pytest.raises(ValueError, match="must have 8 dimensions"):
        index.add(torch.randn(5, 9))
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        index.search(torch.zeros(1, 8), 6)
    with pytest.raises(ValueError, match="store=None"):
        index.search(torch.randn(1, 8), 1, rescore=2)
    with pytest.raises(ValueError, match="rescore must be >= 1"):
        index.search(torch.randn(1, 8), 1, rescore=0.5)


# ---- torch integration ----------------------------------------------------------------------------------


def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (5, 21), dtype=torch.int8, generator=g)
    db = torch.randint(-128, 128, (300, 21), dtype=torch.int8, generator=g)
    norms = embkern.int8_norms(db)
    return [
        (torch.ops.embkern.int8_quantize.default, (torch.randn(6, 21, generator=g), torch.tensor(0.02), torch.tensor(3, dtype=torch.int32))),
        (torch.ops.embkern.int8_quantize.default, (torch.randn(6, 21, generator=g), torch.rand(21, generator=g) + 0.1, torch.zeros(21, dtype=torch.int32))),
        (torch.ops.embkern.int8_topk.default, (q, db, 7)),
        (torch.ops.embkern.int8_topk.default, (q, db, 7, "cosine", norms)),
    ]


@pytest.mark.parametrize("op,args", _opcheck_samples(), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    x = torch.randn(4, 64)
    db = torch.randint(-128, 128, (100, 64), dtype=torch.int8)
    scale, zp = torch.tensor(0.02), torch.tensor(0, dtype=torch.int32)

    @torch.compile(fullgraph=True, backend="eager")
    def search(x, db):
        return torch.ops.embkern.int8_topk(torch.ops.embkern.int8_quantize(x, scale, zp), db, 5)

    v, i = search(x, db)
    rv, ri = embkern.int8_topk(embkern.int8_quantize(x, embkern.Int8Params(scale, zp)), db, 5)
    assert torch.equal(v, rv) and torch.equal(i, ri)
