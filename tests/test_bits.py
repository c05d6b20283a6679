"""bits family: pack_bits, unpack_bits, hamming_distance, hamming_topk against numpy, on every ISA path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import embkern
from reference import bits_ref

WIDTHS = [1, 2, 3, 7, 8, 9, 13, 16, 24, 31, 32, 33, 48, 64, 100, 128, 129]
DIMS = [1, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 100, 384, 1000]


def random_codes(rng, n, width):
    return rng.integers(0, 256, size=(n, width), dtype=np.uint8)


# ---- pack / unpack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", DIMS)
def test_pack_bits_matches_numpy(isa, dim):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((37, dim)).astype(np.float32)
    x[0, :] = 0.0  # exactly at the threshold: bit 0
    for threshold in (0.0, 0.3, -1.5):
        got = embkern.pack_bits(x, threshold)
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, bits_ref.pack_bits(x, threshold))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool])
def test_pack_bits_other_dtypes_compare_in_their_own_dtype(dtype):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((11, 45)) * 3).to(dtype)
    got = embkern.pack_bits(x, 0.5)
    want = np.packbits((x > 0.5).numpy(), axis=1)
    np.testing.assert_array_equal(got.numpy(), want)


def test_pack_bits_nan_is_zero_and_padding_is_zero(isa):
    x = torch.full((2, 10), float("nan"))
    x[1, :] = 1.0
    got = embkern.pack_bits(x)
    assert got.tolist() == [[0, 0], [255, 0b11000000]]


def test_pack_bits_one_row_and_empty(isa):
    x = np.array([1.0, -1.0, 2.0], dtype=np.float32)
    assert embkern.pack_bits(x).tolist() == [0b10100000]
    assert embkern.pack_bits(torch.zeros(0, 20)).shape == (0, 3)


def test_pack_bits_non_contiguous_input(isa):
    x = torch.randn(40, 30)[:, ::2]
    np.testing.assert_array_equal(embkern.pack_bits(x).numpy(), bits_ref.pack_bits(x.numpy()))


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 64, 65, 130])
def test_unpack_bits_inverts_pack_bits(dim):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((19, dim)).astype(np.float32)
    codes = embkern.pack_bits(x)
    bits = embkern.unpack_bits(codes, dim)
    assert bits.dtype == np.bool_
    np.testing.assert_array_equal(bits, x > 0)
    np.testing.assert_array_equal(bits, bits_ref.unpack_bits(codes, dim))


# ---- hamming_distance ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_hamming_distance_matches_numpy(isa, width):
    rng = np.random.default_rng(width)
    q, db = random_codes(rng, 21, width), random_codes(rng, 1037, width)  # 1037: not a multiple of 8 or 512
    got = embkern.hamming_distance(q, db)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, bits_ref.hamming_distance(q, db))


def test_hamming_distance_database_split_path(isa, threads):
    # Few queries and a large database: the op splits the database across threads.
    torch.set_num_threads(2)
    rng = np.random.default_rng(7)
    q, db = random_codes(rng, 3, 13), random_codes(rng, 20000, 13)
    np.testing.assert_array_equal(embkern.hamming_distance(q, db), bits_ref.hamming_distance(q, db))


def test_hamming_distance_one_query_is_1d(isa):
    rng = np.random.default_rng(3)
    q, db = random_codes(rng, 1, 32), random_codes(rng, 50, 32)
    got = embkern.hamming_distance(q[0], db)
    assert got.shape == (50,)
    np.testing.assert_array_equal(got, bits_ref.hamming_distance(q, db)[0])


# ---- hamming_topk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("k", [1, 10, 1037])
def test_hamming_topk_matches_numpy(isa, width, k):
    rng = np.random.default_rng(width * 100 + k)
    q, db = random_codes(rng, 17, width), random_codes(rng, 1037, width)
    d, i = embkern.hamming_topk(q, db, k)
    rd, ri = bits_ref.hamming_topk(q, db, k)
    assert d.dtype == np.int32 and i.dtype == np.int64
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


def test_hamming_topk_ties_go_to_lower_index(isa):
    rng = np.random.default_rng(5)
    base = random_codes(rng, 40, 9)
    db = np.repeat(base, 3, axis=0)  # every row three times
    rng.shuffle(db)
    q = random_codes(rng, 8, 9)
    for k in (1, 2, 3, 7, 120):
        d, i = embkern.hamming_topk(q, db, k)
        rd, ri = bits_ref.hamming_topk(q, db, k)
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(i, ri)
    same = np.zeros((600, 4), dtype=np.uint8)  # all distances equal
    d, i = embkern.hamming_topk(q[:, :4], same, 25)
    np.testing.assert_array_equal(i, np.tile(np.arange(25), (8, 1)))


def test_hamming_topk_one_row_database_and_one_query(isa):
    rng = np.random.default_rng(11)
    db = random_codes(rng, 1, 5)
    q = random_codes(rng, 4, 5)
    d, i = embkern.hamming_topk(q, db, 1)
    np.testing.assert_array_equal(d[:, 0], bits_ref.hamming_distance(q, db)[:, 0])
    np.testing.assert_array_equal(i, np.zeros((4, 1)))
    d1, i1 = embkern.hamming_topk(torch.from_numpy(q[0]), torch.from_numpy(db), 1)
    assert d1.shape == (1,) and i1.tolist() == [0]


def test_hamming_topk_no_queries(isa):
    d, i = embkern.hamming_topk(torch.zeros(0, 8, dtype=torch.uint8), torch.zeros(5, 8, dtype=torch.uint8), 3)
    assert d.shape == (0, 3) and i.shape == (0, 3)


def test_hamming_topk_database_split_and_thread_count_independence(isa, threads):
    rng = np.random.default_rng(13)
    q = random_codes(rng, 3, 32)
    db = random_codes(rng, 30000, 32)
    db[29999] = q[0]  # an exact match at the very end
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(embkern.hamming_topk(q, db, 50))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    rd, ri = bits_ref.hamming_topk(q, db, 50)
    np.testing.assert_array_equal(results[1][0], rd)
    np.testing.assert_array_equal(results[1][1], ri)
    assert results[1][1][0, 0] == 29999 and results[1][0][0, 0] == 0


def test_hamming_topk_permuting_the_database_permutes_indices(isa):
    rng = np.random.default_rng(17)
    q, db = random_codes(rng, 5, 16), random_codes(rng, 3000, 16)
    perm = rng.permutation(3000)
    d0, i0 = embkern.hamming_topk(q, db, 3000)
    d1, i1 = embkern.hamming_topk(q, db[perm], 3000)
    np.testing.assert_array_equal(d0, d1)
    # same multiset of rows per distance; with ties broken by index, compare as sets per distance
    for r in range(5):
        for dist in np.unique(d0[r]):
            assert set(i0[r][d0[r] == dist]) == set(perm[i1[r][d1[r] == dist]])


def test_isa_paths_agree_bitwise():
    from conftest import isa_paths

    rng = np.random.default_rng(19)
    q, db = random_codes(rng, 40, 45), random_codes(rng, 5000, 45)
    outs = []
    for level, disabled in isa_paths():
        embkern.set_isa(level, disabled)
        outs.append((embkern.hamming_topk(q, db, 20), embkern.hamming_distance(q, db)))
    embkern.set_isa(embkern.build_info()["best_isa"])
    for (d, i), full in outs[1:]:
        np.testing.assert_array_equal(d, outs[0][0][0])
        np.testing.assert_array_equal(i, outs[0][0][1])
        np.testing.assert_array_equal(full, outs[0][1])


# ---- errors ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    db = torch.zeros(10, 4, dtype=torch.uint8)
    q = torch.zeros(2, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"queries must have dtype torch.uint8, got torch.float32"):
        embkern.hamming_topk(q.float(), db, 1)
    with pytest.raises(TypeError, match=r"database must have dtype torch.uint8, got torch.int32"):
        embkern.hamming_distance(q, db.int())
    with pytest.raises(ValueError, match=r"database must be a 2-D tensor, got 1-D"):
        embkern.hamming_topk(q, db[0], 1)
    with pytest.raises(ValueError, match=r"same bytes per code, got 3 and 4"):
        embkern.hamming_topk(q[:, :3], db, 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 0"):
        embkern.hamming_topk(q, db, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\].*got 11"):
        embkern.hamming_topk(q, db, 11)
    with pytest.raises(ValueError, match=r"database must not be empty"):
        embkern.hamming_topk(q, db[:0], 1)
    with pytest.raises(ValueError, match=r"at least 1 byte per code"):
        embkern.hamming_distance(q[:, :0], db[:, :0])
    with pytest.raises(ValueError, match=r"dim=9 needs 2 bytes per code, but codes has 4"):
        embkern.unpack_bits(db, 9)
    with pytest.raises(ValueError, match=r"dim must be >= 0"):
        embkern.unpack_bits(db, -1)
    with pytest.raises(TypeError, match=r"x must be a real tensor"):
        embkern.pack_bits(torch.zeros(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor, got 3-D"):
        embkern.pack_bits(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match=r"queries must be a torch.Tensor or numpy.ndarray, got list"):
        embkern.hamming_topk([[1, 2]], db, 1)


def test_set_isa_rejects_unknown_values():
    with pytest.raises(ValueError, match="expected one of 'scalar', 'avx2', 'avx512', got 'sse'"):
        embkern.set_isa("sse")
    with pytest.raises(ValueError, match="got 'amx'"):
        embkern.set_isa("avx2", ["amx"])


# ---- torch integration -------------------------------------------------------------------------------


def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (5, 13), dtype=torch.uint8, generator=g)
    db = torch.randint(0, 256, (300, 13), dtype=torch.uint8, generator=g)
    return [
        (torch.ops.embkern.pack_bits.default, (torch.randn(6, 21, generator=g), 0.25)),
        (torch.ops.embkern.unpack_bits.default, (db, 100)),
        (torch.ops.embkern.hamming_distance.default, (q, db)),
        (torch.ops.embkern.hamming_topk.default, (q, db, 7)),
    ]


@pytest.mark.parametrize("op,args", _opcheck_samples(), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    q = torch.randint(0, 256, (4, 32), dtype=torch.uint8)
    db = torch.randint(0, 256, (100, 32), dtype=torch.uint8)

    @torch.compile(fullgraph=True, backend="eager")
    def search(x, db):
        codes = torch.ops.embkern.pack_bits(x, 0.0)
        return torch.ops.embkern.hamming_topk(codes, db, 5)

    x = torch.randn(4, 256)
    d, i = search(x, db)
    rd, ri = embkern.hamming_topk(embkern.pack_bits(x), db, 5)
    assert torch.equal(d, rd) and torch.equal(i, ri)
