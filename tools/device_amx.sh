#!/bin/bash
# The AMX checks for a host with AMX, in one window of at most 8 minutes on a 16-core Xeon
# (the device tool's Emerald Rapids; on this project's own 2-core AMX VM it runs too, slower).
# Stage first on the development host: bash tools/device_stage.sh; then
#   run(command="bash tools/device_amx.sh", carry=[".dev"], timeout_s=540)
# and copy $OUT (logs, JSON, verdict.txt) to docs/. On a host where dlrm-tvm is installed
# (pip install -e ".[test]"), NO_STAGE=1 skips the staged install. Each step has its own limit:
#   1. the tile tier natively (DLRM_TVM_REQUIRE_NATIVE fails any hardware skip): every GEMM
#      kind against float64, the peak, the 20-step sapphirerapids step against vdpbf16ps,
#      the same tier again on the software executor, the permission, the executor against
#      the CPU's own tdpbf16ps bit for bit
#   2. every GEMM and pack of mlperf's bf16 step: AMX against torch's fp32 and bf16 matmul
#      (oneDNN, on AMX too)
#   3. the mlperf, small and dcnv2 steps (dcnv2's tables capped at 1M rows, as the preset
#      is): ours bf16 against torch.compile bf16 (mlperf: fp32 too, and torch eager/autocast)
#   4. tools/amx_verdict.py: one PASS/MISS line per goal
set -u
export PYTHONUNBUFFERED=1 TVM_THREAD_POOL_SPIN_COUNT=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
log cpu; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|MHz|L2|L3"
grep -o -w 'avx512_bf16\|amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
[ -n "${NO_STAGE:-}" ] || source tools/device_setup.sh
python3 -c "import tvm, tvm_ffi, torch, dlrm_tvm.graphs; print('tvm', tvm.__version__, 'ffi', tvm_ffi.__version__, 'torch', torch.__version__)" || exit 4
export TVM_NUM_THREADS=${THREADS:-$(nproc)}
log "threads $TVM_NUM_THREADS"
step() { local lim=$1; shift; log "$*"; timeout -k 10 "$lim" "$@"; echo "rc $?"; }
DLRM_TVM_REQUIRE_NATIVE=bf16,amx step 120 python3 -m pytest -q -p no:cacheprovider -rs \
  tests/test_amx.py tests/test_amx_permission.py tests/test_amx_emulator.py 2>&1 \
  | tee "$OUT/pytest-amx.log"
step 45 python3 -m dlrm_tvm kernels bench --config mlperf --precision bf16 \
  --json "$OUT/gemms-mlperf-amx.json" 2>&1 | tee "$OUT/gemms-mlperf-amx.txt"
step 90 python3 -m dlrm_tvm bench --config mlperf --steps 4 --warmup 1 --precisions fp32,bf16 \
  --json "$OUT/bench-mlperf-amx.json" 2>&1 | tee "$OUT/bench-mlperf-amx.txt"
step 70 python3 -m dlrm_tvm bench --config small --steps 4 --warmup 1 --precisions bf16 \
  --json "$OUT/bench-small-amx.json" 2>&1 | tee "$OUT/bench-small-amx.txt"
step 150 python3 -m dlrm_tvm bench --config dcnv2 --steps 2 --warmup 1 --precisions bf16 \
  --json "$OUT/bench-dcnv2-amx.json" 2>&1 | tee "$OUT/bench-dcnv2-amx.txt"
python3 tools/amx_verdict.py "$OUT" | tee "$OUT/verdict.txt"
log done
