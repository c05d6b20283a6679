#!/usr/bin/env bash
# CUDA build check for machines without a GPU: builds embkern with its CUDA kernels (sm_80, sm_90)
# against torch 2.14.1 (cu130) in .venv-cuda, imports it, and checks the device code in the module.
# Nothing here needs a GPU; the CUDA tests (tests/test_bits_cuda.py) run where one is present.
#
# Environment: CUDA_HOME (default /usr/local/cuda), CUDACXX (default $CUDA_HOME/bin/nvcc),
# JOBS (default nproc). Reruns reuse .venv-cuda and build/cuda and are incremental.
set -euo pipefail

started=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${CUDACXX:-$CUDA_HOME/bin/nvcc}"
VENV="$ROOT/.venv-cuda"
PY="$VENV/bin/python"
BUILD="$ROOT/build/cuda"
PKG="$BUILD/pkg"
TORCH_VERSION=2.14.1
ARCHS="8.0;9.0"
JOBS="${JOBS:-$(nproc)}"

say() { echo "[cuda_build] $*"; }
die() { echo "[cuda_build] FAILED: $*" >&2; exit 1; }

[ -x "$NVCC" ] || die "nvcc not found at $NVCC (set CUDA_HOME or CUDACXX)"
say "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"

# ---- virtualenv: created once, packages installed only when missing ------------------------------
if [ ! -x "$PY" ]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
missing=()
if ! "$PY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys
import torch
ok = torch.__version__.split("+")[0] == sys.argv[1] and torch.version.cuda is not None
sys.exit(0 if ok else 1)
EOF
then
  missing+=("torch==$TORCH_VERSION")
fi
for spec in numpy:numpy pybind11:pybind11 scikit_build_core:scikit-build-core ninja:ninja; do
  "$PY" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec#*:}")
done
# cmake >= 3.25 inside the venv (its binary, not only the module)
if ! { [ -x "$VENV/bin/cmake" ] && "$PY" - <<'EOF' 2>/dev/null; }
import re, subprocess, sys
out = subprocess.run([sys.prefix + "/bin/cmake", "--version"], capture_output=True, text=True, check=True).stdout
major, minor = map(int, re.search(r"(\d+)\.(\d+)", out).groups())
sys.exit(0 if (major, minor) >= (3, 25) else 1)
EOF
then
  missing+=("cmake>=3.25")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing into .venv-cuda: ${missing[*]}"
  "$PY" -m pip install -q "${missing[@]}"
fi
"$PY" -c "import torch; assert torch.version.cuda, 'torch in .venv-cuda is not a CUDA build'; print('[cuda_build] torch', torch.__version__, 'CUDA', torch.version.cuda)"

# ---- the CUDA wheel: built, not run (no GPU here) -------------------------------------------------
# Built exactly as a user would (pip wheel --no-build-isolation against this venv's torch), in a build
# folder of its own so reruns are incremental and never mix with the CPU build.
export CUDACXX="$NVCC"
export TORCH_CUDA_ARCH_LIST="$ARCHS"
export EMBKERN_CUDA=ON
export SKBUILD_BUILD_DIR="$BUILD/skbuild"
export SKBUILD_CMAKE_ARGS="-DCMAKE_CUDA_COMPILER=$NVCC;-DCUDAToolkit_ROOT=$CUDA_HOME"
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
PATH="$VENV/bin:$PATH"
rm -rf "$BUILD/wheel"
say "building the CUDA wheel with $JOBS jobs"
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$BUILD/wheel" "$ROOT" || die "pip wheel (CUDA)"
whl=("$BUILD"/wheel/embkern-*.whl)
[ -f "${whl[0]}" ] || die "no wheel in $BUILD/wheel"
req=$(unzip -p "${whl[0]}" '*/METADATA' | sed -n 's/^Requires-Dist: \(torch==[^ ;]*\).*/\1/p')
[ "$req" = "torch==$TORCH_VERSION" ] || die "the CUDA wheel requires '$req', expected torch==$TORCH_VERSION"
say "wheel $(basename "${whl[0]}") ($(du -k "${whl[0]}" | cut -f1) KiB) requires $req"

# ---- unpack it as an importable package ----------------------------------------------------------
rm -rf "$PKG"
mkdir -p "$PKG"
unzip -q "${whl[0]}" 'embkern/*' -d "$PKG"
so=("$PKG"/embkern/_C*.so)
[ -f "${so[0]}" ] || die "no _C*.so in the wheel"

say "import check"
PYTHONPATH="$PKG" "$PY" - <<'EOF' || die "import check"
import torch
import embkern

info = embkern.build_info()
assert embkern.__file__.startswith(__import__("os").environ["PYTHONPATH"]), embkern.__file__
assert info["cuda"] is True, f"build_info()['cuda'] = {info.get('cuda')!r}"
assert list(info["cuda_archs"]) == ["80", "90"], f"build_info()['cuda_archs'] = {info.get('cuda_archs')!r}"
for op in ("pack_bits", "unpack_bits", "hamming_distance", "hamming_topk"):
    assert hasattr(torch.ops.embkern, op), f"torch.ops.embkern.{op} missing"
    # the CUDA kernel is registered (no GPU needed to ask the dispatcher)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"embkern::{op}", "CUDA"), f"embkern::{op} has no CUDA kernel"
print(f"[cuda_build] embkern {embkern.__version__} (torch {torch.__version__}): cuda={info['cuda']} archs={info['cuda_archs']}; "
      f"CUDA kernels registered; GPU present: {torch.cuda.is_available()}")
EOF

# ---- device code: an ELF (cubin) for sm_80 and sm_90 in the module --------------------------------
say "checking device code in $(basename "${so[0]}")"
CUOBJDUMP=""
for c in "$CUDA_HOME/bin/cuobjdump" "$(command -v cuobjdump 2>/dev/null || true)" \
         "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump; do
  if [ -n "$c" ] && [ -x "$c" ]; then CUOBJDUMP="$c"; break; fi
done
# Independent of any CUDA tool: read the fatbin section's entry headers (kind 2 = ELF, with its sm).
archs_py=$("$PY" - "${so[0]}" <<'EOF'
import struct, sys

def fatbin_archs(path):
    data = open(path, "rb").read()
    # ELF64 section headers -> .nv_fatbin
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def sec(i):
        name, typ, flags, addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size
    stroff = sec(shstrndx)[1]
    found = set()
    for i in range(shnum):
        name, off, size = sec(i)
        sname = data[stroff + name:data.index(b"\0", stroff + name)]
        if sname != b".nv_fatbin":
            continue
        pos, end = off, off + size
        while pos + 16 <= end:
            magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                pos += 8  # containers are 8-byte aligned
                continue
            e, eend = pos + hsize, pos + hsize + fsize
            while e + 32 <= eend:
                kind, _u, ehsize, esize = struct.unpack_from("<HHIQ", data, e)
                arch, = struct.unpack_from("<I", data, e + 28)
                if kind == 2:
                    found.add(f"sm_{arch}")
                if ehsize == 0:
                    break
                e += ehsize + esize
            pos = eend
    return sorted(found)

print(" ".join(fatbin_archs(sys.argv[1])))
EOF
) || die "reading the fatbin section"
say "fatbin ELF entries: ${archs_py:-none}"
for a in sm_80 sm_90; do
  [[ " $archs_py " == *" $a "* ]] || die "no $a ELF in the fatbin of ${so[0]}"
done
if [ -n "$CUOBJDUMP" ]; then
  elfs=$("$CUOBJDUMP" --list-elf "${so[0]}") || die "cuobjdump --list-elf"
  echo "$elfs" | sed 's/^/[cuda_build]   /'
  for a in sm_80 sm_90; do
    grep -q "\.$a\.cubin" <<<"$elfs" || die "cuobjdump lists no $a cubin in ${so[0]}"
  done
else
  say "no cuobjdump found; relying on the fatbin header check"
fi

say "OK: CUDA build compiles, links and imports (sm_80 + sm_90 device code) in $(( $(date +%s) - started ))s"
