"""embedding family: hash version 1 known answers, mux_embedding_bag forward / backward / fused
optimizers against pure-Python and torch references on every ISA path, UnifiedEmbedding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import embkern
from reference import embedding_ref as ref

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
OPS = torch.ops.embkern


def make_problem(features, M, D, B, max_len=4, seed=0, dtype=torch.float32, layout="shared", id_dtype=torch.int64,
                 empty_every=5):
    """features: {name: probes}. Random bags (some empty), feature-major offsets."""
    g = torch.Generator().manual_seed(seed)
    po, base, size, keys = embkern.probe_layout(features, M, seed=seed, layout=layout, num_tables=3)
    lens = torch.randint(0, max_len + 1, (len(features) * B,), generator=g)
    if empty_every:
        lens[::empty_every] = 0
    offsets = torch.zeros(len(features) * B + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    N = int(offsets[-1])
    values = torch.randint(-(1 << 40), 1 << 40, (N,), generator=g, dtype=torch.int64)
    if N:
        values[:: 3] = values[0]  # duplicates across bags and features
    values = values.to(id_dtype) if id_dtype == torch.int64 else (values % 100000).to(id_dtype)
    weight = torch.randn(M, D, generator=g, dtype=torch.float64).to(dtype)
    return weight, values, offsets, (po, base, size, keys)


def composition(weight, values, offsets, layout, pooling="sum", combine="concat", psw=None):
    """The torch composition: hash in Python (mux_hash), F.embedding_bag per probe, then cat / sum."""
    po, base, size, keys = layout
    Fn = po.numel() - 1
    B = (offsets.numel() - 1) // Fn
    outs = []
    for f in range(Fn):
        s, e = int(offsets[f * B]), int(offsets[(f + 1) * B])
        for g in range(int(po[f]), int(po[f + 1])):
            k = int(keys[g]) & ref.MASK
            rows = torch.tensor([ref.row(int(v), k, int(size[g]), int(base[g])) for v in values[s:e].tolist()],
                                dtype=torch.int64)
            if pooling == "none":
                outs.append(F.embedding(rows, weight))
                continue
            bag_off = offsets[f * B:(f + 1) * B] - s
            w = None if psw is None else psw[s:e]
            outs.append(F.embedding_bag(rows, weight, bag_off, mode=pooling, per_sample_weights=w,
                                        include_last_offset=False))
    if pooling == "none":
        raise NotImplementedError
    return torch.cat(outs, 1) if combine == "concat" else torch.stack(outs).sum(0)


def run(weight, values, offsets, layout, pooling="sum", combine="concat", psw=None, sparse=False):
    return embkern.mux_embedding_bag(weight, values, offsets, *layout, pooling, combine, psw, sparse)


# ---- hash version 1 ------------------------------------------------------------------------------


def test_feature_salt_is_blake2b_le():
    import hashlib

    assert embkern.feature_salt("user_id") == ref.salt("user_id")
    assert embkern.feature_salt("") == int.from_bytes(hashlib.blake2b(b"", digest_size=8).digest(), "little")
    assert embkern.feature_salt("a") != embkern.feature_salt("b")


def test_known_answers_pinned():
    # Pinned from the pure-Python reference: they must never change (hash version 1).
    k = ref.key(ref.salt("user_id"), 0)
    assert ref.mix(0) == 0xE220A8397B1DCDAF
    assert embkern.probe_key("user_id", 0) == k
    got = [int(x) for x in embkern.mux_hash(np.array([0, -1, INT64_MIN, INT64_MAX], dtype=np.int64), "user_id", 0,
                                            1_000_003)]
    want = [ref.row(v, k, 1_000_003) for v in (0, -1, INT64_MIN, INT64_MAX)]
    assert got == want
    assert got == KNOWN_ROWS


KNOWN_ROWS = [ref.row(v, ref.key(ref.salt("user_id"), 0), 1_000_003) for v in (0, -1, INT64_MIN, INT64_MAX)]


@pytest.mark.parametrize("num_rows", [1, 7, 1 << 32, (1 << 32) + 15, 3 << 40, (1 << 62) + 1, INT64_MAX])
@pytest.mark.parametrize("probe", [0, 3])
def test_mux_hash_matches_reference(num_rows, probe):
    vals = [0, 1, -1, 42, INT64_MIN, INT64_MAX, 123456789012345]
    got = embkern.mux_hash(torch.tensor(vals), "item", probe, num_rows, seed=5)
    k = ref.key(ref.salt("item"), probe, 5)
    assert got.tolist() == [ref.row(v, k, num_rows) for v in vals]
    assert all(0 <= r < num_rows for r in got.tolist())


def test_int32_and_int64_hash_alike():
    v32 = torch.tensor([0, -1, 2**31 - 1, -(2**31), 17], dtype=torch.int32)
    a = embkern.mux_hash(v32, "f", 1, 10**9)
    b = embkern.mux_hash(v32.to(torch.int64), "f", 1, 10**9)
    assert torch.equal(a, b)


def test_kernel_rows_equal_mux_hash(isa):
    # weight[r] = r (exact in float64): pooling none returns the row each (value, probe) hit.
    M = 5000
    feats = {"a": 2, "b": 1, "c": 3}
    for layout in ("shared", "per_feature", "sub_tables"):
        po, base, size, keys = embkern.probe_layout(feats, M, seed=9, layout=layout, num_tables=3)
        vals = torch.tensor([0, -1, INT64_MIN, INT64_MAX, 5, 5, 99, 1 << 40, -7], dtype=torch.int64)
        offsets = torch.tensor([0, 2, 3, 6, 7, 9, 9])  # F = 3 features, B = 2 bags each
        w = torch.arange(M, dtype=torch.float64).unsqueeze(1)
        out = run(w, vals, offsets, (po, base, size, keys), pooling="none")
        rows = ref.layout_rows(vals.tolist(), offsets.tolist(), po.tolist(), base.tolist(), size.tolist(), keys.tolist())
        B = 2
        for f in range(3):
            for p, g in enumerate(range(int(po[f]), int(po[f + 1]))):
                for i in range(int(offsets[f * B]), int(offsets[(f + 1) * B])):
                    assert int(out[i, p]) == rows[g][i]
                    assert int(base[g]) <= rows[g][i] < int(base[g]) + int(size[g])
        # probes a feature lacks give zeros
        assert torch.all(out[int(offsets[2]):int(offsets[4]), 1:] == 0)


def test_chi_square_uniform_and_independent():
    n, M = 200_000, 64
    vals = np.arange(n, dtype=np.int64) * 7919 - 10**6
    crit = 64 + 4 * math.sqrt(2 * 63)  # chi-square(63) mean + 4 sd
    rows = {}
    for feat in ("a", "b"):
        for p in range(2):
            r = embkern.mux_hash(vals, feat, p, M)
            counts = np.bincount(r, minlength=M)
            chi2 = ((counts - n / M) ** 2 / (n / M)).sum()
            assert chi2 < crit, (feat, p, chi2)
            rows[feat, p] = r
    # independence: the joint histogram of two probes is uniform over M x M cells (chi-square, 4095 dof)
    for a, b in [(("a", 0), ("a", 1)), (("a", 0), ("b", 0))]:
        joint = np.bincount(rows[a] * M + rows[b], minlength=M * M)
        e = n / (M * M)
        chi2 = ((joint - e) ** 2 / e).sum()
        assert chi2 < M * M + 4 * math.sqrt(2 * M * M), (a, b, chi2)
        assert np.mean(rows[a] == rows[b]) < 2.0 / M


# ---- forward -------------------------------------------------------------------------------------

FEATS = {"user": 2, "item": 1, "ctx": 3}


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("D", [1, 16, 17, 64, 130])
def test_forward_matches_composition(isa, pooling, combine, D):
    w, v, o, lay = make_problem(FEATS, 300, D, 9, seed=D)
    got = run(w, v, o, lay, pooling, combine)
    want = composition(w, v, o, lay, pooling, combine)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # float64 weights follow the same path in double: compare with the float64 loop reference
    w64 = w.double()
    want64 = ref.mux_embedding_bag(w64.numpy(), v, o, *[t.tolist() for t in lay], pooling, combine)
    np.testing.assert_allclose(run(w64, v, o, lay, pooling, combine).numpy(), want64, rtol=1e-12, atol=1e-12)


def test_forward_isa_paths_bitwise_identical():
    w, v, o, lay = make_problem(FEATS, 500, 37, 23, seed=3)
    psw = torch.randn(v.numel())
    best = embkern.build_info()["best_isa"]
    outs = {}
    try:
        for level in ("scalar", "avx2", "avx512"):
            if level == "avx512" and best != "avx512" or level == "avx2" and best == "scalar":
                continue
            embkern.set_isa(level)
            outs[level] = [run(w.to(dt), v, o, lay, pool, comb, p)
                           for dt in (torch.float32, torch.bfloat16, torch.float16)
                           for pool, comb, p in (("sum", "concat", None), ("mean", "sum", None), ("sum", "concat", psw),
                                                 ("none", "concat", None), ("none", "sum", None))]
    finally:
        embkern.set_isa(best)
    for level, res in outs.items():
        for a, b in zip(res, outs["scalar"]):
            assert torch.equal(a, b), level


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_low_precision_weights(isa, dtype):
    w, v, o, lay = make_problem(FEATS, 200, 24, 7, dtype=dtype, seed=2)
    got = run(w, v, o, lay, "mean", "concat")
    assert got.dtype == dtype
    want = ref.mux_embedding_bag(w.double().numpy(), v, o, *[t.tolist() for t in lay], "mean", "concat")
    # fp32 accumulation, one rounding to the output dtype at the end
    torch.testing.assert_close(got.double(), torch.from_numpy(want).to(dtype).double(), rtol=0, atol=0)


def test_per_sample_weights(isa):
    w, v, o, lay = make_problem(FEATS, 300, 20, 8, seed=4)
    psw = torch.rand(v.numel())
    got = run(w, v, o, lay, "sum", "concat", psw)
    torch.testing.assert_close(got, composition(w, v, o, lay, "sum", "concat", psw), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per_sample_weights needs pooling='sum'"):
        run(w, v, o, lay, "mean", "concat", psw)


def test_pooling_none_and_int32_ids(isa):
    w, v, o, lay = make_problem(FEATS, 300, 19, 6, seed=5, id_dtype=torch.int32)
    assert v.dtype == torch.int32
    for combine in ("concat", "sum"):
        got = run(w, v, o, lay, "none", combine)
        want = ref.mux_embedding_bag(w.numpy(), v.tolist(), o, *[t.tolist() for t in lay], "none", combine)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(run(w, v, o, lay), run(w, v.to(torch.int64), o, lay))


def test_numpy_in_numpy_out():
    w, v, o, lay = make_problem({"a": 2, "b": 1}, 60, 7, 5, seed=15)
    got = embkern.mux_embedding_bag(w.numpy(), v.numpy(), o.numpy(), *[t.numpy() for t in lay], "mean", "concat")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, run(w, v, o, lay, "mean", "concat").numpy())


def test_empty_cases(isa):
    po, base, size, keys = embkern.probe_layout({"a": 2, "b": 1}, 50)
    lay = (po, base, size, keys)
    w = torch.randn(50, 5)
    # B = 0
    out = run(w, torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), lay)
    assert out.shape == (0, 15)
    # N = 0, B = 3: all bags empty -> zeros
    for pooling in ("sum", "mean"):
        out = run(w, torch.zeros(0, dtype=torch.int64), torch.zeros(7, dtype=torch.int64), lay, pooling)
        assert out.shape == (3, 15) and torch.all(out == 0)
    out = run(w, torch.zeros(0, dtype=torch.int64), torch.zeros(7, dtype=torch.int64), lay, "none")
    assert out.shape == (0, 10)
    # one value, one bag
    v = torch.tensor([7])
    out = run(w, v, torch.tensor([0, 1, 1]), lay)
    r0 = embkern.mux_hash(v, "a", 0, 50)
    assert torch.equal(out[0, :5], w[r0[0]]) and torch.all(out[0, 10:] == 0)


def test_hot_row_hit_100k_times(isa):
    po, base, size, keys = embkern.probe_layout({"a": 1}, 10)
    w = torch.randn(10, 17)
    v = torch.full((100_000,), 3, dtype=torch.int64)
    o = torch.tensor([0, 50_000, 100_000])
    out = run(w, v, o, (po, base, size, keys), "mean")
    r = int(embkern.mux_hash(v[:1], "a", 0, 10)[0])
    # fp32 sums in value order, then one division: exactly the sequential float32 sum
    seq = np.add.accumulate(np.broadcast_to(w[r].numpy(), (50_000, 17)), axis=0, dtype=np.float32)[-1]
    want = torch.from_numpy(seq / np.float32(50_000)).expand(2, 17)
    assert torch.equal(out, want)
    grad = OPS.mux_embedding_bag_backward(torch.ones(2, 17), w, v, o, po, base, size, keys, "sum", "concat", None)
    assert torch.all(grad[r] == 100_000) and grad.abs().sum() == 100_000 * 17
    # fused SGD: the hot row's 100,000 pairs span every task's range; one task must own them all
    g2 = torch.full((2, 17), 0.25)
    res = []
    for n in (1, 2):
        torch.set_num_threads(n)
        w2 = w.clone()
        OPS.mux_embedding_bag_sgd_(w2, g2, v, o, po, base, size, keys, "sum", "concat", None, 0.5)
        res.append(w2)
    assert torch.equal(res[0], res[1])
    want_w = w.clone()
    want_w[r] = w[r] - 12_500.0  # lr x (100,000 x 0.25): every partial sum and the product are exact
    assert torch.equal(res[0], want_w)


def test_thread_count_invariance(threads):
    w, v, o, lay = make_problem({"a": 2, "b": 2}, 2000, 33, 300, max_len=8, seed=6, empty_every=0)
    psw = torch.randn(v.numel())
    g = torch.randn(300, 4 * 33)
    res = []
    for n in (1, 2):
        torch.set_num_threads(n)
        fwd = run(w, v, o, lay, "sum", "concat", psw)
        dense = OPS.mux_embedding_bag_backward(g, w, v, o, *lay, "sum", "concat", psw)
        rows, vals = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, "mean", "concat", None)
        w2, m2 = w.clone(), torch.zeros(2000)
        OPS.mux_embedding_bag_rowwise_adagrad_(w2, m2, g, v, o, *lay, "sum", "concat", None, 0.1, 1e-8)
        res.append((fwd, dense, rows, vals, w2, m2))
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_backward_large_table_many_pairs(isa):
    """Sizes that exercise every level of the pair sort: more than one 32K chunk of pairs, a table
    of 2^19 rows (a top digit plus two bucket passes) and rows hit from many bags."""
    w, v, o, lay = make_problem({"a": 2, "b": 3}, 300_000, 5, 4000, max_len=8, seed=8, dtype=torch.float64)
    g = torch.randn(4000, 5 * 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = []
    for n in (1, 2):
        torch.set_num_threads(n)
        rows, vals = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, "sum", "concat", None)
        w2 = w.clone()
        OPS.mux_embedding_bag_sgd_(w2, g, v, o, *lay, "sum", "concat", None, 0.5)
        res.append((rows, vals, w2))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    rows, vals, w2 = res[0]
    want = composition_grad(w, v, o, lay, "sum", "concat", g)
    touched = want.abs().sum(1).nonzero().flatten()
    assert rows.numel() > 1 << 15 and torch.equal(rows, touched)  # ascending unique rows
    torch.testing.assert_close(vals, want[rows], rtol=1e-12, atol=1e-12)
    ref_w = w.clone()
    ref_w[rows] = torch.addcmul(w[rows], vals, torch.full_like(vals, -0.5))
    assert torch.equal(w2, ref_w)


@pytest.mark.parametrize("bags", [1, 60, 63, 64, 65, 127, 128, 129, 600])
def test_backward_sort_sizes(bags):
    """The pair sort's top digit grows with the number of pairs (1 bucket below 512 pairs, up to 256):
    pair counts around those steps (8 pairs a bag here: 504, 512, 520, ... 4800), against autograd
    of the composition, with rows that repeat."""
    w, v, o, lay = make_problem({"a": 2, "b": 2}, 700, 6, bags, max_len=2, seed=bags, dtype=torch.float64)
    v = torch.arange(4 * bags) % 517  # 2 ids a bag, 517 distinct ids: rows repeat across bags
    o = torch.arange(0, 2 * 2 * bags + 1, 2)  # 2 ids per bag: pairs = 2 features x 2 probes x 2 x bags
    g = torch.randn(bags, 4 * 6, generator=torch.Generator().manual_seed(bags), dtype=torch.float64)
    rows, vals = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, "sum", "concat", None)
    want = composition_grad(w, v, o, lay, "sum", "concat", g)
    assert torch.equal(rows, want.abs().sum(1).nonzero().flatten())
    torch.testing.assert_close(vals, want[rows], rtol=1e-12, atol=1e-12)


def test_reused_output_buffers():
    """Outputs of 1 MiB and more come from a cache of freed blocks: live outputs never share memory,
    and a reused block never leaks old values (pooling none zero-fills the probes a feature lacks)."""
    w, v, o, lay = make_problem({"a": 1, "b": 3}, 5000, 64, 4096, max_len=2, seed=9)
    first = run(w, v, o, lay, "none", "concat")  # [N, 3 * 64] fp32: > 1 MiB
    assert first.numel() * 4 >= 1 << 20
    want = torch.from_numpy(np.asarray(ref.mux_embedding_bag(w.numpy(), v.tolist(), o, *[t.tolist() for t in lay],
                                                             "none", "concat"), dtype=np.float32))
    second = run(w, v, o, lay, "none", "concat")
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, want) and torch.equal(second, want)
    first.fill_(7.0)  # a freed block full of garbage, then the same size again
    del first
    again = run(w, v, o, lay, "none", "concat")
    assert torch.equal(again, want) and torch.equal(second, want)
    g = torch.randn(4096, 4 * 64)
    sp1 = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, "sum", "concat", None)
    sp2 = OPS.mux_embedding_bag_backward_sparse(g, w, v, o, *lay, "sum", "concat", None)
    assert sp1[1].data_ptr() != sp2[1].data_ptr() and torch.equal(sp1[0], sp2[0]) and torch.equal(sp1[1], sp2[1])


# ---- backward ------------------------------------------------------------------------------------


def composition_grad(w, v, o, lay, pooling, combine, grad, psw=None):
    wr = w.detach().clone().requires_grad_(True)
    out = composition(wr, v, o, lay, pooling, combine, psw)
    out.backward(grad)
    return wr.grad


@pytest.mark.parametrize("pooling,combine", [("sum", "concat"), ("mean", "concat"), ("sum", "sum"), ("mean", "sum")])
def test_backward_matches_composition(isa, pooling, combine):
    w, v, o, lay = make_problem(FEATS, 150, 21, 10, seed=7)
    wr = w.clone().requires_grad_(True)
    out = run(wr, v, o, lay, pooling, combine)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(wr.grad, composition_grad(w, v, o, lay, pooling, combine, g), rtol=1e-5, atol=1e-5)
    # sparse: coalesced COO with the same values, sorted unique rows
    # (torch.autograd.grad returns it as is; AccumulateGrad re-wraps a stolen sparse .grad with
    # _sparse_coo_tensor_unsafe, which drops the flag but keeps the sorted unique indices)
    ws = w.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(run(ws, v, o, lay, pooling, combine, sparse=True), ws, g)
    assert gs.is_sparse and gs.is_coalesced()
    idx = gs._indices()[0]
    assert torch.all(idx[1:] > idx[:-1])
    assert torch.equal(gs.to_dense(), wr.grad)
    run(ws, v, o, lay, pooling, combine, sparse=True).backward(g)
    assert ws.grad.is_sparse and torch.equal(ws.grad._indices(), gs._indices())


def test_backward_pooling_none(isa):
    w, v, o, lay = make_problem(FEATS, 100, 9, 5, seed=8)
    for combine in ("concat", "sum"):
        wr = w.clone().requires_grad_(True)
        out = run(wr, v, o, lay, "none", combine)
        g = torch.randn_like(out)
        out.backward(g)
        w64 = w.double().requires_grad_(True)
        torch.autograd.backward(run(w64, v, o, lay, "none", combine), g.double())
        torch.testing.assert_close(wr.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


def test_backward_isa_paths_bitwise_identical():
    w, v, o, lay = make_problem(FEATS, 400, 37, 30, seed=9)
    g = torch.randn(30, 6 * 37)
    best = embkern.build_info()["best_isa"]
    outs = {}
    try:
        for level in ("scalar", "avx2", "avx512"):
            if level == "avx512" and best != "avx512" or level == "avx2" and best == "scalar":
                continue
            embkern.set_isa(level)
            res = [OPS.mux_embedding_bag_backward(g, w, v, o, *lay, "mean", "concat", None)]
            for dt in (torch.float32, torch.bfloat16, torch.float16):
                w2, m2 = w.to(dt, copy=True), torch.zeros(400)
                OPS.mux_embedding_bag_rowwise_adagrad_(w2, m2, g, v, o, *lay, "sum", "concat", None, 0.05, 1e-6)
                w3 = w.to(dt, copy=True)
                OPS.mux_embedding_bag_sgd_(w3, g, v, o, *lay, "sum", "concat", None, 0.05)
                res += [w2, m2, w3]
            outs[level] = res
    finally:
        embkern.set_isa(best)
    for level, res in outs.items():
        for a, b in zip(res, outs["scalar"]):
            assert torch.equal(a, b), level


def test_gradcheck_float64():
    w, v, o, lay = make_problem({"a": 2, "b": 1}, 30, 5, 4, seed=10, dtype=torch.float64)
    w.requires_grad_(True)
    psw = torch.rand(v.numel(), dtype=torch.float64, requires_grad=True)
    for pooling, combine in (("sum", "concat"), ("mean", "sum"), ("none", "concat")):
        assert torch.autograd.gradcheck(lambda w_: run(w_, v, o, lay, pooling, combine), (w,))
    assert torch.autograd.gradcheck(lambda w_, p_: run(w_, v, o, lay, "sum", "concat", p_), (w, psw))
    assert torch.autograd.gradcheck(lambda w_, p_: run(w_, v, o, lay, "sum", "sum", p_), (w, psw))


def test_grads_go_to_the_inputs_that_require_them():
    """Only per_sample_weights, only the weight, or both require grad; the output gradient may be
    non-contiguous. Each gradient against the torch composition's."""
    w, v, o, lay = make_problem(FEATS, 90, 10, 7, seed=17)
    psw = torch.rand(v.numel())
    g = torch.randn(10 * 6, 7).t()  # [B, G * D] = [7, 60], non-contiguous
    for w_grad, p_grad in ((False, True), (True, False), (True, True)):
        wo, po = w.clone().requires_grad_(w_grad), psw.clone().requires_grad_(p_grad)
        wc, pc = w.clone().requires_grad_(w_grad), psw.clone().requires_grad_(p_grad)
        run(wo, v, o, lay, "sum", "concat", po).backward(g)
        composition(wc, v, o, lay, "sum", "concat", pc).backward(g)
        for ours, theirs, wanted in ((wo.grad, wc.grad, w_grad), (po.grad, pc.grad, p_grad)):
            assert (ours is not None) == wanted
            if wanted:
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---- fused optimizers ----------------------------------------------------------------------------


def test_fused_sgd_matches_reference(isa):
    w, v, o, lay = make_problem(FEATS, 120, 18, 12, seed=11)
    g = torch.randn(12, 6 * 18)
    dense = composition_grad(w, v, o, lay, "mean", "concat", g)
    w2 = w.clone()
    OPS.mux_embedding_bag_sgd_(w2, g, v, o, *lay, "mean", "concat", None, 0.3)
    torch.testing.assert_close(w2, w - 0.3 * dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_rowwise_adagrad_matches_reference(isa, dtype):
    w, v, o, lay = make_problem(FEATS, 120, 18, 12, seed=12, dtype=dtype)
    mdt = torch.float64 if dtype == torch.float64 else torch.float32
    m = torch.rand(120, dtype=mdt)
    w2, m2 = w.clone(), m.clone()
    for step in range(2):
        g = torch.randn(12, 6 * 18, dtype=dtype)
        dense = composition_grad(w2.double(), v, o, lay, "sum", "concat", g.double())
        want_w, want_m = ref.rowwise_adagrad(w2.double().numpy(), m2.double().numpy(), dense.numpy(), 0.1, 1e-7)
        OPS.mux_embedding_bag_rowwise_adagrad_(w2, m2, g, v, o, *lay, "sum", "concat", None, 0.1, 1e-7)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(w2.double().numpy(), want_w, rtol=tol, atol=tol)
        np.testing.assert_allclose(m2.double().numpy(), want_m, rtol=tol, atol=tol)


def test_fused_forward_updates_weight_and_leaves_no_grad():
    w, v, o, lay = make_problem(FEATS, 100, 8, 6, seed=13)
    p = torch.nn.Parameter(w.clone())
    out = OPS.mux_embedding_bag_fused(p, torch.zeros(0), v, o, *lay, "sum", "concat", None, "sgd", 0.5)
    torch.testing.assert_close(out, run(w, v, o, lay))
    g = torch.randn_like(out)
    out.backward(g)
    assert p.grad is None
    w_ref = w.clone()
    OPS.mux_embedding_bag_sgd_(w_ref, g, v, o, *lay, "sum", "concat", None, 0.5)
    assert torch.equal(p.detach(), w_ref)


@pytest.mark.parametrize("optimizer,combine", [("sgd", "concat"), ("rowwise_adagrad", "concat"), ("sgd", "sum")])
def test_fused_step_pair_keys_from_forward(isa, threads, monkeypatch, optimizer, combine):
    """The fused op's CPU forward writes the backward's pair keys (PairKeyMemo); the weights after
    training steps must be bitwise those of recomputing the keys in the backward, for interleaved
    steps (a later forward replaces the kept keys) and across thread counts. Many pairs: the keys
    are written by several tasks and blocks of the forward."""
    feats = {"a": 2, "b": 1, "c": 3}
    w, v, o, lay = make_problem(feats, 5000, 20, 400, max_len=9, seed=21)
    w_b, v_b, o_b, _ = make_problem(feats, 5000, 20, 400, max_len=9, seed=22)
    cols = 6 * 20 if combine == "concat" else 20
    grads = [torch.randn(400, cols, generator=torch.Generator().manual_seed(k)) for k in range(3)]

    def train(reuse, n_threads):
        monkeypatch.setenv("EMBKERN_REUSE_PAIR_KEYS", "1" if reuse else "0")
        torch.set_num_threads(n_threads)
        p, m = torch.nn.Parameter(w.clone()), torch.zeros(5000)
        step = lambda vals, offs: OPS.mux_embedding_bag_fused(p, m, vals, offs, *lay, "sum", combine, None,
                                                             optimizer, 0.05, 1e-8)
        step(v, o).backward(grads[0])  # forward, then its backward (the keys are kept and used)
        out_a, out_b = step(v, o), step(v_b, o_b)  # the second forward replaces the first one's keys
        out_a.backward(grads[1])
        out_b.backward(grads[2])
        return p.detach().clone(), m

    want_w, want_m = train(False, 1)
    # The same steps through the unfused ops.
    w_ref, m_ref = w.clone(), torch.zeros(5000)
    for vals, offs, g in ((v, o, grads[0]), (v, o, grads[1]), (v_b, o_b, grads[2])):
        if optimizer == "sgd":
            OPS.mux_embedding_bag_sgd_(w_ref, g, vals, offs, *lay, "sum", combine, None, 0.05)
        else:
            OPS.mux_embedding_bag_rowwise_adagrad_(w_ref, m_ref, g, vals, offs, *lay, "sum", combine, None, 0.05, 1e-8)
    assert torch.equal(want_w, w_ref) and torch.equal(want_m, m_ref)
    for n in (1, 3):
        got_w, got_m = train(True, n)
        assert torch.equal(got_w, want_w) and torch.equal(got_m, want_m)


def test_fused_pair_keys_never_stale(monkeypatch):
    """Kept pair keys must match the tensors a backward is given: more pending forwards than the
    memo keeps, backwards in any order, and values changed in place after a forward."""
    feats = {"a": 2, "b": 1}
    w, _, _, lay = make_problem(feats, 3000, 12, 50, seed=23)
    inputs = [make_problem(feats, 3000, 12, 50, seed=30 + k)[1:3] for k in range(6)]
    grads = [torch.randn(50, 3 * 12, generator=torch.Generator().manual_seed(k)) for k in range(6)]

    def run_steps(reuse):
        monkeypatch.setenv("EMBKERN_REUSE_PAIR_KEYS", "1" if reuse else "0")
        p = torch.nn.Parameter(w.clone())
        outs = [OPS.mux_embedding_bag_fused(p, torch.zeros(0), v, o, *lay, "sum", "concat", None, "sgd", 0.1)
                for v, o in inputs]
        for k in (4, 0, 5, 2, 1, 3):
            outs[k].backward(grads[k])
        return p.detach().clone()

    assert torch.equal(run_steps(True), run_steps(False))
    # A forward keeps keys for (v, o); v then changes in place: a backward given the changed v hashes it.
    monkeypatch.setenv("EMBKERN_REUSE_PAIR_KEYS", "1")
    v, o = (t.clone() for t in inputs[0])
    p = torch.nn.Parameter(w.clone())
    OPS.mux_embedding_bag_fused(p, torch.zeros(0), v, o, *lay, "sum", "concat", None, "sgd", 0.1)
    v.add_(1)
    got, want = w.clone(), w.clone()
    OPS.mux_embedding_bag_sgd_(got, grads[0], v, o, *lay, "sum", "concat", None, 0.1)
    monkeypatch.setenv("EMBKERN_REUSE_PAIR_KEYS", "0")
    OPS.mux_embedding_bag_sgd_(want, grads[0], v.clone(), o, *lay, "sum", "concat", None, 0.1)
    assert torch.equal(got, want)


def test_pending_pair_keys_at_exit():
    """A fused forward whose backward never runs leaves kept pair keys in its thread; the process
    must still exit cleanly (keys held references to the layout tensors once, and releasing them
    after Python had shut down aborted the process)."""
    import os
    import subprocess
    import sys
    code = (
        "import threading, torch, embkern\n"
        "po, base, size, keys = embkern.probe_layout({'a': 2, 'b': 1}, 1000)\n"
        "def step():\n"
        "    v = torch.randint(0, 1 << 40, (64,)); o = torch.arange(0, 68, 4)\n"
        "    p = torch.nn.Parameter(torch.randn(1000, 8))\n"
        "    return torch.ops.embkern.mux_embedding_bag_fused(p, torch.zeros(0), v, o, po, base, size, keys,\n"
        "                                                    'sum', 'concat', None, 'sgd', 0.1)\n"
        "t = threading.Thread(target=step); t.start(); t.join()\n"
        "out = step()\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout, res.stderr[-2000:])


# ---- op checks, errors ---------------------------------------------------------------------------


def test_opcheck():
    w, v, o, lay = make_problem({"a": 2, "b": 1}, 40, 6, 3, seed=14)
    psw = torch.rand(v.numel())
    wg = w.clone().requires_grad_(True)
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "sum", "concat", None, False))
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "mean", "sum", None, False))
    torch.library.opcheck(OPS.mux_embedding_bag, (wg, v, o, *lay, "sum", "concat", psw.requires_grad_(True), False))
    torch.library.opcheck(OPS.mux_embedding_bag, (w, v, o, *lay, "none", "sum", None, False))
    g = torch.randn(3, 18)
    torch.library.opcheck(OPS.mux_embedding_bag_backward, (g, w, v, o, *lay, "sum", "concat", None))
    torch.library.opcheck(OPS.mux_embedding_bag_psw_backward, (g, w, v, o, *lay, "sum", "concat", None))
    torch.library.opcheck(OPS.mux_embedding_bag_sgd_, (w.clone(), g, v, o, *lay, "sum", "concat", None, 0.1))
    torch.library.opcheck(OPS.mux_embedding_bag_rowwise_adagrad_,
                          (w.clone(), torch.zeros(40), g, v, o, *lay, "sum", "concat", None, 0.1, 1e-8))
    torch.library.opcheck(OPS.mux_embedding_bag_fused,
                          (w.clone(), torch.zeros(0), v, o, *lay, "sum", "concat", None, "sgd", 0.1, 1e-8),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_raise_clear_errors():
    po, base, size, keys = embkern.probe_layout({"a": 2, "b": 1}, 50)
    w = torch.randn(50, 4)
    v = torch.tensor([1, 2, 3])
    o = torch.tensor([0, 1, 2, 2, 3])  # F=2, B=2

    def call(**kw):
        args = dict(weight=w, values=v, offsets=o, probe_offsets=po, probe_row_base=base, probe_row_size=size,
                    probe_keys=keys, pooling="sum", combine="concat")
        args.update(kw)
        return embkern.mux_embedding_bag(**args)

    call()
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        call(offsets=torch.tensor([0, 2, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"offsets must have F \* B \+ 1 entries with F = 2 features, got 4"):
        call(offsets=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal the number of values N = 3, got 2"):
        call(offsets=torch.tensor([0, 1, 2, 2, 2]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        call(offsets=torch.tensor([1, 1, 2, 2, 3]))
    with pytest.raises(IndexError, match=r"probe 1 covers rows \[10, 10 \+ 45\) but weight has 50 rows"):
        call(probe_row_base=torch.tensor([0, 10, 0]), probe_row_size=torch.tensor([50, 45, 50]))
    with pytest.raises(ValueError, match=r"probe_row_size\[2\] must be >= 1, got 0"):
        call(probe_row_size=torch.tensor([50, 50, 0]))
    with pytest.raises(ValueError, match="every feature needs at least 1 probe"):
        call(probe_offsets=torch.tensor([0, 3, 3]))
    with pytest.raises(TypeError, match="values must have dtype torch.int64 or torch.int32, got torch.float32"):
        call(values=v.float())
    with pytest.raises(TypeError, match="offsets must have dtype torch.int64, got torch.int32"):
        call(offsets=o.int())
    with pytest.raises(TypeError, match="weight must have dtype .* got torch.int64"):
        call(weight=w.long())
    with pytest.raises(ValueError, match="pooling must be one of 'sum', 'mean', 'none', got 'max'"):
        call(pooling="max")
    with pytest.raises(ValueError, match="combine must be 'concat' or 'sum', got 'stack'"):
        call(combine="stack")
    with pytest.raises(ValueError, match=r"grad must have shape \[2, 12\]"):
        OPS.mux_embedding_bag_backward(torch.randn(3, 12), w, v, o, po, base, size, keys, "sum", "concat", None)
    with pytest.raises(TypeError, match="momentum must have dtype torch.float32, got torch.float64"):
        OPS.mux_embedding_bag_rowwise_adagrad_(w, torch.zeros(50, dtype=torch.float64), torch.randn(2, 12), v, o, po,
                                               base, size, keys, "sum", "concat", None, 0.1, 1e-8)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'rowwise_adagrad', got 'adam'"):
        OPS.mux_embedding_bag_fused(w, torch.zeros(0), v, o, po, base, size, keys, "sum", "concat", None, "adam", 0.1)
    with pytest.raises(ValueError, match="num_rows must be in"):
        embkern.mux_hash(v, "a", 0, 0)


# ---- module --------------------------------------------------------------------------------------


def module_inputs(B, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, n in (("user", 1), ("item", 3), ("ctx", 2)):
        lens = torch.randint(0, n + 1, (B,), generator=g)
        off = torch.zeros(B + 1, dtype=torch.int64)
        off[1:] = lens.cumsum(0)
        out[name] = (torch.randint(0, 10**6, (int(off[-1]),), generator=g), off)
    return out


def test_unified_embedding_matches_op():
    m = embkern.UnifiedEmbedding(1000, 8, {"user": 2, "item": 1, "ctx": 1}, seed=3)
    x = module_inputs(5, 0)
    out = m(x)
    assert out.shape == (5, 4 * 8) and m.output_dim == 32
    # by hand: feature-major jagged layout
    vals = torch.cat([x[n][0] for n in ("user", "item", "ctx")])
    shifts = [0, x["user"][0].numel(), x["user"][0].numel() + x["item"][0].numel()]
    offs = torch.cat([x[n][1][:-1] + s for n, s in zip(("user", "item", "ctx"), shifts)] + [torch.tensor([vals.numel()])])
    po, base, size, keys = embkern.probe_layout({"user": 2, "item": 1, "ctx": 1}, 1000, seed=3)
    assert torch.equal(out, run(m.weight, vals, offs, (po, base, size, keys)))
    # adding a feature does not move the others' rows
    m2 = embkern.UnifiedEmbedding(1000, 8, {"new": 1, "user": 2, "item": 1, "ctx": 1}, seed=3)
    m2.weight.data.copy_(m.weight.data)
    x2 = dict(x, new=(torch.tensor([1, 2]), torch.tensor([0, 1, 1, 1, 2, 2])))
    assert torch.equal(m2(x2)[:, 8:], out)


def test_unified_embedding_input_dtypes_empty_batch_and_bad_offsets():
    m = embkern.UnifiedEmbedding(1000, 8, {"user": 2, "item": 1, "ctx": 1}, seed=3)
    x = module_inputs(6, 1)
    want = m(x)
    # int32 values (kept as int32: the op sign-extends them), int32 offsets, mixed dtypes: same bits
    x32 = {n: (v.int(), o.int()) for n, (v, o) in x.items()}
    assert m._jagged(x32)[0].dtype == torch.int32
    assert torch.equal(m(x32), want)
    mixed = dict(x, item=(x["item"][0].int(), x["item"][1]))
    assert m._jagged(mixed)[0].dtype == torch.int64
    assert torch.equal(m(mixed), want)
    # an empty batch
    empty = {n: (torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)) for n in x}
    assert m(empty).shape == (0, 32)
    # a feature whose offsets do not end at its number of values is named
    assert x["item"][0].numel() > 0
    bad = dict(x, item=(x["item"][0][:-1], x["item"][1]))
    with pytest.raises(ValueError, match=r"feature 'item' offsets must end at len\(values\) = \d+, got \d+"):
        m(bad)


def test_huge_page_empty():
    t = embkern.huge_page_empty((3 << 18, 16))  # 48 MB: spans many 2 MB pages
    assert t.shape == (3 << 18, 16) and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    assert t.data_ptr() % (2 << 20) == 0  # starts on a huge-page boundary
    t.fill_(1.5)
    assert float(t[-1, -1]) == 1.5 and t.sum().item() == 1.5 * t.numel()
    h = embkern.huge_page_empty([5, 3], torch.bfloat16)
    assert h.shape == (5, 3) and h.dtype == torch.bfloat16
    assert embkern.huge_page_empty((0, 4)).shape == (0, 4)
    del t  # the mapping goes with its last view
    import gc
    gc.collect()


@pytest.mark.parametrize("optimizer", [None, "sgd"])
def test_unified_embedding_huge_pages_same_results(optimizer):
    feats = {"user": 1, "item": 2, "ctx": 1}
    m = embkern.UnifiedEmbedding(500, 8, feats, optimizer=optimizer, lr=0.1)
    m4k = embkern.UnifiedEmbedding(500, 8, feats, optimizer=optimizer, lr=0.1, huge_pages=False)
    assert m.weight.data_ptr() % (2 << 20) == 0
    m4k.weight.data.copy_(m.weight.data)
    x = module_inputs(6, 4)
    out, out4k = m(x), m4k(x)
    assert torch.equal(out, out4k)
    out.square().sum().backward()
    out4k.square().sum().backward()
    if optimizer is None:
        assert torch.equal(m.weight.grad, m4k.weight.grad)
    assert torch.equal(m.weight.detach(), m4k.weight.detach())
    sd = m.state_dict()
    m4k.load_state_dict(sd)
    assert torch.equal(m4k.weight.detach(), m.weight.detach())


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_unified_embedding_fused_training_step(optimizer):
    m = embkern.UnifiedEmbedding(500, 8, {"user": 1, "item": 2, "ctx": 1}, optimizer=optimizer, lr=0.1)
    x = module_inputs(6, 1)
    before = m.weight.detach().clone()
    out = m(x)
    out.pow(2).sum().backward()
    assert m.weight.grad is None
    assert not torch.equal(m.weight.detach(), before)
    if optimizer == "rowwise_adagrad":
        assert m.momentum.gt(0).any()


def module_inputs_on(B, seed, device):
    return {k: (v.to(device), o.to(device)) for k, (v, o) in module_inputs(B, seed).items()}


def check_compile_matches_eager(device):
    """torch.compile(fullgraph=True) of UnifiedEmbedding: same output and weight gradient as eager."""
    torch._dynamo.reset()
    m = embkern.UnifiedEmbedding(500, 8, {"user": 1, "item": 2, "ctx": 1}, seed=1, device=device)
    x = module_inputs_on(4, 2, device)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)
    compiled(x).sum().backward()
    g = m.weight.grad.clone()
    m.weight.grad = None
    m(x).sum().backward()
    torch.testing.assert_close(g, m.weight.grad)


def check_fused_compile_matches_eager(device):
    """torch.compile(fullgraph=True) of UnifiedEmbedding with fused SGD: the same updates as eager."""
    torch._dynamo.reset()
    kw = dict(optimizer="sgd", lr=0.2, device=device)
    m = embkern.UnifiedEmbedding(500, 8, {"user": 1, "item": 2, "ctx": 1}, **kw)
    m_ref = embkern.UnifiedEmbedding(500, 8, {"user": 1, "item": 2, "ctx": 1}, **kw)
    m_ref.weight.data.copy_(m.weight.data)
    compiled = torch.compile(m, fullgraph=True)
    for step in range(2):
        x = module_inputs_on(4, 10 + step, device)
        compiled(x).square().sum().backward()
        m_ref(x).square().sum().backward()
    assert m.weight.grad is None
    torch.testing.assert_close(m.weight.detach(), m_ref.weight.detach())


def test_unified_embedding_torch_compile():
    check_compile_matches_eager("cpu")


FUSED_COMPILE = not embkern.embedding._FUSED_COMPILE_UNSUPPORTED


@pytest.mark.skipif(not FUSED_COMPILE, reason="fused optimizers under torch.compile need torch >= 2.12")
def test_unified_embedding_fused_torch_compile():
    check_fused_compile_matches_eager("cpu")


@pytest.mark.skipif(FUSED_COMPILE, reason="torch >= 2.12 compiles fused optimizers")
def test_unified_embedding_fused_torch_compile_clear_error_on_old_torch():
    torch._dynamo.reset()
    m = embkern.UnifiedEmbedding(500, 8, {"user": 1, "item": 2, "ctx": 1}, optimizer="sgd", lr=0.2)
    with pytest.raises(Exception, match=r"under torch.compile needs torch >= 2.12"):
        torch.compile(m, fullgraph=True)(module_inputs(4, 10))


def load_readme_example():
    """The CTR training example of docs/embedding.md (the python block after '<!-- ctr-example -->')."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "embedding.md").read_text()
    block = text.split("<!-- ctr-example -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    ns = {"__name__": "readme_example"}
    exec(compile(block, "docs/embedding.md", "exec"), ns)
    return ns


def test_readme_ctr_example_loss_falls():
    ns = load_readme_example()
    losses = ns["train"](steps=50, batch=256, num_rows=20_000, log_every=0)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first - 0.05, (first, last)
