"""GPU figures of DESIGN section 4 on one CUDA device (run on a lent GPU: scripts/gpu_session.sh).

P1 and P5 with the GPU targets of their issues, and P2, P3, P4, P6 (benchmarks/gpu_search.py), each
against torch on the same card, same process, same data, checked before timing. Every call is timed
between CUDA events (median of 20 after 3 warm-ups). Bandwidth figures count the bytes a kernel must
move (below) against a device-to-device copy measured in the same run (read + write bytes).

  P1 forward: the rows gathered (pairs * D * 4) + the output written.
  P1 backward (+ fused SGD): the output gradient read + each unique row read and written once; the
     sort's own traffic (pairs of 16 bytes, a few passes) is not counted.
  P5 SpMM: CSR arrays + one gathered row per non-zero + the output (bench_fastrp.spmm_bytes).

Not a bench_*.py: `make bench` (run_all.py) never picks it up on machines without a GPU. Usage:
  python benchmarks/gpu_bench.py            full sizes on CUDA -> benchmarks/results/gpu_bench.json
  python benchmarks/gpu_bench.py --device cpu --quick   a small run on the CPU, to try the script
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import embkern  # noqa: E402
from _harness import device_timeit, write  # noqa: E402
from bench_embedding import pre_hashed_rows, torch_composition  # noqa: E402
from bench_fastrp import WEIGHTS, spmm_bytes, torch_pipeline  # noqa: E402

OPS = torch.ops.embkern


def copy_bandwidth(dev: str, nbytes: int) -> float:
    """Read + write bytes per second of a large device-to-device copy: the bandwidth we compare to."""
    src = torch.ones(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    t = device_timeit(lambda: dst.copy_(src), warmup=3, repeat=20)
    return 2 * nbytes / t["median_s"] / 1e9


def gpu_busy(fn, reps: int = 5) -> tuple[float, list[tuple[str, float]]]:
    """Seconds per call the GPU spends in kernels and copies (torch.profiler), and the five largest
    kernels (name, seconds per call): the time left over in a call's median is host work
    (checks, synchronizations, launches)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    per = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us > 0:
            per.append((e.key[:60], us / reps / 1e6))
    per.sort(key=lambda kv: -kv[1])
    return sum(t for _, t in per), per[:5]


def result_row(dev: str, bw: float, notes: list, case: str, impl: str, t: dict, nbytes: int | None = None,
               fn=None) -> dict:
    """One result row: bytes per second against the copy bandwidth when nbytes is given, and on CUDA
    with fn the GPU-busy time per call (plus its largest kernels as a note)."""
    row = {"case": case, "impl": impl, **t}
    if nbytes:
        row["GB_per_s"] = nbytes / t["median_s"] / 1e9
        row["of_copy_bw"] = row["GB_per_s"] / bw
    if fn is not None and dev == "cuda":
        busy, top = gpu_busy(fn)
        row["gpu_busy_ms"] = busy * 1e3
        if nbytes:
            row["busy_of_copy_bw"] = nbytes / busy / 1e9 / bw
        notes.append(f"{impl}, {case}: GPU busy {busy * 1e6:.0f} us of {t['median_s'] * 1e6:.0f} us per call; "
                     "largest: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in top))
    return row


def host_profile(fn, reps: int = 5) -> str:
    """Where a call's host time goes (torch.profiler, host and device activities): the six largest
    host-side entries by self time per call, e.g. cudaStreamSynchronize or cudaLaunchKernel."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        sync()
    per = sorted(((e.key[:50], e.self_cpu_time_total / reps, e.count // reps) for e in prof.key_averages()
                  if e.self_cpu_time_total > 0), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {us:.0f} us x{n}" for k, us, n in per[:6])


def p1(dev: str, full: bool, bw: float) -> tuple[list[dict], list[str]]:
    M, D, B, Fn, ids, P = (2_000_000, 64, 4096, 16, 4, 2) if full else (200_000, 64, 512, 16, 4, 2)
    g = torch.Generator(device=dev).manual_seed(0)
    feats = {f"f{i}": P for i in range(Fn)}
    lay_cpu = embkern.probe_layout(feats, M)
    po, base, size, keys = (t.to(dev) for t in lay_cpu)
    G, N = Fn * P, Fn * B * ids
    values = torch.randint(0, 1 << 40, (N,), dtype=torch.int64, device=dev, generator=g)
    offsets = torch.arange(0, N + 1, ids, dtype=torch.int64, device=dev)
    weight = torch.randn(M, D, device=dev, generator=g) * 0.01
    lay = (values, offsets, po, base, size, keys)
    rows, notes = [], []
    out_bytes = B * G * D * 4
    fwd_bytes = N * P * D * 4 + out_bytes
    case_f = f"P1 forward, M={M} D={D} B={B} F={Fn} ids={ids} P={P}, concat"
    case_b = f"P1 backward + fused SGD (output gradient given), same sizes"
    case_t = f"P1 forward + backward + SGD step, same sizes"

    def add(case, impl, t, nbytes, fn=None):
        rows.append(result_row(dev, bw, notes, case, impl, t, nbytes, fn))

    hash_layout = (lay_cpu[3].tolist(), lay_cpu[1].tolist(), lay_cpu[2].tolist())
    pre_rows = pre_hashed_rows(values, B, ids, P, hash_layout)
    pre_offsets = torch.arange(0, G * B * ids + 1, ids, dtype=torch.int64, device=dev)[:-1]

    def pre_hashed(w, sparse=False):
        return F.embedding_bag(pre_rows, w, pre_offsets, mode="sum", sparse=sparse).view(G, B, D).transpose(0, 1).reshape(B, G * D)

    def composition(w):
        return torch_composition(w, values, offsets, B, ids, P, hash_layout)

    ours = OPS.mux_embedding_bag(weight, *lay, "sum", "concat", None, False)
    if not torch.allclose(ours, pre_hashed(weight), rtol=1e-5, atol=1e-6):
        notes.append("CHECK FAILED: P1 forward differs from F.embedding_bag on pre-hashed rows")
    if not torch.equal(ours.cpu(), OPS.mux_embedding_bag(weight.cpu(), *(t.cpu() for t in lay), "sum", "concat", None, False)):
        notes.append("CHECK FAILED: P1 forward on the GPU differs from the CPU op (bitwise)")
    fwd = lambda: OPS.mux_embedding_bag(weight, *lay, "sum", "concat", None, False)  # noqa: E731
    add(case_f, f"embkern mux_embedding_bag ({dev})", device_timeit(fwd), fwd_bytes, fwd)
    add(case_f, "F.embedding_bag, pre-hashed rows (all probes, one call)", device_timeit(lambda: pre_hashed(weight)),
        fwd_bytes, lambda: pre_hashed(weight))
    add(case_f, "torch composition (hash ops + F.embedding_bag per probe + cat)", device_timeit(lambda: composition(weight), repeat=10),
        fwd_bytes)

    lr = 0.01
    gout = torch.randn(B, G * D, device=dev, generator=g) * 1e-3
    U = int(OPS.mux_embedding_bag_backward_sparse(gout, weight, *lay, "sum", "concat", None)[0].numel())
    bwd_bytes = out_bytes + 2 * U * D * 4
    notes.append(f"P1: pairs = {N * P}, unique rows U = {U}; forward bytes {fwd_bytes / 1e6:.1f} MB, backward + SGD "
                 f"bytes {bwd_bytes / 1e6:.1f} MB, step bytes {(fwd_bytes + bwd_bytes) / 1e6:.1f} MB.")

    # fused SGD against torch's sparse SGD, one step from the same start
    w_a, w_b = weight.clone(), torch.nn.Parameter(weight.clone())
    OPS.mux_embedding_bag_sgd_(w_a, gout, *lay, "sum", "concat", None, lr)
    opt_b = torch.optim.SGD([w_b], lr=lr)
    pre_hashed(w_b, sparse=True).backward(gout)
    opt_b.step()
    if not torch.allclose(w_a, w_b.detach(), rtol=1e-5, atol=1e-7):
        notes.append("CHECK FAILED: P1 fused SGD differs from torch sparse SGD")

    w_ours = weight.clone()
    sgd = lambda: OPS.mux_embedding_bag_sgd_(w_ours, gout, *lay, "sum", "concat", None, lr)  # noqa: E731
    add(case_b, f"embkern mux_embedding_bag_sgd_ ({dev})", device_timeit(sgd), bwd_bytes, sgd)
    add(case_b, f"embkern mux_embedding_bag_backward_sparse ({dev}, coalesced rows + values)",
        device_timeit(lambda: OPS.mux_embedding_bag_backward_sparse(gout, weight, *lay, "sum", "concat", None)),
        bwd_bytes)
    w_sp = torch.nn.Parameter(weight.clone())
    opt = torch.optim.SGD([w_sp], lr=lr)

    def sparse_bwd_step():
        out = pre_hashed(w_sp, sparse=True)
        opt.zero_grad(set_to_none=True)
        out.backward(gout)
        opt.step()

    # the baseline's forward is inside the timed call; its forward time is the row above
    w_fused, no_state = torch.nn.Parameter(weight.clone()), torch.zeros(0, device=dev)
    add(case_t, f"embkern fused SGD (mux_embedding_bag_fused, autograd) ({dev})", device_timeit(
        lambda: OPS.mux_embedding_bag_fused(w_fused, no_state, *lay, "sum", "concat", None, "sgd", lr).backward(gout)),
        fwd_bytes + bwd_bytes)
    add(case_t, "F.embedding_bag(sparse=True) + torch.optim.SGD, pre-hashed rows", device_timeit(sparse_bwd_step),
        fwd_bytes + bwd_bytes)
    if dev == "cuda":
        fused_step = lambda: OPS.mux_embedding_bag_fused(  # noqa: E731
            w_fused, no_state, *lay, "sum", "concat", None, "sgd", lr).backward(gout)
        notes.append(f"P1 host time per call, mux_embedding_bag_sgd_: {host_profile(sgd)}")
        notes.append(f"P1 host time per call, fused step through autograd: {host_profile(fused_step)}")
    w_dense = torch.nn.Parameter(weight.clone())
    opt_d = torch.optim.SGD([w_dense], lr=lr)

    def dense_step():
        out = pre_hashed(w_dense)
        opt_d.zero_grad(set_to_none=True)
        out.backward(gout)
        opt_d.step()

    add(case_t, "F.embedding_bag (dense grad) + torch.optim.SGD, pre-hashed rows", device_timeit(dense_step, repeat=10),
        fwd_bytes + bwd_bytes)
    return rows, notes


def random_csr(n: int, m: int, dev: str) -> torch.Tensor:
    """n x n symmetric 0/1 CSR of m random undirected edges (self loops dropped, duplicates summed)."""
    g = torch.Generator(device=dev).manual_seed(0)
    u = torch.randint(0, n, (m,), device=dev, generator=g)
    v = torch.randint(0, n, (m,), device=dev, generator=g)
    keep = u != v
    u, v = u[keep], v[keep]
    idx = torch.stack([torch.cat([u, v]), torch.cat([v, u])])
    coo = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], device=dev), (n, n)).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return coo.to_sparse_csr()


def p5(dev: str, full: bool, bw: float) -> tuple[list[dict], list[str]]:
    n, m, dim = (1_000_000, 5_000_000, 128) if full else (20_000, 100_000, 128)
    a = random_csr(n, m, dev)
    ip, ix, w = a.crow_indices().long(), a.col_indices().long(), a.values().float()
    nnz = ix.numel()
    rows, notes = [], []
    case = f"P5 FastRP n={n} nnz={nnz} dim={dim} 3 iterations"
    case1 = f"P5 one SpMM iteration n={n} nnz={nnz} d={dim}"

    def add(case_, impl, t, nbytes=None, fn=None):
        rows.append(result_row(dev, bw, notes, case_, impl, t, nbytes, fn))

    deg = torch.zeros(n, device=dev).index_add_(0, torch.repeat_interleave(torch.arange(n, device=dev), ip.diff()), w)
    inv = torch.where(deg > 0, 1.0 / deg, torch.zeros_like(deg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a_n = torch.sparse_csr_tensor(ip, ix, w * inv.repeat_interleave(ip.diff()), size=(n, n))
    x0 = embkern.fastrp_projection(torch.arange(n, device=dev), dim, 3.0, 1)
    ref = torch.sparse.mm(a_n, x0)
    ours = embkern.csr_spmm(ip, ix, w, x0, inv)
    if not torch.allclose(ours, ref, rtol=1e-4, atol=1e-5):
        notes.append(f"CHECK FAILED: P5 csr_spmm differs from torch.sparse.mm (max abs {(ours - ref).abs().max():.3g})")
    for label, x, esize in (("float32", x0, 4), ("bf16 x", x0.bfloat16(), 2)):
        spmm = lambda x=x: embkern.csr_spmm(ip, ix, w, x, inv)  # noqa: E731
        add(case1, f"embkern csr_spmm {label} ({dev})", device_timeit(spmm), spmm_bytes(n, nnz, dim, esize, True, False),
            spmm)
    add(case1, "torch.sparse.mm (cuSPARSE CSR @ dense) float32", device_timeit(lambda: torch.sparse.mm(a_n, x0)),
        spmm_bytes(n, nnz, dim, 4, True, False), lambda: torch.sparse.mm(a_n, x0))

    adj = (ip, ix, w)
    e32 = embkern.fastrp(adj, dim, WEIGHTS, seed=1, s=3.0)
    ref_t = torch_pipeline(a_n, x0)
    if not torch.allclose(e32, ref_t, rtol=1e-3, atol=1e-3):
        notes.append("CHECK FAILED: P5 fastrp differs from the torch sparse pipeline")
    cpu = embkern.fastrp(tuple(t.cpu() for t in adj), dim, WEIGHTS, seed=1, s=3.0)
    err = (e32.cpu() - cpu).abs().max().item()
    notes.append(f"P5: fastrp on the GPU vs the CPU op, max abs difference {err:.3g} (fp32; norms reduce in another order).")
    for label, dtype in (("float32", torch.float32), ("bfloat16 storage", torch.bfloat16)):
        run = lambda dtype=dtype: embkern.fastrp(adj, dim, WEIGHTS, seed=1, dtype=dtype)  # noqa: E731
        add(case, f"embkern fastrp {label} ({dev})", device_timeit(run, repeat=10), fn=run)
    add(case, "torch sparse CSR @ dense pipeline float32 (cuSPARSE)", device_timeit(lambda: torch_pipeline(a_n, x0),
                                                                                     repeat=10))
    return rows, notes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (try the script anywhere)")
    ap.add_argument("only", nargs="*", help="p1 p5 search (default: all)")
    args = ap.parse_args()
    dev, full = args.device, not args.quick
    torch.manual_seed(0)
    bw = copy_bandwidth(dev, (2 << 30) if full else (64 << 20))
    rows, notes = [], [f"Device-to-device copy: {bw:.0f} GB/s (read + write bytes)."]
    parts = {"p1": lambda: p1(dev, full, bw), "p5": lambda: p5(dev, full, bw)}
    try:
        import gpu_search

        parts["search"] = lambda: gpu_search.rows(dev, full)
    except ImportError as e:
        notes.append(f"gpu_search unavailable: {e}")
    failed = 0
    for name, fn in parts.items():
        if args.only and name not in args.only:
            continue
        try:
            r, n = fn()
            rows += r
            notes += n
        except Exception:  # noqa: BLE001 (one workload failing must not lose the others' numbers)
            failed += 1
            notes.append(f"FAILED {name}: {traceback.format_exc(limit=4)}")
            traceback.print_exc()
        if dev == "cuda":
            torch.cuda.empty_cache()
    params = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else dev, "copy_GBps": bw}
    write("gpu_bench", full, params, rows, notes)
    return 1 if failed or any("CHECK FAILED" in n for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
