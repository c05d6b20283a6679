#!/usr/bin/env bash
# Builds an sdist, builds the wheel from that sdist against the installed torch (make wheel), installs
# the wheel into a fresh virtualenv outside the source tree and runs the whole test suite against the
# installed package. Usage: scripts/wheel_test.sh PYTHON (the build environment's interpreter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:?usage: wheel_test.sh PYTHON}
work=$(mktemp -d /tmp/embkern-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$root"

t0=$SECONDS
make --no-print-directory wheel PY_WHEEL="$py" WHEEL_OUT="$work/wheelhouse" SDIST_OUT="$work/sdist"
build_s=$((SECONDS - t0))
whl=$(ls "$work"/wheelhouse/embkern-*.whl)
torch_req=$(unzip -p "$whl" '*/METADATA' | sed -n 's/^Requires-Dist: \(torch==[^ ;]*\).*/\1/p')
echo "wheel: $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB, built in ${build_s} s), requires ${torch_req}"
[ -n "$torch_req" ] || { echo "wheel metadata does not pin torch" >&2; exit 1; }

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null || true
"$work/venv/bin/python" -m pip install -q "$torch_req"
"$work/venv/bin/python" -m pip install -q "$whl" pytest scipy
cp -r tests "$work/tests"
cp -r docs "$work/docs"  # a test runs the README example of docs/embedding.md
cd "$work"
"$work/venv/bin/python" - <<'PY'
import embkern, sys
assert "site-packages" in embkern.__file__, embkern.__file__
info = embkern.build_info()
print(f"installed embkern {info['version']} from {embkern.__file__}: ISAs {info['compiled_isas']}, CUDA {info['cuda']}")
PY
"$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider
