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
    Eb = E.bfloat16()
    rows, notes = [], []
    isa = embkern.get_isa()
    for b in (64, 1):
        C = torch.randn(b, r, generator=g)
        Cb = C.bfloat16()
        rep = 3 if b == 64 else 5
        for storage, Et in (("fp32", E), ("bf16", Eb)):
            case = f"B={b} N={n} r={r} top-{k} E {storage}"
            nbytes = Et.numel() * Et.element_size()
            v, i = embkern.score_topk(C, Et, k)
            tv, ti = torch.topk(C @ Et.float(), k)
            agree = (i == ti).float().mean().item()
            if not torch.allclose(v, tv, rtol=1e-4, atol=1e-3):
                raise AssertionError(f"{case}: embkern and torch disagree on top-k scores")
            t = timeit(lambda: embkern.score_topk(C, Et, k), repeat=rep)
            rows.append({"case": case, "impl": f"embkern score_topk ({isa})", **t,
                         "GB_per_s": nbytes / t["median_s"] / 1e9, "ids_equal_torch": agree})
            t = timeit(lambda: torch.topk(C @ E, k), repeat=rep)
            rows.append({"case": case, "impl": "torch fp32 matmul + topk", **t, "GB_per_s": E.numel() * 4 / t["median_s"] / 1e9})
            if storage == "bf16":
                t = timeit(lambda: torch.topk(Cb @ Eb, k), repeat=rep)
                rows.append({"case": case, "impl": "torch bf16 matmul + topk", **t, "GB_per_s": nbytes / t["median_s"] / 1e9})
    notes.append("Speedups are against the first embkern row of each case; the issue's targets compare with "
                 "`torch fp32 matmul + topk` (B=64: 2x fp32, 3.5x bf16; B=1: 1.5x fp32, 3x bf16). GB/s = bytes of E "
                 "read per call / time (E is read once per call by embkern whatever B is).")
    notes.append("\n".join(recall_vs_budget(full)))
    return str(write("bench_cur", full, {"N": n, "r": r, "k": k, "B": [64, 1], "threads": torch.get_num_threads()}, rows, notes))


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
