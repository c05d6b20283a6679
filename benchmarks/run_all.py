"""Runs every benchmarks/bench_*.py (quick sizes, or --full for DESIGN section 4's P1-P6) and writes
benchmarks/results/[quick/]SUMMARY.md with every table."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness  # noqa: E402


README = HERE.parent / "README.md"
BEGIN, END = "<!-- results -->", "<!-- /results -->"
TITLES = {
    "bench_embedding": "P1: multiplexed embedding bags",
    "bench_bits": "P2: Hamming top-10",
    "bench_int8": "P3: int8 top-10",
    "bench_rbe": "P4: SDC top-10",
    "bench_fastrp": "P5: FastRP",
    "bench_cur": "P6: CUR score + top-100",
    "gpu_bench": "GPU: P1-P6 on one NVIDIA H200 (benchmarks/gpu_bench.py, run by scripts/gpu_session.sh)",
}


def update_readme() -> None:
    """Rewrites the README's results block from the committed FULL results."""
    parts = [BEGIN, ""]
    for bench, title in TITLES.items():
        path = _harness.RESULTS / f"{bench}.json"
        if path.exists():
            md = _harness.markdown(json.loads(path.read_text()))
            parts.append(md.replace(f"### {bench} (full)", f"### {title}", 1))
    parts.append(END)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README has no {BEGIN} ... {END} block; not updated")
        return
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + "\n".join(parts) + tail)
    print(f"updated the results block of {README}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="the P1-P6 sizes of DESIGN section 4 (slow)")
    ap.add_argument("only", nargs="*", help="bench names (bench_bits ...); default: all")
    args = ap.parse_args()
    names = args.only or sorted(p.stem for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} ({'full' if args.full else 'quick'})", flush=True)
        try:
            importlib.import_module(name).main(full=args.full)
        except Exception as e:  # one broken peer must not hide the other results
            failed.append(name)
            print(f"!! {name} failed: {type(e).__name__}: {e}", flush=True)
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    # The summary covers every result of this size, also those of benches not run this time.
    folder = _harness.RESULTS if args.full else _harness.RESULTS / "quick"
    target = folder / "SUMMARY.md"
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(_harness.markdown(json.loads(p.read_text())) for p in sorted(folder.glob("bench_*.json"))))
    print(f"wrote {target}")
    if args.full and not args.only:
        update_readme()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
