"""rbe family: level codes, SDC scores / top-k (every ISA path vs numpy), the binarizer's encode vs a
numpy reference of BEBR's recurrence, errors, opcheck and torch.compile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern
from reference import rbe_ref

BITS = [1, 2, 3, 4]
DIMS = [1, 3, 7, 63, 64, 65, 100, 129, 256, 257, 384, 600]


def random_levels(rng, n, dim, bits):
    return rng.integers(0, 2**bits, size=(n, dim), dtype=np.uint8)


# ---- layout and converters ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", [1, 2, 3, 7, 8, 9, 63, 64, 65, 100, 257])
def test_pack_unpack_levels_match_numpy(bits, dim):
    rng = np.random.default_rng(dim * 10 + bits)
    lv = random_levels(rng, 23, dim, bits)
    codes = embkern.pack_levels(lv, bits)
    assert codes.dtype == np.uint8 and codes.shape == (23, (dim * bits + 7) // 8)
    np.testing.assert_array_equal(codes, rbe_ref.pack_levels(lv, bits))
    np.testing.assert_array_equal(embkern.unpack_levels(codes, dim, bits), lv)
    # the torch fallback used on other devices agrees with the C++ kernels
    from embkern.rbe import _pack_levels_torch, _unpack_levels_torch

    np.testing.assert_array_equal(_pack_levels_torch(torch.from_numpy(lv), bits).numpy(), codes)
    np.testing.assert_array_equal(_unpack_levels_torch(torch.from_numpy(codes), dim, bits).numpy(), lv)


def test_layout_is_dimension_major_msb_first():
    lv = np.array([[3, 0, 1, 2, 2]], dtype=np.uint8)  # 2 bits: 11 00 01 10 | 10 + padding
    assert embkern.pack_levels(lv, 2).tolist() == [[0b11000110, 0b10000000]]
    lv4 = np.array([[0xA, 0x5, 0xF]], dtype=np.uint8)
    assert embkern.pack_levels(lv4, 4).tolist() == [[0xA5, 0xF0]]
    lv3 = np.array([[5, 2, 7]], dtype=np.uint8)  # 101 010 111 -> 10101011 1(0000000)
    assert embkern.pack_levels(lv3, 3).tolist() == [[0b10101011, 0b10000000]]


def test_one_bit_codes_are_pack_bits():
    x = np.random.default_rng(0).standard_normal((9, 45)).astype(np.float32)
    np.testing.assert_array_equal(embkern.pack_levels((x > 0).astype(np.uint8), 1), embkern.pack_bits(x))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", [1, 9, 64, 70])
def test_levels_planes_round_trip(bits, dim):
    rng = np.random.default_rng(bits + dim)
    lv = random_levels(rng, 11, dim, bits)
    codes = embkern.pack_levels(lv, bits)
    planes = embkern.levels_to_planes(codes, dim, bits)
    assert planes.shape == (11, bits, (dim + 7) // 8)
    np.testing.assert_array_equal(planes, rbe_ref.levels_to_planes(lv, bits))
    np.testing.assert_array_equal(embkern.planes_to_levels(planes, dim), codes)
    np.testing.assert_array_equal(embkern.sdc_decode(codes, dim, bits), rbe_ref.decode(lv, bits).astype(np.float32))


# ---- sdc_scores / sdc_topk -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", DIMS)
def test_sdc_scores_match_numpy(isa, bits, dim):
    rng = np.random.default_rng(dim * 7 + bits)
    lq, ld = random_levels(rng, 9, dim, bits), random_levels(rng, 1037, dim, bits)  # 1037: not a multiple of 8 or 512
    q, db = embkern.pack_levels(lq, bits), embkern.pack_levels(ld, bits)
    got = embkern.sdc_scores(q, db, dim, bits)
    assert got.dtype == np.float32 and got.shape == (9, 1037)
    np.testing.assert_array_equal(got, rbe_ref.sdc_scores(lq, ld, bits))
    # equal to float64 decode + matmul: the integer part is exact
    f64 = rbe_ref.decode(lq, bits) @ rbe_ref.decode(ld, bits).T
    np.testing.assert_array_equal(got.astype(np.float64) * 4 ** (bits - 1), f64 * 4 ** (bits - 1))
    inv = rng.uniform(0.01, 2.0, size=1037).astype(np.float32)
    np.testing.assert_array_equal(embkern.sdc_scores(q, db, dim, bits, inv), rbe_ref.sdc_scores(lq, ld, bits, inv))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", [1, 5, 64, 100, 256, 257])
@pytest.mark.parametrize("k", [1, 10, 1037])
def test_sdc_topk_matches_numpy(isa, bits, dim, k):
    rng = np.random.default_rng(dim * 100 + bits * 10 + k)
    lq, ld = random_levels(rng, 7, dim, bits), random_levels(rng, 1037, dim, bits)
    q, db = embkern.pack_levels(lq, bits), embkern.pack_levels(ld, bits)
    for inv in (None, rng.uniform(0.5, 1.5, size=1037).astype(np.float32)):
        v, i = embkern.sdc_topk(q, db, dim, bits, k, inv)
        rv, ri = rbe_ref.topk(rbe_ref.sdc_scores(lq, ld, bits, inv), k)
        assert v.dtype == np.float32 and i.dtype == np.int64
        np.testing.assert_array_equal(v, rv)
        np.testing.assert_array_equal(i, ri)


def test_sdc_topk_ties_and_duplicates_go_to_lower_index(isa):
    rng = np.random.default_rng(5)
    ld = np.repeat(random_levels(rng, 40, 17, 2), 3, axis=0)
    rng.shuffle(ld)
    lq = random_levels(rng, 6, 17, 2)
    q, db = embkern.pack_levels(lq, 2), embkern.pack_levels(ld, 2)
    for k in (1, 2, 3, 7, 120):
        v, i = embkern.sdc_topk(q, db, 17, 2, k)
        rv, ri = rbe_ref.topk(rbe_ref.sdc_scores(lq, ld, 2), k)
        np.testing.assert_array_equal(v, rv)
        np.testing.assert_array_equal(i, ri)
    same = np.zeros((600, embkern.pack_levels(lq, 2).shape[1]), dtype=np.uint8)  # every score equal
    _, i = embkern.sdc_topk(q, same, 17, 2, 25)
    np.testing.assert_array_equal(i, np.tile(np.arange(25), (6, 1)))


def test_sdc_topk_database_split_and_thread_count_independence(isa, threads):
    rng = np.random.default_rng(13)
    lq, ld = random_levels(rng, 3, 70, 3), random_levels(rng, 30000, 70, 3)
    ld[29999] = 7  # all levels at the top: a strong match for most queries, at the very end
    q, db = embkern.pack_levels(lq, 3), embkern.pack_levels(ld, 3)
    inv = rng.uniform(0.5, 1.5, size=30000).astype(np.float32)
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append((embkern.sdc_topk(q, db, 70, 3, 50, inv), embkern.sdc_scores(q[:2], db, 70, 3)))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    rv, ri = rbe_ref.topk(rbe_ref.sdc_scores(lq, ld, 3, inv), 50)
    np.testing.assert_array_equal(results[1][0][0], rv)
    np.testing.assert_array_equal(results[1][0][1], ri)


def test_sdc_one_query_one_row_and_empty(isa):
    rng = np.random.default_rng(11)
    lq, ld = random_levels(rng, 1, 33, 2), random_levels(rng, 1, 33, 2)
    q, db = torch.from_numpy(embkern.pack_levels(lq, 2)), torch.from_numpy(embkern.pack_levels(ld, 2))
    v, i = embkern.sdc_topk(q[0], db, 33, 2, 1)
    assert v.shape == (1,) and i.tolist() == [0]
    assert v.item() == rbe_ref.sdc_scores(lq, ld, 2)[0, 0]
    assert embkern.sdc_scores(q[0], db, 33, 2).shape == (1,)
    v, i = embkern.sdc_topk(q[:0], db, 33, 2, 1)
    assert v.shape == (0, 1) and i.shape == (0, 1)
    assert embkern.sdc_scores(q, db[:0], 33, 2).shape == (1, 0)


def test_sdc_scores_match_cosine_of_decoded_codes():
    rng = np.random.default_rng(2)
    lq, ld = random_levels(rng, 4, 50, 3), random_levels(rng, 30, 50, 3)
    db = embkern.pack_levels(ld, 3)
    _, inv = torch.ops.embkern.rbe_pack_levels(torch.from_numpy(ld), 3)
    dec = rbe_ref.decode(ld, 3)
    np.testing.assert_allclose(inv.numpy(), 1 / np.linalg.norm(dec, axis=1), rtol=1e-6)
    got = embkern.sdc_scores(embkern.pack_levels(lq, 3), db, 50, 3, inv.numpy())
    np.testing.assert_allclose(got, rbe_ref.decode(lq, 3) @ (dec / np.linalg.norm(dec, axis=1, keepdims=True)).T, rtol=1e-5)


# ---- errors ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    q = torch.zeros(2, 4, dtype=torch.uint8)  # dim 16 x 2 bits
    db = torch.zeros(10, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 4\].*got 5"):
        embkern.sdc_scores(q, db, 16, 5)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 4\].*got 0"):
        embkern.sdc_topk(q, db, 16, 0, 1)
    with pytest.raises(ValueError, match=r"q_codes has 4 bytes per code, but dim=20 and bits=2 need .* = 5"):
        embkern.sdc_scores(q, db, 20, 2)
    with pytest.raises(ValueError, match=r"db_codes has 3 bytes per code, but dim=16 and bits=2 need .* = 4"):
        embkern.sdc_topk(q, db[:, :3], 16, 2, 1)
    with pytest.raises(ValueError, match=r"db_inv_norm must have one value per database row \(10\), got 9"):
        embkern.sdc_scores(q, db, 16, 2, torch.ones(9))
    with pytest.raises(TypeError, match=r"db_inv_norm must have dtype torch.float32, got torch.float64"):
        embkern.sdc_topk(q, db, 16, 2, 1, torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"db_inv_norm must be finite"):
        embkern.sdc_topk(q, db, 16, 2, 1, torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 11"):
        embkern.sdc_topk(q, db, 16, 2, 11)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 0"):
        embkern.sdc_topk(q, db, 16, 2, 0)
    with pytest.raises(ValueError, match=r"db_codes must not be empty"):
        embkern.sdc_topk(q, db[:0], 16, 2, 1)
    with pytest.raises(ValueError, match=r"dim must be in \[1, .*got 0"):
        embkern.sdc_scores(q[:, :0], db[:, :0], 0, 2)
    with pytest.raises(TypeError, match=r"q_codes must have dtype torch.uint8, got torch.int32"):
        embkern.sdc_scores(q.int(), db, 16, 2)
    with pytest.raises(ValueError, match=r"db_codes must be a 2-D tensor, got 1-D"):
        embkern.sdc_scores(q, db[0], 16, 2)
    with pytest.raises(ValueError, match=r"levels must be < 2\^bits = 4 for bits=2, got a level of 7"):
        embkern.pack_levels(np.full((2, 3), 7, dtype=np.uint8), 2)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 4\]"):
        embkern.pack_levels(np.zeros((2, 3), dtype=np.uint8), 5)
    with pytest.raises(ValueError, match=r"codes has 4 bytes per code, but dim=3 and bits=2 need"):
        embkern.unpack_levels(db, 3, 2)
    with pytest.raises(ValueError, match=r"x and h must have the same shape"):
        torch.ops.embkern.rbe_residual(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"levels must be given at step 1"):
        torch.ops.embkern.rbe_sign_step(torch.zeros(2, 3), None, 1)
    with pytest.raises(ValueError, match=r"loops must be in \[0, 3\]"):
        embkern.RecurrentBinarizer(8, 8, 4)
    with pytest.raises(ValueError, match=r"encode: x must be \[N, 8\], got \(2, 7\)"):
        embkern.RecurrentBinarizer(8, 8, 1).encode(torch.zeros(2, 7))


# ---- the binarizer -----------------------------------------------------------------------------------------


def _layers_as_numpy(m: torch.nn.Module) -> dict:
    if isinstance(m, torch.nn.Linear):
        return {"w": m.weight.detach().double().numpy(), "b": m.bias.detach().double().numpy()}
    lin1, bn, _, lin2 = m
    return {"w1": lin1.weight.detach().double().numpy(), "b1": lin1.bias.detach().double().numpy(),
            "mean": bn.running_mean.double().numpy(), "var": bn.running_var.double().numpy(),
            "gamma": bn.weight.detach().double().numpy(), "beta": bn.bias.detach().double().numpy(), "eps": bn.eps,
            "w2": lin2.weight.detach().double().numpy(), "b2": lin2.bias.detach().double().numpy()}


@pytest.mark.parametrize("loops", [0, 1, 2, 3])
@pytest.mark.parametrize("hidden", [0, 24])
def test_encode_matches_numpy_recurrence(loops, hidden):
    torch.manual_seed(loops * 10 + hidden)
    model = embkern.RecurrentBinarizer(40, 37, loops, hidden_dim=hidden)
    if hidden:  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(64, 40))
    x = torch.randn(500, 40)
    codes, inv = model.encode(x)
    assert model.training  # encode runs in eval mode and restores the mode
    bits = loops + 1
    assert codes.dtype == torch.uint8 and codes.shape == (500, (37 * bits + 7) // 8) and inv.dtype == torch.float32
    lv, rinv, margin = rbe_ref.encode(x.numpy(), _layers_as_numpy(model.encoder),
                                      [_layers_as_numpy(m) for m in model.decoders],
                                      [_layers_as_numpy(m) for m in model.residuals])
    clear = margin > 1e-6  # rows where no pre-activation is within 1e-6 of zero
    assert clear.sum() > 450
    got = embkern.unpack_levels(codes, 37, bits).numpy()
    np.testing.assert_array_equal(got[clear], lv[clear])
    np.testing.assert_allclose(inv.numpy()[clear], rinv[clear], rtol=1e-6)
    # forward (eval) gives the decoded codes of encode
    model.eval()
    with torch.no_grad():
        dec = model(x).numpy()
    np.testing.assert_array_equal(dec[clear], rbe_ref.decode(lv, bits)[clear].astype(np.float32))


def test_forward_straight_through_gradient():
    torch.manual_seed(3)
    model = embkern.RecurrentBinarizer(6, 5, 0)
    x = torch.randn(20, 6, requires_grad=True)
    model(x).sum().backward()
    pre = model.encoder(x).detach()
    want = ((pre.abs() <= 1).float()) @ model.encoder.weight.detach()
    torch.testing.assert_close(x.grad, want)
    model = embkern.RecurrentBinarizer(6, 5, 2, hidden_dim=4)
    y = model(torch.randn(8, 6))
    y.pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.encoder.weight.grad.abs().sum() > 0 and model.residuals[1][0].weight.grad.abs().sum() > 0


def test_encode_codes_feed_sdc():
    torch.manual_seed(0)
    model = embkern.RecurrentBinarizer(16, 24, 1)
    x = torch.randn(50, 16)
    codes, inv = model.encode(x)
    got = embkern.sdc_scores(codes[:3], codes, 24, 2, inv)
    dec = model.eval()(x).detach()
    want = dec[:3] @ (dec / dec.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- torch integration ------------------------------------------------------------------------------------


def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (5, 25), dtype=torch.uint8, generator=g)  # dim 100 x 2 bits
    db = torch.randint(0, 256, (300, 25), dtype=torch.uint8, generator=g)
    inv = torch.rand(300, generator=g) + 0.5
    lv = torch.randint(0, 8, (7, 30), dtype=torch.uint8, generator=g)
    return [
        (torch.ops.embkern.sdc_scores.default, (q, db, 100, 2, None)),
        (torch.ops.embkern.sdc_scores.default, (q, db, 100, 2, inv)),
        (torch.ops.embkern.sdc_topk.default, (q, db, 100, 2, 7, inv)),
        (torch.ops.embkern.rbe_residual.default, (torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g))),
        (torch.ops.embkern.rbe_sign_step.default, (torch.randn(6, 9, generator=g), None, 0)),
        (torch.ops.embkern.rbe_sign_step.default, (torch.randn(7, 30, generator=g), lv, 3)),
        (torch.ops.embkern.rbe_pack_levels.default, (lv, 3)),
        (torch.ops.embkern.rbe_unpack_levels.default, (q, 100, 2)),
    ]


@pytest.mark.parametrize("op,args", _opcheck_samples(), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    q = torch.randint(0, 256, (4, 64), dtype=torch.uint8)
    db = torch.randint(0, 256, (100, 64), dtype=torch.uint8)

    @torch.compile(fullgraph=True, backend="eager")
    def search(q, db):
        return torch.ops.embkern.sdc_topk(q, db, 256, 2, 5, None)

    v, i = search(q, db)
    rv, ri = embkern.sdc_topk(q, db, 256, 2, 5)
    assert torch.equal(v, rv) and torch.equal(i, ri)


def test_two_bit_bit_plane_and_vbmi_paths_agree():
    # bits = 2 takes the VPERMB path when the CPU has AVX512_VBMI; the `isa` fixture disables all
    # extensions or none, so the VPOPCNTDQ bit-plane path at 2 bits is exercised here.
    info = embkern.build_info()
    if info["best_isa"] != "avx512":
        pytest.skip("needs AVX-512")
    rng = np.random.default_rng(23)
    outs = []
    for dim in (1, 5, 191, 192, 256, 300, 700):
        lq, ld = random_levels(rng, 5, dim, 2), random_levels(rng, 1300, dim, 2)
        q, db = embkern.pack_levels(lq, 2), embkern.pack_levels(ld, 2)
        inv = rng.uniform(0.5, 1.5, 1300).astype(np.float32)
        want = rbe_ref.sdc_scores(lq, ld, 2, inv)
        rv, ri = rbe_ref.topk(want, 17)
        for disabled in ((), ("vbmi",), ("vbmi", "vpopcntdq"), ("vnni",)):
            embkern.set_isa("avx512", disabled)
            try:
                np.testing.assert_array_equal(embkern.sdc_scores(q, db, dim, 2, inv), want)
                v, i = embkern.sdc_topk(q, db, dim, 2, 17, inv)
                np.testing.assert_array_equal(v, rv)
                np.testing.assert_array_equal(i, ri)
                outs.append(disabled)
            finally:
                embkern.set_isa(info["best_isa"])
    assert len(outs) == 28


@pytest.mark.parametrize("nq", [1, 2, 4])
def test_two_bit_few_queries_path(isa, nq):
    # at 2 bits and <= 4 queries AVX-512 VNNI reads rows in place (no block repack)
    rng = np.random.default_rng(nq)
    for dim in (1, 63, 65, 256, 700):
        lq, ld = random_levels(rng, nq, dim, 2), random_levels(rng, 900, dim, 2)
        q, db = embkern.pack_levels(lq, 2), embkern.pack_levels(ld, 2)
        inv = rng.uniform(0.5, 1.5, 900).astype(np.float32)
        want = rbe_ref.sdc_scores(lq, ld, 2, inv)
        np.testing.assert_array_equal(embkern.sdc_scores(q, db, dim, 2, inv), want)
        rv, ri = rbe_ref.topk(want, 9)
        v, i = embkern.sdc_topk(q, db, dim, 2, 9, inv)
        np.testing.assert_array_equal(v, rv)
        np.testing.assert_array_equal(i, ri)
