"""P1: multiplexed hashed embedding bags. M x D fp32 table, B bags per feature, F features with
`ids` ids per bag and 2 probes each, concat. Forward, and forward + backward + fused SGD, against
(same process, same data, same rows):
  - torch composition: hash v1 by tensor ops, then F.embedding_bag per probe, then cat;
  - F.embedding_bag on pre-hashed rows (all probes in one call: the hashing-is-free floor);
  - F.embedding_bag(sparse=True) + torch.optim.SGD (forward + backward + step, pre-hashed rows);
  - FBGEMM TBE CPU (fbgemm-gpu-cpu 1.8.0) with EXACT_SGD on pre-hashed rows, when importable.
Every implementation runs on two copies of the same table: an ordinary allocation (4 KB pages) and
embkern.huge_page_empty (2 MB transparent huge pages, what UnifiedEmbedding allocates by default).
Row bytes: forward reads pairs * D * 4 bytes (pairs = N * probes); forward + backward + SGD also
reads and writes each unique row once more (U * D * 4 * 2), and reads the output gradient."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import embkern
from _harness import timeit, write

OPS = torch.ops.embkern
MASK32 = 0xFFFFFFFF


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _i64(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


def _mix_t(x: torch.Tensor) -> torch.Tensor:
    x = x + _i64(0x9E3779B97F4A7C15)
    x = (x ^ _lsr(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _lsr(x, 27)) * _i64(0x94D049BB133111EB)
    return x ^ _lsr(x, 31)


def torch_hash_rows(values: torch.Tensor, key: int, base: int, size: int) -> torch.Tensor:
    """Hash version 1 by int64 tensor ops (wrapping arithmetic); size < 2^32."""
    h = _mix_t(_mix_t(values) ^ key)
    lo, hi = h & MASK32, _lsr(h, 32)
    return base + _lsr(hi * size + _lsr(lo * size, 32), 32)


def feature_probe_rows(values: torch.Tensor, B: int, ids: int, probes: int, layout: tuple) -> list:
    """Per feature f (B bags of `ids` values each) and probe g: (f's values, their hashed rows for g).
    layout: (keys, base, size) as Python lists, from embkern.probe_layout."""
    keys, base, size = layout
    out = []
    for f in range(len(keys) // probes):
        v = values[f * B * ids:(f + 1) * B * ids]
        out += [(f, torch_hash_rows(v, keys[g], base[g], size[g])) for g in range(f * probes, (f + 1) * probes)]
    return out


def pre_hashed_rows(values: torch.Tensor, B: int, ids: int, probes: int, layout: tuple) -> torch.Tensor:
    """Every (value, probe) row in (probe, batch) bag order: F.embedding_bag's input when hashing is free."""
    return torch.cat([rows for _, rows in feature_probe_rows(values, B, ids, probes, layout)])


def torch_composition(w: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, B: int, ids: int, probes: int,
                      layout: tuple) -> torch.Tensor:
    """The torch composition: hash version 1 by tensor ops, then F.embedding_bag per probe, then cat."""
    outs = []
    for f, rows in feature_probe_rows(values, B, ids, probes, layout):
        outs.append(F.embedding_bag(rows, w, offsets[f * B:(f + 1) * B] - offsets[f * B], mode="sum"))
    return torch.cat(outs, 1)


def main(full: bool = False) -> str:
    M, D, B, Fn, ids, P = (2_000_000, 64, 4096, 16, 4, 2) if full else (500_000, 64, 4096, 16, 4, 2)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    feats = {f"f{i}": P for i in range(Fn)}
    po, base, size, keys = embkern.probe_layout(feats, M)
    G = Fn * P
    N = Fn * B * ids
    values = torch.randint(0, 1 << 40, (N,), dtype=torch.int64)
    offsets = torch.arange(0, N + 1, ids, dtype=torch.int64)
    weight = torch.randn(M, D) * 0.01
    lay = (values, offsets, po, base, size, keys)
    rows_bytes = N * P * D * 4
    rows_out, notes = [], []

    def add(case, impl, t, nbytes):
        rows_out.append({"case": case, "impl": impl, **t, "GB_per_s_rows": nbytes / t["median_s"] / 1e9})

    # Pre-hashed rows, (probe, batch) bag order, checked against ours.
    hash_layout = (keys.tolist(), base.tolist(), size.tolist())
    pre_rows = pre_hashed_rows(values, B, ids, P, hash_layout)
    pre_offsets = torch.arange(0, G * B * ids + 1, ids, dtype=torch.int64)[:-1]
    ours = OPS.mux_embedding_bag(weight, *lay, "sum", "concat", None, False)
    theirs = F.embedding_bag(pre_rows, weight, pre_offsets, mode="sum").view(G, B, D).transpose(0, 1).reshape(B, G * D)
    if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
        raise AssertionError("embkern and the pre-hashed F.embedding_bag disagree")
    first = embkern.mux_hash(values[:8], "f0", 0, M)
    if not torch.equal(first, pre_rows[:8]):
        raise AssertionError("torch tensor-op hash differs from hash version 1")

    def composition(w):
        return torch_composition(w, values, offsets, B, ids, P, hash_layout)

    if not torch.allclose(composition(weight), ours, rtol=1e-5, atol=1e-6):
        raise AssertionError("torch composition disagrees with embkern")

    lr = 0.01
    gout = torch.randn(B, G * D) * 1e-3
    U = int(OPS.mux_embedding_bag_backward_sparse(gout, weight, *lay, "sum", "concat", None)[0].numel())
    train_bytes = rows_bytes + 2 * U * D * 4 + gout.numel() * 4
    empty = torch.zeros(0)

    # same update from both (one step from the same start)
    w_a, w_b = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(weight.clone())
    OPS.mux_embedding_bag_fused(w_a, empty, *lay, "sum", "concat", None, "sgd", lr).backward(gout)
    opt_b = torch.optim.SGD([w_b], lr=lr)
    F.embedding_bag(pre_rows, w_b, pre_offsets, mode="sum", sparse=True).view(G, B, D).transpose(0, 1).reshape(
        B, G * D).backward(gout)
    opt_b.step()
    if not torch.allclose(w_a, w_b, rtol=1e-5, atol=1e-7):
        raise AssertionError("fused SGD and torch sparse SGD disagree")

    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)
    except Exception as e:  # noqa: BLE001 (optional peer: any import failure skips it)
        notes.append(f"FBGEMM TBE CPU skipped: {type(e).__name__}: {e}")
        SplitTableBatchedEmbeddingBagsCodegen = None
    tbe_offsets = torch.arange(0, G * B * ids + 1, ids, dtype=torch.int64)

    # Every implementation runs on the same two tables (same values): an ordinary allocation (4 KB
    # pages) and embkern.huge_page_empty (2 MB transparent huge pages, UnifiedEmbedding's default).
    weight_hp = embkern.huge_page_empty((M, D)).copy_(weight)
    tables = [("4 KB pages", weight, lambda w: w.clone()),
              ("2 MB huge pages", weight_hp, lambda w: embkern.huge_page_empty(w.shape).copy_(w))]
    steps = {}
    for tag, w_tab, clone in tables:
        case_f = f"forward, {tag}, M={M} D={D} B={B} F={Fn} ids={ids} P={P}"
        case_t = f"fwd+bwd+SGD, {tag}, M={M} D={D} B={B} F={Fn} ids={ids} P={P}"
        add(case_f, f"embkern ({embkern.get_isa()})",
            timeit(lambda: OPS.mux_embedding_bag(w_tab, *lay, "sum", "concat", None, False), repeat=10), rows_bytes)
        best = embkern.build_info()["best_isa"]
        if best == "avx512":
            embkern.set_isa("avx2")
            add(case_f, "embkern (avx2)",
                timeit(lambda: OPS.mux_embedding_bag(w_tab, *lay, "sum", "concat", None, False), repeat=5),
                rows_bytes)
            embkern.set_isa(best)
        add(case_f, "F.embedding_bag, pre-hashed rows (all probes, one call)",
            timeit(lambda: F.embedding_bag(pre_rows, w_tab, pre_offsets, mode="sum"), repeat=10), rows_bytes)
        add(case_f, "torch composition (hash ops + F.embedding_bag per probe + cat)",
            timeit(lambda: composition(w_tab), repeat=3), rows_bytes)

        w_ours = torch.nn.Parameter(clone(w_tab))

        def ours_step(w_ours=w_ours):
            out = OPS.mux_embedding_bag_fused(w_ours, empty, *lay, "sum", "concat", None, "sgd", lr)
            out.backward(gout)

        add(case_t, f"embkern fused SGD ({embkern.get_isa()})", timeit(ours_step, repeat=10), train_bytes)

        w_sp = torch.nn.Parameter(clone(w_tab))
        opt = torch.optim.SGD([w_sp], lr=lr)

        def sparse_step(w_sp=w_sp, opt=opt):
            opt.zero_grad(set_to_none=True)
            out = F.embedding_bag(pre_rows, w_sp, pre_offsets, mode="sum", sparse=True)
            out.view(G, B, D).transpose(0, 1).reshape(B, G * D).backward(gout)
            opt.step()

        add(case_t, "F.embedding_bag(sparse=True) + torch.optim.SGD, pre-hashed rows", timeit(sparse_step, repeat=3),
            train_bytes)
        tbe_step = None
        if SplitTableBatchedEmbeddingBagsCodegen is not None:
            tbe = SplitTableBatchedEmbeddingBagsCodegen(
                embedding_specs=[(M, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                feature_table_map=[0] * G, optimizer=EmbOptimType.EXACT_SGD, learning_rate=lr,
                pooling_mode=PoolingMode.SUM)
            with torch.no_grad():
                if w_tab is weight_hp:  # TBE's flat host table, replaced by a huge-page copy
                    tbe.weights_host = torch.nn.Parameter(clone(w_tab).view(-1))
                else:
                    tbe.split_embedding_weights()[0].copy_(w_tab)
            out_tbe = tbe(pre_rows, tbe_offsets)  # [B, G*D]
            if not torch.allclose(out_tbe, ours, rtol=1e-5, atol=1e-6):
                raise AssertionError("FBGEMM TBE and embkern disagree")
            with torch.no_grad():
                add(case_f, "FBGEMM TBE CPU 1.8.0 (pre-hashed rows)",
                    timeit(lambda: tbe(pre_rows, tbe_offsets), repeat=5), rows_bytes)

            def tbe_step(tbe=tbe):
                tbe(pre_rows, tbe_offsets).backward(gout)

            add(case_t, "FBGEMM TBE CPU 1.8.0 EXACT_SGD (pre-hashed rows)", timeit(tbe_step, repeat=3), train_bytes)
        steps[tag] = (w_tab, ours_step, sparse_step, tbe_step)

    # One thread: steadier ratios on a shared machine (each row's case says so).
    torch.set_num_threads(1)
    try:
        for tag, (w_tab, ours_step, sparse_step, tbe_step) in steps.items():
            case_1 = f"forward, 1 thread, {tag}, M={M} D={D} B={B} F={Fn} ids={ids} P={P}"
            add(case_1, f"embkern ({embkern.get_isa()})",
                timeit(lambda: OPS.mux_embedding_bag(w_tab, *lay, "sum", "concat", None, False), repeat=5),
                rows_bytes)
            add(case_1, "F.embedding_bag, pre-hashed rows (all probes, one call)",
                timeit(lambda: F.embedding_bag(pre_rows, w_tab, pre_offsets, mode="sum"), repeat=5), rows_bytes)
            case_1t = f"fwd+bwd+SGD, 1 thread, {tag}, M={M} D={D} B={B} F={Fn} ids={ids} P={P}"
            add(case_1t, f"embkern fused SGD ({embkern.get_isa()})", timeit(ours_step, repeat=5), train_bytes)
            add(case_1t, "F.embedding_bag(sparse=True) + torch.optim.SGD, pre-hashed rows",
                timeit(sparse_step, repeat=3), train_bytes)
            if tbe_step is not None:
                add(case_1t, "FBGEMM TBE CPU 1.8.0 EXACT_SGD (pre-hashed rows)", timeit(tbe_step, repeat=3),
                    train_bytes)
    finally:
        torch.set_num_threads(threads)

    notes.append("embkern serves its >= 1 MiB outputs and temporaries from a cache of freed blocks "
                 "(EMBKERN_BUFFER_CACHE_MB), so repeated calls do not page-fault a fresh 32 MB output; "
                 "F.embedding_bag and FBGEMM allocate theirs through the ordinary allocator on every call.")
    notes.append(f"pairs (value, probe) = {N * P}, unique rows touched U = {U}; forward row bytes = "
                 f"{rows_bytes / 1e6:.1f} MB, training step bytes = {train_bytes / 1e6:.1f} MB.")
    params = {"M": M, "D": D, "B": B, "F": Fn, "ids_per_bag": ids, "probes": P, "threads": threads, "U": U}
    return str(write("bench_embedding", full, params, rows_out, notes))


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
