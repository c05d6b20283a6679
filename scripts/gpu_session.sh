#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's device tool; see DEVELOPERS.md): build embkern with
# its CUDA kernels against that machine's own torch, run every CUDA test file, then the GPU
# benchmarks (benchmarks/gpu_bench.py). Logs and the results JSON go to $OUT (at most 8 files come
# back); the last lines printed are a summary. Each step has its own time limit so one hang cannot
# eat the lease.
#
# Environment: OUT (default ./gpu_out), PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0: the lent cards
# are Hopper), FAMILIES (test files to run), BENCH ("" skips the benchmarks, else gpu_bench.py's args),
# NCU=1 (Nsight Compute sections of the P1 / P5 kernels, scripts/gpu_kernels.py, into ncu.txt).
# It copies the built module into python/embkern: run it on the device machine, not in a checkout
# you build with `make`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
t0=$(date +%s)
say() { echo "[gpu $(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/session.log"; }
summary=()

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))"
  nproc; } >> "$OUT/session.log" 2>&1
tail -n 4 "$OUT/session.log"

# ---- build: cmake + ninja in place, as `make build` does, with the CUDA kernels required ----------
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
say "configure + build (sm ${TORCH_CUDA_ARCH_LIST}, $(nproc) jobs)"
if ! { cmake -S . -B build/gpu -G Ninja -DPython3_EXECUTABLE="$(command -v "$PY")" -DEMBKERN_CUDA=ON \
         -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 &&
       timeout "${BUILD_TIMEOUT:-420}" cmake --build build/gpu -j "$(nproc)" >> "$OUT/build.log" 2>&1; }; then
  grep -E "error|Error" "$OUT/build.log" | head -n 40
  tail -n 30 "$OUT/build.log"
  say "BUILD FAILED"
  exit 1
fi
cp -f build/gpu/_C*.so build/gpu/_build_config.py python/embkern/
export PYTHONPATH="$ROOT/python:$ROOT/benchmarks" PYTHONUNBUFFERED=1
"$PY" -c "import embkern; i = embkern.build_info(); print('embkern', i['version'], 'cuda', i['cuda'], i['cuda_archs'], i['best_isa'])" \
  2>&1 | tee -a "$OUT/session.log"
say "build done"

# ---- CUDA tests: one pytest over every family's CUDA file (workers in parallel; a worker that
# crashes is replaced, so one crash costs one test); blocking launches so an error names the launch
args=(-q -p no:cacheprovider --tb=short -rfE)
"$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout=90)
"$PY" -c "import xdist" 2>/dev/null && args+=(-n "${TEST_WORKERS:-8}")
files=()
for fam in ${FAMILIES:-embedding fastrp bits int8 rbe cur}; do files+=("tests/test_${fam}_cuda.py"); done
CUDA_LAUNCH_BLOCKING=1 timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest "${args[@]}" "${files[@]}" > "$OUT/tests.log" 2>&1
rc=$?
summary+=("CUDA tests: rc=$rc $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -n 1)")
say "${summary[-1]}"

# ---- benchmarks --------------------------------------------------------------------------------
if [ "${BENCH-all}" != "" ]; then
  bench_args=()
  [ "${BENCH:-all}" != "all" ] && read -r -a bench_args <<< "$BENCH"
  say "gpu_bench.py ${bench_args[*]}"
  timeout "${BENCH_TIMEOUT:-300}" "$PY" benchmarks/gpu_bench.py "${bench_args[@]}" > "$OUT/bench.log" 2>&1
  rc=$?
  cp -f benchmarks/results/gpu_bench.json "$OUT/" 2>/dev/null
  summary+=("gpu_bench: rc=$rc")
  grep -E "^\| P|CHECK FAILED|FAILED|copy:" "$OUT/bench.log" | cut -c1-220
fi

# ---- Nsight Compute on the hot kernels of P1 and P5 (NCU=1) -------------------------------------
if [ "${NCU:-0}" = 1 ] && command -v ncu > /dev/null; then
  say "ncu"
  timeout "${NCU_TIMEOUT:-150}" ncu --clock-control none --launch-count 16 \
    --kernel-name 'regex:forward_concat|spmm_kernel|reduce_segments|apply_rows|prepare_pairs|init_kernel' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    "$PY" scripts/gpu_kernels.py > "$OUT/ncu.txt" 2>&1
  summary+=("ncu: rc=$?")
fi

echo "===== failures (first 60 lines)"
grep -E "^(FAILED|ERROR) |Error:|error:" "$OUT/tests.log" | head -n 60
echo "===== summary ($(( $(date +%s) - t0 )) s)"
printf '%s\n' "${summary[@]}" | tee -a "$OUT/session.log"
