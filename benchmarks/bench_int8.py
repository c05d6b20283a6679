"""P3: int8 top-10 by dot product over N vectors of D=384, Q queries, against torch fp32 matmul + topk,
faiss SQ8 (QT_8bit_direct_signed, inner product: exactly our integers), and usearch exact i8, all in
the same process on the same data and threads. Also the binary -> float and int8 -> float cascades
(SearchIndex), with their recall@k against exact float search.

The data are Gaussian vectors, L2-normalized, quantized with one absmax scale. faiss's SQ8
direct_signed decodes code - 128, so handing it our int8 values as floats gives it the very same
integer dot products: the benchmark checks its top-k scores equal ours before timing.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import embkern
from _harness import cpu_mhz, matmul_topk, timeit, write

try:
    import faiss
except ImportError:  # optional peer
    faiss = None
try:
    from usearch.index import MetricKind, search as usearch_search
except ImportError:  # optional peer
    usearch_search = None


def _cpu_seconds(fn) -> float:
    """Process CPU time of one call: on a shared, oversubscribed machine it shows what the cores
    did when they ran, which wall time does not."""
    c = time.process_time()
    fn()
    return time.process_time() - c


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def main(full: bool = False) -> str:
    n, q, dim, k = (1_000_000, 1000, 384, 10) if full else (100_000, 200, 384, 10)
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    x /= torch.linalg.vector_norm(x, dim=1, keepdim=True)
    qx = torch.randn(q, dim, generator=g)
    qx /= torch.linalg.vector_norm(qx, dim=1, keepdim=True)
    params = embkern.int8_calibrate(x[: min(n, 100_000)], "absmax")
    db8 = embkern.int8_quantize(x, params)
    q8 = embkern.int8_quantize(qx, params)
    rows, notes = [], []
    case = f"Q={q} N={n} D={dim} top-{k} dot"
    pairs = n * q

    def row(impl, t, cpu=None, **extra):
        r = {"case": case, "impl": impl, **t, "Gpairs_per_s": pairs / t["median_s"] / 1e9}
        if cpu is not None:
            r["cpu_s"] = cpu
        r.update(extra)
        rows.append(r)
        return r

    run = lambda: embkern.int8_topk(q8, db8, k)  # noqa: E731
    v_ours, i_ours = run()
    best = embkern.build_info()["best_isa"]
    ours = row(f"embkern int8_topk ({embkern.get_isa()}{'+vnni' if 'vnni' in embkern.build_info()['cpu_features'] else ''})",
               timeit(run, repeat=3), _cpu_seconds(run))
    for level, disabled, label in [("avx512", ("vnni",), "avx512bw, no VNNI"), ("avx2", (), "avx2")]:
        if (level == "avx512" and best != "avx512") or (level == "avx2" and best == "scalar"):
            continue
        embkern.set_isa(level, disabled)
        row(f"embkern int8_topk ({label})", timeit(run, warmup=0, repeat=1), _cpu_seconds(run))
    embkern.set_isa(best)

    # torch fp32 on the float vectors the codes came from (what users run without int8).
    t_run = lambda: matmul_topk(qx, x, k, chunk=128)  # noqa: E731
    _, i_exact = t_run()
    i_exact = i_exact.numpy()
    row("torch fp32 matmul+topk", timeit(t_run, warmup=0, repeat=1 if full else 3), _cpu_seconds(t_run))
    rows[0]["recall_vs_fp32"] = _recall(i_ours.numpy(), i_exact)

    if faiss is not None:
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
        dbf = db8.to(torch.float32).numpy()
        index.train(dbf[:1000])
        index.add(dbf)
        qf = q8.to(torch.float32).numpy()
        dv, _ = index.search(qf, k)
        if not np.array_equal(dv, v_ours.numpy()):
            raise AssertionError("faiss SQ8 direct_signed and embkern disagree on the top-k dot products")
        f_run = lambda: index.search(qf, k)  # noqa: E731
        row("faiss SQ8 direct_signed (IndexScalarQuantizer, IP)", timeit(f_run, warmup=0, repeat=1 if full else 3),
            _cpu_seconds(f_run))
        del dbf
    else:
        notes.append("faiss-cpu is not installed: its baseline was skipped.")

    if usearch_search is not None:
        dbn, qn = db8.numpy(), q8.numpy()
        keys = []

        def u_run():
            # usearch's exact search allocates a Q x N distance buffer (12 bytes a pair: 12 GB at P3),
            # so it gets 100 queries a call; the work is the same.
            keys.clear()
            for s in range(0, q, 100):
                keys.append(np.asarray(usearch_search(dbn, qn[s : s + 100], k, MetricKind.IP, exact=True,
                                                      threads=threads).keys).reshape(-1, k))

        row("usearch exact i8 (IP), 100 queries a call", timeit(u_run, warmup=0, repeat=1),
            recall_vs_fp32=_recall(np.concatenate(keys), i_exact))
    else:
        notes.append("usearch is not installed: its baseline was skipped.")

    # Cascades: first pass on codes, rescore k * r candidates against the stored float32 rows.
    for kind, r in (("binary", 10), ("int8", 4)):
        index = embkern.SearchIndex(dim, kind, params=params if kind == "int8" else None)
        index.add(x)
        c_run = lambda: index.search(qx, k, rescore=r)  # noqa: E731
        _, ci = c_run()
        row(f"embkern SearchIndex {kind} + rescore x{r} (float32 rows)", timeit(c_run, warmup=0, repeat=1 if full else 3),
            _cpu_seconds(c_run), recall_vs_fp32=_recall(ci.numpy(), i_exact))
        del index

    # How far from the VNNI bound: a core retires 2 VPDPBUSD zmm per cycle (ports 0 and 5 on
    # Sapphire Rapids / Ice Lake server), each 64 int8 multiply-adds.
    mhz = cpu_mhz()
    if mhz and "vnni" in embkern.build_info()["cpu_features"]:
        bound_macs = threads * mhz * 1e6 * 2 * 64
        t_bound = pairs * dim / bound_macs
        frac_wall = t_bound / ours["median_s"]
        frac_cpu = (pairs * dim / ours["cpu_s"]) / (mhz * 1e6 * 2 * 64)
        notes.append(
            f"VNNI bound at the reported {mhz:.0f} MHz (2 VPDPBUSD zmm per cycle per core, {threads} threads): "
            f"{t_bound:.3f} s for this size; embkern's wall time reaches {frac_wall:.0%} of it, and per CPU-second "
            f"({pairs * dim / ours['cpu_s'] / 1e9:.0f} G multiply-adds per core-second) {frac_cpu:.0%} "
            "(CPU time excludes the time the shared machine ran other work; turbo clocks can exceed the reported one)."
        )
    return str(write("bench_int8", full, {"N": n, "Q": q, "D": dim, "k": k, "threads": threads}, rows, notes))


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
