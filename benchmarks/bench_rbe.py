"""P4: SDC top-10 over N codes of 256 dims x 2 bits (64 bytes), Q queries, against embkern's Hamming
top-k on the same bytes and torch decode + matmul + topk (same process, same threads, same data).
The torch path's top scores must equal ours (exact integer scores); checked before timing."""
from __future__ import annotations

import numpy as np
import torch

import embkern
from _harness import cpu_mhz, matmul_topk, timeit, write

DIM, BITS, K = 256, 2, 10


def _torch_topk(qs: torch.Tensor, db: torch.Tensor, k: int, decode_db: bool, chunk: int = 64):
    """Decode (levels -> float32 values) + matmul + topk, in query chunks so the score matrix stays small."""
    dbf = embkern.sdc_decode(db, DIM, BITS) if decode_db else db
    qf = embkern.sdc_decode(qs, DIM, BITS)
    return matmul_topk(qf, dbf, k, chunk)


def main(full: bool = False) -> str:
    n, q = (1_000_000, 1000) if full else (200_000, 200)
    rng = np.random.default_rng(0)
    cb = DIM * BITS // 8
    db = torch.from_numpy(rng.integers(0, 256, (n, cb), dtype=np.uint8))
    qs = torch.from_numpy(rng.integers(0, 256, (q, cb), dtype=np.uint8))
    threads = torch.get_num_threads()
    rows, notes = [], []
    case = f"Q={q} N={n} {DIM}d x {BITS}b top-{K}"
    case1 = f"Q=1 N={n} {DIM}d x {BITS}b top-{K}"
    best = embkern.build_info()["best_isa"]

    v_ours, _ = embkern.sdc_topk(qs, db, DIM, BITS, K)
    v_torch, _ = _torch_topk(qs, db, K, decode_db=True)
    if not torch.equal(v_ours, v_torch):
        raise AssertionError("torch decode+matmul+topk and embkern sdc_topk disagree on top-k scores")

    def pairs(t, nq=q):
        return n * nq / t["median_s"] / 1e9

    info = embkern.build_info()
    label = "VPERMB tables" if "vbmi" in info["cpu_features"] else "bit planes"
    t = timeit(lambda: embkern.sdc_topk(qs, db, DIM, BITS, K), repeat=5)
    rows.append({"case": case, "impl": f"embkern sdc_topk ({embkern.get_isa()}, {label})", **t, "Gpairs_per_s": pairs(t)})
    sdc_best = t["median_s"]
    # the other kernels at 2 bits: measured so the dispatch keeps the fastest
    variants = [("avx512", ("vbmi",), "avx512 VPOPCNTDQ bit planes", "vpopcntdq"),
                ("avx512", ("vbmi", "vpopcntdq"), "avx512 BW bit planes, VPSHUFB nibble popcount", None),
                ("avx2", (), "avx2 bit planes", None)]
    for level, disabled, label, needs in variants:
        if (level == "avx512" and best != "avx512") or (level == "avx2" and best == "scalar"):
            continue
        if needs and needs not in info["cpu_features"]:
            continue
        embkern.set_isa(level, tuple(d for d in disabled if d in info["cpu_features"]))
        t = timeit(lambda: embkern.sdc_topk(qs, db, DIM, BITS, K), repeat=3)
        rows.append({"case": case, "impl": f"embkern sdc_topk ({label})", **t, "Gpairs_per_s": pairs(t)})
    embkern.set_isa(best)

    t = timeit(lambda: embkern.hamming_topk(qs, db, K), repeat=5)
    rows.append({"case": case, "impl": f"embkern hamming_topk, same {cb} bytes ({embkern.get_isa()})", **t,
                 "Gpairs_per_s": pairs(t)})
    ham = t["median_s"]
    dbf = embkern.sdc_decode(db, DIM, BITS)
    t = timeit(lambda: _torch_topk(qs, dbf, K, decode_db=False), repeat=3)
    rows.append({"case": case, "impl": "torch matmul+topk (database decoded beforehand, fp32)", **t, "Gpairs_per_s": pairs(t)})
    del dbf
    t = timeit(lambda: _torch_topk(qs, db, K, decode_db=True), repeat=3)
    rows.append({"case": case, "impl": "torch decode+matmul+topk", **t, "Gpairs_per_s": pairs(t)})
    torch_full = t["median_s"]

    t = timeit(lambda: embkern.sdc_topk(qs[:1], db, DIM, BITS, K), repeat=10)
    rows.append({"case": case1, "impl": f"embkern sdc_topk ({embkern.get_isa()})", **t, "Gpairs_per_s": pairs(t, 1)})
    t = timeit(lambda: embkern.hamming_topk(qs[:1], db, K), repeat=10)
    rows.append({"case": case1, "impl": "embkern hamming_topk, same bytes", **t, "Gpairs_per_s": pairs(t, 1)})

    notes.append(f"SDC / Hamming time on the same bytes: {sdc_best / ham:.2f}x (target <= 1.5x); "
                 f"torch decode+matmul+topk / SDC: {torch_full / sdc_best:.1f}x (target >= 10x).")
    mhz = cpu_mhz()
    if mhz and "vbmi" in info["cpu_features"]:
        # VPERMB path: ceil(dim/3) lookups per pair, 64 rows per VPERMB, one VPERMB per cycle (port 5)
        bound = threads * mhz * 1e6 * 64 / ((DIM + 2) // 3)
        notes.append(f"Port-5 bound of the VPERMB kernel at the reported clock ({mhz:.0f} MHz): "
                     f"{bound / 1e9:.2f} G pairs/s on {threads} threads; sdc_topk reaches "
                     f"{rows[0]['Gpairs_per_s'] * 1e9 / bound:.0%} of it (bit planes: 2 VPOPCNTQ per pair, "
                     f"Hamming on the same bytes: 1).")
    return str(write("bench_rbe", full, {"N": n, "Q": q, "dim": DIM, "bits": BITS, "k": K, "threads": threads}, rows, notes))


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
