#!/usr/bin/env bash
# The GPU tests of prefcal on the CPU emulation of its CUDA kernels (tests/cuda_emu/README.md): builds
# prefcal._cuda from cuda/*.cu with the host compiler, puts it beside the prefcal installed in the current
# Python (whose _cpu module and sources are used as they are), and runs the tests that touch the CUDA module
# (the cuda-staged backend and the GPU-only tests). Extra arguments go to pytest.
#
# Needs cmake, ninja and pybind11 (pip install cmake ninja pybind11). PREFCAL_EMU_BUILD: the build folder
# (default build-emu); PREFCAL_EMU_CMAKE_ARGS: more cmake arguments, e.g.
# "-DPREFCAL_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo" (then run with the ASan runtime in
# LD_PRELOAD and ASAN_OPTIONS=detect_leaks=0:log_path=/tmp/asan, since pytest captures what it prints).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${PREFCAL_EMU_BUILD:-$root/build-emu}
py=$(command -v python)
mkdir -p "$build"
# shellcheck disable=SC2086
cmake -S "$root" -B "$build" -G Ninja -DPREFCAL_CUDA=EMULATE -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" ${PREFCAL_EMU_CMAKE_ARGS:-} \
  > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" --target _cuda
installed=$(cd / && python -c "import os, prefcal; print(os.path.dirname(prefcal.__file__))")
pkg="$build/pkg/prefcal"
rm -rf "$build/pkg"
mkdir -p "$pkg"
for f in "$installed"/*; do
  case "$(basename "$f")" in
    _cuda*|__pycache__) ;;
    *) ln -s "$f" "$pkg/" ;;
  esac
done
ln -s "$build"/_cuda*.so "$pkg/"
cd "$root"
PYTHONPATH="$build/pkg" python - <<'PY'
import prefcal
info = prefcal.backends()["cuda"]
assert info["available"] and "emulation" in info["devices"][0]["name"], info
print("prefcal._cuda:", info["devices"][0]["name"])
PY
PYTHONPATH="$build/pkg" python -m pytest tests -q -p no:cacheprovider -k "cuda or gpu or device" "$@"
