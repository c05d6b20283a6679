"""P6: CUR score + top-100 (N items, k_i = 256 anchor scores per query) at B = 64 and B = 1, E stored
as float32 and bfloat16, against torch matmul + torch.topk in the same process on the same data.
Also a recall-vs-budget table for ANNCUR and adaCUR on a synthetic low-rank + noise score matrix."""
from __future__ import annotations

import numpy as np
import torch

import embkern
from _harness import timeit, write


def _recall(found: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(t)) / len(t) for a, t in zip(found, true)]))


def recall_vs_budget(full: bool) -> list[str]:
    """Top-10 recall of ANNCUR (k_i anchors + k_rerank) and adaCUR (5 rounds) at equal CE budgets."""
    rng = np.random.default_rng(0)
    n, kq, nt, rank = (20000, 200, 200, 50) if full else (5000, 100, 100, 40)
    M = rng.standard_normal((kq + nt, rank)) @ rng.standard_normal((rank, n)) + 1.0 * rng.standard_normal((kq + nt, n))
    R, test = M[:kq], M[kq:]
    true = np.argsort(-test, axis=1)[:, :10]
    scores = torch.from_numpy(test.astype(np.float32))

    def ce(qs, ids):
        return scores[torch.as_tensor(qs).unsqueeze(1).expand_as(ids), ids]

    queries = np.arange(nt)
    budgets = [100, 200, 400] if not full else [100, 200, 400, 800]
    lines = [f"Top-10 recall on a synthetic rank-{rank} + noise matrix (k_q = {kq} anchor queries, N = {n}, "
             f"{nt} test queries; CE budget = CE calls per query; rcond = 0.05 for ANNCUR, adaCUR default rcond):", "",
             "| budget | ANNCUR k_i = budget/4 | ANNCUR k_i = budget/2 | adaCUR 5 rounds | random |",
             "|---|---|---|---|---|"]
    for b in budgets:
        cells = [str(b)]
        for ki in (b // 4, b // 2):
            anchors = rng.choice(n, size=ki, replace=False)
            index = embkern.CURIndex.build(R, anchors, rcond=0.05)
            res = embkern.anncur_search(index, ce, queries, k=10, k_rerank=b - ki)
            cells.append(f"{_recall(res.indices.numpy(), true):.3f}")
        res = embkern.adacur_search(R, ce, queries, k=10, budget=b, rounds=5, seed=0)
        cells.append(f"{_recall(res.indices.numpy(), true):.3f}")
        res = embkern.adacur_search(R, ce, queries, k=10, budget=b, rounds=1, seed=0)
        cells.append(f"{_recall(res.indices.numpy(), true):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(full: bool = False) -> str:
    n, r, k = (1_000_000, 256, 100) if full else (100_000, 256, 100)
    g = torch.Generator().manual_seed(0)
    E = torch.randn(r, n, generator=g)
    scale = E.abs().amax(0) / 127  # int8 storage: per-column scales
    storages = {"fp32": (E, None), "bf16": (E.bfloat16(), None),
                "int8": ((E / scale).round().clamp(-127, 127).to(torch.int8), scale)}
    rows, notes = [], []
    isa = embkern.get_isa()
    vnni = isa == "avx512" and "vnni" in embkern.build_info()["cpu_features"]
    read = timeit(lambda: E.sum(), repeat=5)
    read_gbs = E.numel() * 4 / read["min_s"] / 1e9
    torch_ms = {}
    for b in (64, 1):
        C = torch.randn(b, r, generator=g)
        rep = 3 if b == 64 else 5
        for storage, (Et, sc) in storages.items():
            case = f"B={b} N={n} r={r} top-{k} E {storage}"
            nbytes = Et.numel() * Et.element_size()
            E_as_f32 = Et.float() * sc if sc is not None else Et.float()
            v, i = embkern.score_topk(C, Et, k, scales=sc)
            tv, ti = torch.topk(C @ E_as_f32, k)
            agree = (i == ti).float().mean().item()
            if not torch.allclose(v, tv, rtol=1e-4, atol=1e-3):
                raise AssertionError(f"{case}: embkern and torch disagree on top-k scores")
            t = timeit(lambda: embkern.score_topk(C, Et, k, scales=sc), repeat=rep)
            rows.append({"case": case, "impl": f"embkern score_topk ({isa}{'+vnni' if vnni and b > 4 else ''})", **t,
                         "GB_per_s": nbytes / t["median_s"] / 1e9, "ids_equal_torch": agree})
            if b > 4 and vnni:
                embkern.set_isa("avx512", disable=["vnni"])
                try:
                    t = timeit(lambda: embkern.score_topk(C, Et, k, scales=sc), repeat=rep)
                finally:
                    embkern.set_isa(isa)
                rows.append({"case": case, "impl": "embkern score_topk (avx512 FMA path, VNNI pre-filter off)", **t,
                             "GB_per_s": nbytes / t["median_s"] / 1e9})
            t = timeit(lambda: torch.topk(C @ E, k), repeat=rep)
            torch_ms[(b, storage)] = t["median_s"] * 1e3
            rows.append({"case": case, "impl": "torch fp32 matmul + topk", **t, "GB_per_s": E.numel() * 4 / t["median_s"] / 1e9})
            if storage == "bf16":
                Cb = C.bfloat16()
                t = timeit(lambda: torch.topk(Cb @ Et, k), repeat=rep)
                rows.append({"case": case, "impl": "torch bf16 matmul + topk", **t, "GB_per_s": nbytes / t["median_s"] / 1e9})
            if storage == "int8":
                t = timeit(lambda: torch.topk(C @ (Et.float() * sc), k), repeat=rep)
                rows.append({"case": case, "impl": "torch dequantize + fp32 matmul + topk", **t,
                             "GB_per_s": nbytes / t["median_s"] / 1e9})
    notes.append("Speedups are against the first embkern row of each case; the issue's targets compare with "
                 "`torch fp32 matmul + topk` (B=64: 2x fp32, 3.5x bf16; B=1: 1.5x fp32, 3x bf16). GB/s = bytes of E "
                 "read per call / time (E is read once per call by embkern whatever B is). At B >= 5 with AVX-512 VNNI "
                 "the kernel filters columns with an 8-bit integer approximation and a proven error bound and rescores "
                 "the candidates exactly: the results are bitwise those of the FMA path (docs/cur.md).")
    # The best read rate seen: torch's sum of E, or our own B=1 fp32 stream if that was faster.
    ours_b1 = max(row["GB_per_s"] for row in rows if row["case"].startswith("B=1 ") and row["case"].endswith("fp32")
                  and row["impl"].startswith("embkern"))
    best_gbs = max(read_gbs, ours_b1)
    floor = {s: storages[s][0].numel() * storages[s][0].element_size() / (best_gbs * 1e9) * 1e3 for s in storages}
    notes.append(f"Read bandwidth here: torch sum of the fp32 E {read_gbs:.1f} GB/s, embkern's B=1 fp32 stream "
                 f"{ours_b1:.1f} GB/s ({torch.get_num_threads()} threads). At B=1 every implementation must read E "
                 f"once, so at {best_gbs:.1f} GB/s the best possible time is "
                 + ", ".join(f"{s} {floor[s]:.1f} ms (at most {torch_ms[(1, s)] / floor[s]:.2f}x torch fp32)" for s in storages)
                 + ".")
    notes.append("\n".join(recall_vs_budget(full)))
    return str(write("bench_cur", full, {"N": n, "r": r, "k": k, "B": [64, 1], "threads": torch.get_num_threads(),
                                         "read_GB_per_s": read_gbs}, rows, notes))


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
