"""GPU search workloads P2, P3, P4, P6 (DESIGN section 4): embkern's kernels against plain torch on the
same device, in the same process, on the same data. Imported by gpu_bench.py: rows(device, full).

Every workload checks embkern's results before timing (scores against a torch path whose scores are
exact, ids where ties cannot reorder them, and the scores recomputed from the data at the returned ids).
A failed check or an exception becomes a note ("CHECK FAILED: ..." / "... failed: ...") and the run goes
on: one GPU run should give all the information it can. Data are generated on the device with torch.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable

import torch

import embkern
from _harness import device_timeit, matmul_topk

CHUNK = 256  # queries per torch matmul: bounds the score matrix to CHUNK x N (1 GB fp32 at N = 1M)
TIME_BUDGET_S = 1.0  # per timed implementation, so a slow path cannot blow the run's ~40 s budget


def _err(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{loc}"


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _attempt(notes: list[str], what: str, fn: Callable):
    """fn() or None, with the exception recorded, so the baselines still run when our op raises."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - we want every failure in the report
        notes.append(f"{what} failed: {_err(e)}")
        return None


def _time(rows, notes, device, case, impl, fn, db_bytes, nq, **extra) -> dict | None:
    """One row: median/min over device_timeit; repeats sized from one first call (also a warm-up).
    GB_per_s = bytes of the database representation this implementation scans once / median."""
    try:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - t0
        repeat = max(3, min(20, int(TIME_BUDGET_S / max(first, 1e-9))))
        t = device_timeit(fn, warmup=3 if first < 0.05 else 1, repeat=repeat)
    except Exception as e:  # noqa: BLE001
        notes.append(f"{case} / {impl}: timing failed: {_err(e)}")
        return None
    row = {"case": case, "impl": impl, **t, "GB_per_s": db_bytes / t["median_s"] / 1e9,
           "queries_per_s": nq / t["median_s"], **extra}
    rows.append(row)
    return row


def _check(notes, what, ours, ref, n_db: int, recompute: Callable, largest: bool, tol: float = 0.0) -> None:
    """ours, ref: (scores [Q, k], ids [Q, k]). tol = 0: scores must be equal and ids equal as sets among
    the entries strictly better than the k-th score (ties at the boundary may pick other ids); tol > 0:
    scores allclose (rtol = tol). Always: ids in range, distinct per query, and their scores recomputed
    from the data equal ours."""
    if ours is None or ref is None:
        notes.append(f"CHECK FAILED: {what}: no result to compare (see the failure above)")
        return
    v, i = ours[0].double().cpu(), ours[1].cpu()
    rv, ri = ref[0].double().cpu(), ref[1].cpu()
    fails = []
    if v.shape != rv.shape or i.shape != ri.shape:
        fails.append(f"shapes {tuple(v.shape)}/{tuple(i.shape)} vs reference {tuple(rv.shape)}")
    elif not ((i >= 0) & (i < n_db)).all():
        fails.append(f"{int(((i < 0) | (i >= n_db)).sum())} ids out of [0, {n_db})")
    else:
        close = v == rv if tol == 0 else torch.isclose(v, rv, rtol=tol, atol=tol * 10)
        if not close.all():
            q = int((~close).any(1).sum())
            fails.append(f"scores differ from the reference in {q} of {v.shape[0]} queries "
                         f"(max |diff| {float((v - rv).abs().max()):.4g})")
        elif tol == 0:
            inner = v > v[:, -1:] if largest else v < v[:, -1:]
            if not torch.equal(torch.where(inner, i, -1).sort(1).values, torch.where(inner, ri, -1).sort(1).values):
                fails.append("ids differ from the reference among the entries strictly better than the k-th")
        s = i.sort(1).values
        if (s[:, 1:] == s[:, :-1]).any():
            fails.append("repeated ids within a query")
        got = recompute(ours[1]).double().cpu()
        if not torch.allclose(got, v, rtol=tol, atol=tol * 10):
            fails.append(f"scores recomputed at the returned ids differ (max |diff| {float((got - v).abs().max()):.4g})")
    notes.append(f"CHECK FAILED: {what}: " + "; ".join(fails) if fails else f"check ok: {what}")


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float((found.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().mean())


def _gen(device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def _label(device: str) -> str:
    return "cuda" if torch.device(device).type == "cuda" else embkern.get_isa()


def _unpack_pm1(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bytes -> +-1 values, 8 per byte (the bit order inside a byte does not change Hamming distances)."""
    shifts = torch.arange(8, device=codes.device, dtype=torch.uint8)
    b = (codes.unsqueeze(-1) >> shifts) & 1
    return b.reshape(codes.shape[0], -1).to(dtype) * 2 - 1


def _p2(device, full, rows, notes):
    n, q, bits, k = (1_000_000, 1000, 256, 10) if full else (20_000, 100, 256, 10)
    g = _gen(device)
    db = torch.randint(0, 256, (n, bits // 8), dtype=torch.uint8, device=device, generator=g)
    qs = torch.randint(0, 256, (q, bits // 8), dtype=torch.uint8, device=device, generator=g)
    case = f"P2 Hamming top-{k}, N={n} x {bits} bits, Q={q}"
    # +-1 dot products are integers <= 256: exact in fp16 (and fp32); Hamming = (bits - dot) / 2.
    dt = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    dbf = _unpack_pm1(db, dt)
    run_torch = lambda: matmul_topk(_unpack_pm1(qs, dt), dbf, k, CHUNK)  # noqa: E731
    run_ours = lambda: embkern.hamming_topk(qs, db, k)  # noqa: E731
    ours = _attempt(notes, f"{case}: embkern hamming_topk", run_ours)
    tv, ti = run_torch()
    qf = _unpack_pm1(qs, torch.float32)
    ham = lambda ids: (bits - torch.einsum("qd,qkd->qk", qf, dbf[ids].float())) / 2  # noqa: E731
    _check(notes, f"P2 embkern hamming_topk vs torch {str(dt)[6:]} +-1 matmul+topk (exact distances)",
           None if ours is None else (ours[0].float(), ours[1]), ((bits - tv.float()) / 2, ti), n, ham, largest=False)
    _time(rows, notes, device, case, f"embkern hamming_topk ({_label(device)})", run_ours, db.numel(), q)
    _time(rows, notes, device, case, f"torch {str(dt)[6:]} +-1 matmul+topk (database unpacked beforehand)",
          run_torch, dbf.numel() * dbf.element_size(), q)


def _p3(device, full, rows, notes):
    n, q, dim, k = (1_000_000, 1000, 384, 10) if full else (20_000, 100, 384, 10)
    g = _gen(device)
    x = torch.randn(n, dim, device=device, generator=g)
    x /= torch.linalg.vector_norm(x, dim=1, keepdim=True)
    qx = torch.randn(q, dim, device=device, generator=g)
    qx /= torch.linalg.vector_norm(qx, dim=1, keepdim=True)
    params = embkern.int8_calibrate(x[:100_000], "absmax")  # one absmax scale, zero point 0 (as bench_int8)
    quant = lambda t: torch.round(t / params.scale).clamp(-128, 127).to(torch.int8)  # noqa: E731 - int8_quantize's rule
    db8, q8 = quant(x), quant(qx)
    same = _attempt(notes, "P3 embkern int8_quantize", lambda: torch.equal(embkern.int8_quantize(x[:4096], params), db8[:4096]))
    if same is not None:
        notes.append("check ok: P3 embkern int8_quantize equals torch round(x / scale)" if same else
                     "CHECK FAILED: P3 embkern int8_quantize differs from torch round(x / scale) (the search data use torch's)")
    case = f"P3 int8 top-{k} dot, N={n} x D={dim}, Q={q}"
    # int8 dot products as fp32 are exact (|partial sums| <= 384 * 128 * 128 < 2^24, TF32 off): same scores as ours.
    db8f, q8f = db8.float(), q8.float()
    xh, qxh = x.half(), qx.half()
    run_ours = lambda: embkern.int8_topk(q8, db8, k)  # noqa: E731
    run_i8f = lambda: matmul_topk(q8.float(), db8f, k, CHUNK)  # noqa: E731
    run_f32 = lambda: matmul_topk(qx, x, k, CHUNK)  # noqa: E731
    run_f16 = lambda: matmul_topk(qxh, xh, k, CHUNK)  # noqa: E731
    ours = _attempt(notes, f"{case}: embkern int8_topk", run_ours)
    dots = lambda ids: torch.einsum("qd,qkd->qk", q8f, db8f[ids])  # noqa: E731
    _check(notes, "P3 embkern int8_topk vs torch fp32 matmul+topk on the int8 values (exact dot products)",
           ours, run_i8f(), n, dots, largest=True)
    truth = run_f32()[1]
    rec = {"recall_vs_fp32": _recall(ours[1], truth)} if ours is not None else {}
    _time(rows, notes, device, case, f"embkern int8_topk ({_label(device)})", run_ours, db8.numel(), q, **rec)
    _time(rows, notes, device, case, "torch fp32 matmul+topk on the int8 values (dequantized, same scores)",
          run_i8f, db8f.numel() * 4, q)
    _time(rows, notes, device, case, "torch fp32 matmul+topk on the float vectors", run_f32, x.numel() * 4, q,
          recall_vs_fp32=1.0)
    _time(rows, notes, device, case, "torch fp16 matmul+topk on the float vectors", run_f16, xh.numel() * 2, q,
          recall_vs_fp32=_recall(run_f16()[1], truth))


def _p4(device, full, rows, notes):
    n, q, dim, bits, k = (1_000_000, 1000, 256, 2, 10) if full else (20_000, 100, 256, 2, 10)
    g = _gen(device)
    cb = dim * bits // 8
    db = torch.randint(0, 256, (n, cb), dtype=torch.uint8, device=device, generator=g)
    qs = torch.randint(0, 256, (q, cb), dtype=torch.uint8, device=device, generator=g)
    case = f"P4 SDC top-{k}, N={n} x {dim} dims x {bits} bits ({cb} bytes), Q={q}"
    # Decoded values are +-0.5, +-1.5: products and sums (multiples of 0.25, |s| <= 576) are exact in fp32.
    dbf = embkern.sdc_decode(db, dim, bits)  # plain torch on CUDA (python/embkern/rbe.py)
    dbh = dbf.half()
    qf = embkern.sdc_decode(qs, dim, bits)
    run_ours = lambda: embkern.sdc_topk(qs, db, dim, bits, k)  # noqa: E731
    run_ham = lambda: embkern.hamming_topk(qs, db, k)  # noqa: E731
    run_pre = lambda: matmul_topk(embkern.sdc_decode(qs, dim, bits), dbf, k, CHUNK)  # noqa: E731
    run_pre16 = lambda: matmul_topk(embkern.sdc_decode(qs, dim, bits).half(), dbh, k, CHUNK)  # noqa: E731
    run_full = lambda: matmul_topk(embkern.sdc_decode(qs, dim, bits), embkern.sdc_decode(db, dim, bits), k, CHUNK)  # noqa: E731
    ours = _attempt(notes, f"{case}: embkern sdc_topk", run_ours)
    sdc = lambda ids: torch.einsum("qd,qkd->qk", qf, dbf[ids])  # noqa: E731
    _check(notes, "P4 embkern sdc_topk vs torch decode+matmul+topk (exact scores)", ours, run_pre(), n, sdc, largest=True)
    _time(rows, notes, device, case, f"embkern sdc_topk ({_label(device)})", run_ours, db.numel(), q)
    _time(rows, notes, device, case, f"embkern hamming_topk, same {cb} bytes", run_ham, db.numel(), q)
    _time(rows, notes, device, case, "torch fp32 matmul+topk (database decoded beforehand)", run_pre, dbf.numel() * 4, q)
    _time(rows, notes, device, case, "torch fp16 matmul+topk (database decoded beforehand)", run_pre16, dbh.numel() * 2, q)
    _time(rows, notes, device, case, "torch decode+matmul+topk (fp32)", run_full, db.numel(), q)


def _p6(device, full, rows, notes):
    n, r, k = (1_000_000, 256, 100) if full else (20_000, 256, 100)
    g = _gen(device)
    E = torch.randn(r, n, device=device, generator=g)
    scale = E.abs().amax(0) / 127  # int8 storage: per-column scales (as bench_cur)
    storages = {"fp32": (E, None), "bf16": (E.bfloat16(), None),
                "int8": ((E / scale).round().clamp(-127, 127).to(torch.int8), scale)}
    for b in (64, 1):
        C = torch.randn(b, r, device=device, generator=g)
        for storage, (Et, sc) in storages.items():
            case = f"P6 CUR score+top-{k}, N={n}, k_i={r}, B={b}, E {storage}"
            nbytes = Et.numel() * Et.element_size() + (sc.numel() * 4 if sc is not None else 0)
            Ef = Et.float() * sc if sc is not None else Et.float()
            run_ours = lambda: embkern.score_topk(C, Et, k, scales=sc)  # noqa: E731
            ours = _attempt(notes, f"{case}: embkern score_topk", run_ours)
            ref = torch.topk(C @ Ef, k)
            # float scores: ours is one FMA chain over r, cuBLAS sums in another order -> allclose (bench_cur)
            cols = lambda ids: torch.einsum("br,rbk->bk", C, Ef[:, ids])  # noqa: E731
            _check(notes, f"P6 B={b} E {storage}: embkern score_topk vs torch matmul+topk", ours, ref, n, cols,
                   largest=True, tol=1e-4)
            agree = {"ids_equal_torch": float((ours[1] == ref[1]).float().mean())} if ours is not None else {}
            _time(rows, notes, device, case, f"embkern score_topk ({_label(device)})", run_ours, nbytes, b, **agree)
            _time(rows, notes, device, case, "torch fp32 matmul + topk", lambda: torch.topk(C @ E, k), E.numel() * 4, b)
            if storage == "bf16":
                Cb = C.bfloat16()
                _time(rows, notes, device, case, "torch bf16 matmul + topk", lambda: torch.topk(Cb @ Et, k), nbytes, b)
            if storage == "int8":
                _time(rows, notes, device, case, "torch dequantize + fp32 matmul + topk",
                      lambda: torch.topk(C @ (Et.float() * sc), k), nbytes, b)
            del Ef


def rows(device: str, full: bool) -> tuple[list[dict], list[str]]:
    """Rows for P2, P3, P4, P6 on `device` (full: DESIGN's sizes; else N = 20,000, for a CPU) and notes."""
    out_rows: list[dict] = []
    notes: list[str] = []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the exact-score checks and fp32 baselines need true fp32
    try:
        for name, fn in (("P2", _p2), ("P3", _p3), ("P4", _p4), ("P6", _p6)):
            start = time.perf_counter()
            try:
                fn(device, full, out_rows, notes)
            except Exception as e:  # noqa: BLE001 - record and go on with the next workload
                notes.append(f"{name} failed: {_err(e)}")
            finally:
                if torch.device(device).type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 1e9
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    notes.append(f"{name}: {time.perf_counter() - start:.1f} s wall, peak {peak:.1f} GB allocated")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    notes.append("GB_per_s = bytes of the database representation each implementation scans once per call / median "
                 "(packed codes for embkern; the unpacked or decoded matrix for torch paths that keep one); "
                 "TF32 was off for every fp32 matmul. torch paths chunk queries by 256.")
    return out_rows, notes
