"""bits family on CUDA: every op against the CPU op on the same data, bitwise, and deterministic run
to run. Skipped without a CUDA device or a CUDA build."""
from __future__ import annotations

import pytest
import torch

import embkern

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and embkern.build_info()["cuda"]), reason="needs a CUDA device and a CUDA build"
)

ops = torch.ops.embkern
WIDTHS = [1, 3, 8, 13, 32, 33, 100]


def random_codes(g: torch.Generator, n: int, width: int, mode: str = "random") -> torch.Tensor:
    """uint8 [n, width]. mode "random": uniform bytes; "lowentropy": bytes from {0, 0x0f, 0xff} (many
    equal distances); "dups": 7 distinct rows repeated (ties of every kind, including distance 0)."""
    if mode == "random":
        return torch.randint(0, 256, (n, width), dtype=torch.uint8, generator=g)
    if mode == "lowentropy":
        palette = torch.tensor([0, 0x0F, 0xFF], dtype=torch.uint8)
        return palette[torch.randint(0, 3, (n, width), generator=g)]
    assert mode == "dups"
    base = torch.randint(0, 256, (7, width), dtype=torch.uint8, generator=g)
    return base[torch.randint(0, 7, (n,), generator=g)]


def assert_topk_same(q: torch.Tensor, db: torch.Tensor, k: int) -> None:
    d_cpu, i_cpu = ops.hamming_topk(q, db, k)
    d_gpu, i_gpu = ops.hamming_topk(q.cuda(), db.cuda(), k)
    assert d_gpu.is_cuda and i_gpu.is_cuda
    assert d_gpu.dtype == torch.int32 and i_gpu.dtype == torch.int64
    assert d_gpu.shape == (q.shape[0], k) and i_gpu.shape == (q.shape[0], k)
    assert torch.equal(d_gpu.cpu(), d_cpu), "distances differ from the CPU op"
    assert torch.equal(i_gpu.cpu(), i_cpu), "indices differ from the CPU op"
    # deterministic run to run
    d2, i2 = ops.hamming_topk(q.cuda(), db.cuda(), k)
    assert torch.equal(d2, d_gpu) and torch.equal(i2, i_gpu)


# ---- pack / unpack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 31, 32, 33, 100, 257, 1000])
def test_pack_bits_f32_matches_cpu(dim):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(301, dim, generator=g)
    x[0] = 0.0  # exactly at the threshold: 0
    x[1, :: 3] = float("nan")  # NaN: 0
    x[2] = 0.3
    x[3, ::2] = float("inf")
    x[4, ::2] = float("-inf")
    for threshold in (0.0, 0.3, -1.5):
        cpu = ops.pack_bits(x, threshold)
        gpu = ops.pack_bits(x.cuda(), threshold)
        assert gpu.is_cuda and gpu.dtype == torch.uint8 and gpu.shape == (301, (dim + 7) // 8)
        assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool])
def test_pack_bits_other_dtypes_match_cpu(dtype):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(67, 45, generator=g, dtype=torch.float64) * 3).to(dtype)
    for threshold in (0.0, 0.5, 1.0):
        cpu = ops.pack_bits(x, threshold)
        gpu = ops.pack_bits(x.cuda(), threshold)
        assert torch.equal(gpu.cpu(), cpu)


def test_pack_bits_non_contiguous_and_empty():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 60, generator=g)[:, ::2]
    assert torch.equal(ops.pack_bits(x.cuda(), 0.1).cpu(), ops.pack_bits(x, 0.1))
    assert ops.pack_bits(torch.zeros(0, 20, device="cuda"), 0.0).shape == (0, 3)
    assert ops.pack_bits(torch.zeros(5, 0, device="cuda"), 0.0).shape == (5, 0)


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 64, 65, 130, 801])
def test_unpack_bits_matches_cpu(dim):
    g = torch.Generator().manual_seed(dim)
    codes = random_codes(g, 203, (dim + 7) // 8)
    cpu = ops.unpack_bits(codes, dim)
    gpu = ops.unpack_bits(codes.cuda(), dim)
    assert gpu.is_cuda and gpu.dtype == torch.bool and gpu.shape == (203, dim)
    assert torch.equal(gpu.cpu(), cpu)
    assert ops.unpack_bits(torch.zeros(0, (dim + 7) // 8, dtype=torch.uint8, device="cuda"), dim).shape == (0, dim)


# ---- hamming_distance --------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS + [600])
@pytest.mark.parametrize("nq,nb", [(1, 1), (1, 700), (5, 513), (37, 3000)])
def test_hamming_distance_matches_cpu(width, nq, nb):
    g = torch.Generator().manual_seed(width * 1000 + nq)
    q, db = random_codes(g, nq, width), random_codes(g, nb, width)
    cpu = ops.hamming_distance(q, db)
    gpu = ops.hamming_distance(q.cuda(), db.cuda())
    assert gpu.is_cuda and gpu.dtype == torch.int32 and gpu.shape == (nq, nb)
    assert torch.equal(gpu.cpu(), cpu)


def test_hamming_distance_unaligned_and_strided_inputs():
    # Rows whose base pointer is not 4-byte aligned although the width is a multiple of 4, and a
    # non-contiguous view: results equal the CPU op.
    g = torch.Generator().manual_seed(11)
    flat = torch.randint(0, 256, (1 + 300 * 16,), dtype=torch.uint8, generator=g).cuda()
    db = flat[1:].view(300, 16)
    assert db.is_contiguous() and db.data_ptr() % 4 != 0
    q = random_codes(g, 9, 16).cuda()
    assert torch.equal(ops.hamming_distance(q, db).cpu(), ops.hamming_distance(q.cpu(), db.cpu()))
    d, i = ops.hamming_topk(q, db, 10)
    dc, ic = ops.hamming_topk(q.cpu(), db.cpu(), 10)
    assert torch.equal(d.cpu(), dc) and torch.equal(i.cpu(), ic)
    wide = random_codes(g, 200, 40).cuda()[:, 3:36]  # 33 bytes, row stride 40
    q33 = random_codes(g, 9, 33).cuda()
    assert torch.equal(ops.hamming_distance(q33, wide).cpu(), ops.hamming_distance(q33.cpu(), wide.cpu()))
    d, i = ops.hamming_topk(q33, wide, 50)
    dc, ic = ops.hamming_topk(q33.cpu(), wide.cpu(), 50)
    assert torch.equal(d.cpu(), dc) and torch.equal(i.cpu(), ic)


# ---- hamming_topk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("mode", ["random", "lowentropy", "dups"])
@pytest.mark.parametrize("nq,nb", [(1, 1), (1, 5000), (3, 2000), (5, 513), (37, 3000)])
def test_hamming_topk_matches_cpu(width, mode, nq, nb):
    g = torch.Generator().manual_seed(width * 7919 + nq * 31 + nb)
    q, db = random_codes(g, nq, width, mode), random_codes(g, nb, width, mode)
    if nb > 10:
        db[nb // 2] = q[0]  # an exact match (distance 0) in the middle
        db[-1] = q[0]  # and its duplicate at the end: tie broken by the lower index
    for k in sorted({1, min(10, nb), nb}):
        assert_topk_same(q, db, k)


@pytest.mark.parametrize("width", [1, 4, 32, 100, 600])
def test_hamming_topk_large_database_and_k(width):
    # Several tiles per segment (few queries, many rows), k in the thousands, and k = N.
    g = torch.Generator().manual_seed(width)
    nb = 70_000 if width <= 32 else 9_000
    q, db = random_codes(g, 3, width, "lowentropy"), random_codes(g, nb, width, "lowentropy")
    for k in (1, 10, 1000, 4097, nb):
        assert_topk_same(q, db, k)
    q16 = random_codes(g, 20, width)
    assert_topk_same(q16, db, 100)


def test_hamming_topk_all_equal_rows():
    # Every row at the same distance: the answer is the first k indices in order.
    db = torch.full((10_000, 13), 0x5A, dtype=torch.uint8)
    q = torch.zeros(17, 13, dtype=torch.uint8)
    for k in (1, 10, 333, 10_000):
        assert_topk_same(q, db, k)
        d, i = ops.hamming_topk(q.cuda(), db.cuda(), k)
        assert torch.equal(i.cpu(), torch.arange(k).expand(17, k))
        assert bool((d == 4 * 13).all())


def test_hamming_topk_empty_queries_and_python_api():
    g = torch.Generator().manual_seed(4)
    db = random_codes(g, 100, 8).cuda()
    d, i = ops.hamming_topk(torch.zeros(0, 8, dtype=torch.uint8, device="cuda"), db, 5)
    assert d.shape == (0, 5) and i.shape == (0, 5) and d.is_cuda
    assert ops.hamming_distance(torch.zeros(0, 8, dtype=torch.uint8, device="cuda"), db).shape == (0, 100)
    q = random_codes(g, 4, 8).cuda()
    d, i = embkern.hamming_topk(q, db, 7)
    dc, ic = embkern.hamming_topk(q.cpu(), db.cpu(), 7)
    assert d.is_cuda and torch.equal(d.cpu(), dc) and torch.equal(i.cpu(), ic)
    d1, i1 = embkern.hamming_topk(q[0], db, 7)
    assert torch.equal(d1.cpu(), dc[0]) and torch.equal(i1.cpu(), ic[0])


def test_hamming_topk_argument_errors_on_cuda():
    g = torch.Generator().manual_seed(5)
    q, db = random_codes(g, 3, 8).cuda(), random_codes(g, 50, 8).cuda()
    with pytest.raises(ValueError, match="k must be in"):
        ops.hamming_topk(q, db, 51)
    with pytest.raises(ValueError, match="k must be in"):
        ops.hamming_topk(q, db, 0)
    with pytest.raises(ValueError, match="same bytes per code"):
        ops.hamming_topk(q, random_codes(g, 50, 9).cuda(), 1)


def test_mixed_devices_raise_value_error():
    g = torch.Generator().manual_seed(6)
    q, db = random_codes(g, 3, 8), random_codes(g, 50, 8)
    with pytest.raises(ValueError, match="same device"):
        ops.hamming_topk(q.cuda(), db, 5)
    with pytest.raises(ValueError, match="same device"):
        ops.hamming_topk(q, db.cuda(), 5)
    with pytest.raises(ValueError, match="same device"):
        ops.hamming_distance(q.cuda(), db)
    with pytest.raises(ValueError, match="same device"):
        ops.hamming_distance(q, db.cuda())


def test_hamming_topk_deterministic_across_runs_and_streams():
    g = torch.Generator().manual_seed(8)
    q, db = random_codes(g, 64, 32, "lowentropy").cuda(), random_codes(g, 50_000, 32, "lowentropy").cuda()
    d0, i0 = ops.hamming_topk(q, db, 100)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            d, i = ops.hamming_topk(q, db, 100)
            assert torch.equal(d, d0) and torch.equal(i, i0)
    torch.cuda.synchronize()
    dist = ops.hamming_distance(q, db)
    assert torch.equal(dist, ops.hamming_distance(q, db))


# ---- opcheck ------------------------------------------------------------------------------------------


def test_opcheck_cuda():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 37, generator=g).cuda()
    codes = random_codes(g, 12, 5).cuda()
    q, db = random_codes(g, 6, 13).cuda(), random_codes(g, 300, 13).cuda()
    torch.library.opcheck(ops.pack_bits.default, (x, 0.25))
    torch.library.opcheck(ops.pack_bits.default, (x.double(), 0.0))
    torch.library.opcheck(ops.unpack_bits.default, (codes, 37))
    torch.library.opcheck(ops.hamming_distance.default, (q, db))
    torch.library.opcheck(ops.hamming_topk.default, (q, db, 10))
    torch.library.opcheck(ops.hamming_topk.default, (q, db, 300))


def test_torch_compile_fullgraph_cuda():
    q = torch.randint(0, 256, (100, 32), dtype=torch.uint8, device="cuda")

    @torch.compile(fullgraph=True, backend="eager")
    def search(x, db):
        codes = torch.ops.embkern.pack_bits(x, 0.0)
        return torch.ops.embkern.hamming_topk(codes, db, 5)

    x = torch.randn(4, 256, device="cuda")
    d, i = search(x, q)
    rd, ri = embkern.hamming_topk(embkern.pack_bits(x), q, 5)
    assert torch.equal(d, rd) and torch.equal(i, ri)
