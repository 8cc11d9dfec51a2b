#!/usr/bin/env bash
# One call on a lent GPU machine, sized for the device budget (15 minutes of device time a session, the
# machine's start and idle time included; one command at most 10 minutes). The build comes first; the other
# stages follow in priority order (the open work first), and each starts only when the time left of BUDGET_S
# covers its estimate, and is cut at what is left. Leave room for a rerun: the default budget is 420 s, so a
# call of timeout_s=600 ends well inside its limit and ~4 minutes of device time remain for a short second call
# on the warm machine (whose build tree is kept: the rebuild is incremental).
#
#   build      pip install -e . for sm_90, warnings as errors; stops here when no CUDA device is usable
#   pltests    the PL tests (tests/test_pl*.py, test_torch.py), GPU paths included
#   plbench    benchmarks/gpu_pl.py: issue 3's GPU targets (log-likelihood kernels side by side, sampling)
#   tests      every other test
#   sanitize   compute-sanitizer memcheck over the CUDA tests of the PL engine, then the others while time lasts
#   bench      the other GPU benchmarks (ECE, marginals, ranking calibration)
#   ncu        (only when named in STAGES) Nsight Compute on the PL log-likelihood and sampling kernels
#
# Knobs: BUDGET_S (default 420), STAGES (default "build pltests plbench tests sanitize bench"), WORKERS (pytest
# processes when pytest-xdist is installed; default 8), PYTEST_K (a -k filter for both test stages),
# NCU_KERNELS. Logs go to $OUT (or ./device-out), eight files at most (the device tool brings back no more):
# build.log, tests.log, sanitizer.log, bench.log, ncu.log and the JSON of gpu_pl.py, gpu.py, gpu_ranking.py
# (gpu_marginals.py's table is in bench.log).
set -u -o pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
BUDGET=${BUDGET_S:-420}
STAGES=" ${STAGES:-build pltests plbench tests sanitize bench} "
start=$(date +%s)
summary=""

left() { echo $((BUDGET - ($(date +%s) - start))); }

# stage NAME ESTIMATE_S CAP_S COMMAND: runs COMMAND (a bash string, pipefail on) when NAME is in STAGES and at
# least ESTIMATE_S seconds are left, limited to min(CAP_S, time left); records its exit status and duration.
stage() {
  local name=$1 est=$2 cap=$3 cmd=$4 l t t0 rc
  [[ $STAGES == *" $name "* ]] || return 0
  l=$(left)
  if ((l < est)); then
    echo "== $name: skipped, ${l} s left of ${BUDGET} s, needs ~${est} s"
    summary+="$(printf '%-9s skipped (%s s left)' "$name" "$l")"$'\n'
    return 0
  fi
  t=$((l < cap ? l : cap))
  echo "== $name (limit ${t} s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$t" bash -o pipefail -c "$cmd"
  rc=$?
  summary+="$(printf '%-9s rc=%-3s %4s s%s' "$name" "$rc" "$(($(date +%s) - t0))" \
    "$( ((rc == 124 || rc == 137)) && echo ' (cut at its limit)')")"$'\n'
  return $rc
}

workers=""
if python3 -c "import xdist" 2>/dev/null; then workers="-n ${WORKERS:-8}"; fi
export PYTEST_OPTS="-q -rfE -p no:cacheprovider --tb=short $workers ${PYTEST_K:+-k \"$PYTEST_K\"}"
PL_TESTS="tests/test_pl.py tests/test_pl_device_paths.py tests/test_torch.py"
export PL_TESTS

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -1
  python3 --version; nproc; } 2>&1 | tee "$OUT/build.log"

stage build 60 300 '
  python3 -m pip install --no-build-isolation --no-deps -e . -Ccmake.define.PREFCAL_WERROR=ON \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90-real >> "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
  python3 -m prefcal.cli info
  python3 -c "import prefcal, sys; b = prefcal.backends()[\"cuda\"]; sys.exit(0 if b[\"available\"] else str(b))"' \
  || { echo "build failed or no usable CUDA device: nothing else runs"; printf '%s' "$summary"; exit 1; }

# The test logs keep failures and errors (-rfE) and the skip reasons (-rs); skips (stdin: a pytest log) prints
# the five commonest reasons with their counts: on a GPU machine only CPU-only checks should skip.
skips() {
  grep -E "^SKIPPED" | sed -E "s/^SKIPPED \[([0-9]+)\] [^:]+:[0-9]+: /\1\t/" \
    | awk -F"\t" '{c[$2] += $1} END {for (r in c) printf "%7d skipped: %s\n", c[r], r}' | sort -rn | head -5
}
export -f skips
stage pltests 30 150 '
  eval python3 -m pytest $PL_TESTS $PYTEST_OPTS -rs > "$OUT/tests.log" 2>&1; rc=$?
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -25
  skips < "$OUT/tests.log"
  exit $rc'

stage plbench 45 120 'python3 benchmarks/gpu_pl.py --json "$OUT/gpu_pl.json" ${BENCH_PL_ARGS:-} 2>&1 | tee "$OUT/bench.log"'

stage tests 60 240 '
  ignore=$(for f in $PL_TESTS; do printf -- "--ignore=%s " "$f"; done)
  { echo; echo "==== every other test"; } >> "$OUT/tests.log"
  eval python3 -m pytest tests $ignore $PYTEST_OPTS -rs >> "$OUT/tests.log" 2>&1; rc=$?
  sed -n "/^==== every other test/,\$p" "$OUT/tests.log" | grep -E "^(FAILED|ERROR)|passed|failed" | tail -25
  sed -n "/^==== every other test/,\$p" "$OUT/tests.log" | skips
  exit $rc'

# memcheck, file by file in priority order, each only while time is left; one exit status for all
stage sanitize 60 200 '
  : > "$OUT/sanitizer.log"; rc=0; t0=$(date +%s)
  for spec in "tests/test_pl.py -k cupy" "tests/test_pl_device_paths.py -k cuda" "tests/test_torch.py -k cuda" \
      "tests/test_ranking_cuda.py" "tests/test_marginals.py -k cupy" \
      "tests/test_calibration.py -k cupy and (edges or kernel_path or ties or many_classes or non_contiguous)"; do
    file=${spec%% *}; filt=${spec#"$file"}; filt=${filt# -k }
    echo "==== $spec" >> "$OUT/sanitizer.log"
    compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest "$file" ${filt:+-k "$filt"} -q -x \
      -p no:cacheprovider >> "$OUT/sanitizer.log" 2>&1 || rc=$?
    echo "$spec: $(grep -E "passed|failed" "$OUT/sanitizer.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
  done
  echo "memcheck: $(grep -c "ERROR SUMMARY: 0 errors" "$OUT/sanitizer.log") clean summaries, \
$(grep -E "ERROR SUMMARY: [1-9]" "$OUT/sanitizer.log" | wc -l) with errors"
  exit $rc'

stage bench 60 200 '
  for b in gpu gpu_ranking gpu_marginals; do
    json=""; [ "$b" != gpu_marginals ] && json="--json $OUT/$b.json"
    python3 benchmarks/$b.py $json 2>&1 | tee -a "$OUT/bench.log" | tail -25 || exit $?
  done'

stage ncu 60 150 '
  ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
    --section WarpStateStats --section Occupancy --section SourceCounters \
    -k regex:"${NCU_KERNELS:-loglik_staged|loglik_tiles|sample_rows}" --launch-count 4 python3 -c "
import torch; from prefcal import pl, _backend
g = torch.Generator(device=\"cuda\").manual_seed(7)
s = torch.randn(10**7, 10, device=\"cuda\", generator=g)
r = torch.argsort(torch.rand(10**7, 10, device=\"cuda\", generator=g), dim=1).to(torch.int32)
pl.log_likelihood(s, r); pl.sample(s, seed=1)
_backend.cuda_module().set_loglik_kernel(\"flat\"); pl.log_likelihood(s, r); _backend.cuda_module().set_loglik_kernel(\"exact\"); pl.log_likelihood(s, r); torch.cuda.synchronize()" > "$OUT/ncu.log" 2>&1
  grep -E "void |Duration|Compute \(SM\)|Executed Instructions  |Achieved Occupancy" "$OUT/ncu.log" | head -28'

echo
echo "== summary ($(($(date +%s) - start)) s of a ${BUDGET} s budget)"
printf '%s' "$summary"
