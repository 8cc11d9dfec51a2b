#!/usr/bin/env bash
# One call on a lent GPU machine: build, every test (GPU ones included), a compute-sanitizer pass over the
# CUDA tests, then the GPU benchmarks. Logs go to $OUT (or ./device-out): eight files at most (the device tool
# brings back no more), so the build, test, sanitizer and benchmark logs are one file each.
set -u -o pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1; python3 --version; } 2>&1 | tee "$OUT/build.log"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . -Ccmake.define.PREFCAL_WERROR=ON \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90-real >> "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -m prefcal.cli info
t0=$(date +%s)
timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests -q -rfEs -p no:cacheprovider --tb=short ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 \
  | tee "$OUT/tests.log" | grep -vE "^SKIPPED|^tests/.*(PASSED|passed)" | tail -40
echo "tests: $(( $(date +%s) - t0 )) s"
if [ "${SANITIZE:-1}" = 1 ]; then
  t0=$(date +%s)
  timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest tests/test_calibration.py \
    -q -p no:cacheprovider -x -k "cupy and (edges or kernel_path or ties or many_classes or outcome_dtypes or non_contiguous)" \
    > "$OUT/sanitizer.log" 2>&1
  timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest tests/test_pl.py \
    -q -p no:cacheprovider -x -k "cupy" >> "$OUT/sanitizer.log" 2>&1
  timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest \
    tests/test_marginals.py -q -p no:cacheprovider -x -k "cupy" >> "$OUT/sanitizer.log" 2>&1
  timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest \
    tests/test_ranking_cuda.py -q -p no:cacheprovider -x >> "$OUT/sanitizer.log" 2>&1
  echo "compute-sanitizer memcheck: exit $? ($(( $(date +%s) - t0 )) s); $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer.log") clean summaries"
  grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -3
fi
if [ "${BENCH:-1}" = 1 ]; then
  bt=${BENCH_TIMEOUT:-150}
  : > "$OUT/bench.log"
  timeout $bt python3 benchmarks/gpu.py --json "$OUT/gpu.json" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT/bench.log" | tail -40
  timeout $bt python3 benchmarks/gpu_pl.py --json "$OUT/gpu_pl.json" ${BENCH_PL_ARGS:-} 2>&1 | tee -a "$OUT/bench.log" | tail -30
  timeout $bt python3 benchmarks/gpu_marginals.py --json "$OUT/gpu_marginals.json" ${BENCH_MARG_ARGS:-} 2>&1 \
    | tee -a "$OUT/bench.log" | tail -20
  timeout $bt python3 benchmarks/gpu_ranking.py --json "$OUT/gpu_ranking.json" ${BENCH_RANK_ARGS:-} 2>&1 \
    | tee -a "$OUT/bench.log" | tail -20
fi
if [ "${NCU:-0}" = 1 ]; then
  # one launch of the PL log-likelihood and sampling kernels under Nsight Compute (instruction counts, pipes,
  # occupancy, bank conflicts, stall locations); the report goes to $OUT/ncu.log (with BENCH=1 that is a ninth
  # file, one more than the device tool brings back: use NCU=1 with BENCH=0 or SANITIZE=0)
  timeout ${NCU_TIMEOUT:-120} ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
    --section WarpStateStats --section Occupancy --section SourceCounters \
    -k regex:"${NCU_KERNELS:-loglik_staged|loglik_flat|sample_rows}" --launch-count 3 python3 -c "
import torch; from prefcal import pl, _backend
g = torch.Generator(device='cuda').manual_seed(7)
s = torch.randn(10**7, 10, device='cuda', generator=g)
r = torch.argsort(torch.rand(10**7, 10, device='cuda', generator=g), dim=1).to(torch.int32)
pl.log_likelihood(s, r); pl.sample(s, seed=1)
_backend.cuda_module().set_loglik_flat(True); pl.log_likelihood(s, r); torch.cuda.synchronize()" \
    > "$OUT/ncu.log" 2>&1
  grep -E "void |Duration|Compute \(SM\)|Executed Instructions  |Achieved Occupancy" "$OUT/ncu.log" | head -20
fi
