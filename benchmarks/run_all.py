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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="the P1-P6 sizes of DESIGN section 4 (slow)")
    ap.add_argument("only", nargs="*", help="bench names (bench_bits ...); default: all")
    args = ap.parse_args()
    names = args.only or sorted(p.stem for p in HERE.glob("bench_*.py"))
    summaries, failed = [], []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} ({'full' if args.full else 'quick'})", flush=True)
        try:
            out = importlib.import_module(name).main(full=args.full)
            summaries.append(_harness.markdown(json.loads(Path(out).read_text())))
        except Exception as e:  # one broken peer must not hide the other results
            failed.append(name)
            print(f"!! {name} failed: {type(e).__name__}: {e}", flush=True)
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    target = _harness.RESULTS / ("SUMMARY.md" if args.full else "quick/SUMMARY.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(summaries))
    print(f"wrote {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
