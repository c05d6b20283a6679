"""Benchmark harness: timing, machine description, JSON results, markdown tables, PNG plots.

Every benchmark times embkern and its baselines in the same process on the same data and reports
ratios. Results go to benchmarks/results/<bench>.json (FULL sizes, committed) or
benchmarks/results/quick/<bench>.json (quick sizes).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

import embkern

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 5, min_time: float = 0.0) -> dict:
    """Median (and min) wall time of fn() in seconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def device_timeit(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 20) -> dict:
    """Median (and min) time of fn() on the current CUDA device, each call between two CUDA events
    (no host synchronization inside the timed region); plain timeit() when CUDA is absent, so a GPU
    benchmark can be tried on the CPU at small sizes."""
    if not torch.cuda.is_available():
        return timeit(fn, warmup=min(warmup, 1), repeat=min(repeat, 3))
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    for start, stop in events:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    times = [start.elapsed_time(stop) / 1e3 for start, stop in events]
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def cpu_mhz() -> float | None:
    """The highest clock /proc/cpuinfo reports (nominal on VMs), for instruction-bound estimates."""
    try:
        return max(float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None


def matmul_topk(q: torch.Tensor, db: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain torch baseline: fp32 (q @ db.T) + topk, queries in chunks so the score matrix never
    exceeds chunk x N."""
    vals, ids = [], []
    for s in range(0, q.shape[0], chunk):
        v, i = torch.topk(q[s : s + chunk] @ db.T, k, dim=1)
        vals.append(v)
        ids.append(i)
    return torch.cat(vals), torch.cat(ids)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    info = embkern.build_info()
    m = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_features": info["cpu_features"],
        "active_isa": info["active_isa"],
        "torch": torch.__version__,
        "embkern": info["version"],
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(0)
    return m


def machine_line(m: dict) -> str:
    s = f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads, ISA {m['active_isa']} ({'+'.join(m['cpu_features'])}), torch {m['torch']}"
    if "gpu" in m:
        s += f", GPU {m['gpu']}"
    return s


def write(bench: str, full: bool, params: dict, rows: list[dict], notes: list[str] | None = None) -> Path:
    """rows: dicts with at least 'case', 'impl', 'median_s'; ratios are added against each case's
    first embkern row (speedup = that row's time / embkern time, > 1 means embkern is faster)."""
    by_case: dict[str, float] = {}
    for r in rows:  # the first embkern row of a case is the reference (our default path)
        if r["impl"].startswith("embkern") and r.get("median_s"):
            by_case.setdefault(r["case"], r["median_s"])
    for r in rows:
        ours = by_case.get(r["case"])
        if ours and r.get("median_s"):
            r["speedup_of_embkern"] = r["median_s"] / ours
    out = RESULTS / (f"{bench}.json" if full else f"quick/{bench}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": bench,
        "size": "full" if full else "quick",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "params": params,
        "rows": rows,
        "notes": notes or [],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    plot(doc, out.with_suffix(".png"))
    return out


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def markdown(doc: dict) -> str:
    lines = [f"### {doc['bench']} ({doc['size']})", "", f"Machine: {machine_line(doc['machine'])}", ""]
    extra = sorted({k for r in doc["rows"] for k in r if k not in ("case", "impl", "median_s", "min_s", "repeats", "speedup_of_embkern")})
    lines.append("| case | implementation | median | embkern speedup | " + " | ".join(extra) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(extra))
    for r in doc["rows"]:
        sp = r.get("speedup_of_embkern")
        cells = [r["case"], r["impl"], _fmt_time(r["median_s"]) if r.get("median_s") else "-",
                 f"{sp:.2f}x" if sp else "-"]
        for k in extra:
            v = r.get(k, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    for n in doc["notes"]:
        lines.append(f"\n{n}")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    """Bar chart of median times per case (skipped when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cases = list(dict.fromkeys(r["case"] for r in doc["rows"]))
    if not cases:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        rows = [r for r in doc["rows"] if r["case"] == case and r.get("median_s")]
        ax.barh([r["impl"] for r in rows], [r["median_s"] * 1e3 for r in rows],
                color=["tab:green" if r["impl"].startswith("embkern") else "tab:gray" for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("median ms (log)")
        ax.set_title(case, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle(f"{doc['bench']} ({doc['size']}): {doc['machine']['cpu']}, {doc['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
