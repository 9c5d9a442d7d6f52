#!/bin/bash
# Issue 16's native checks on a lent host with AMX (the device tool's 16-core Emerald Rapids),
# in one window of under 10 minutes. Stage first, here: bash tools/device_stage.sh; then
#   run(command="bash tools/device_amx.sh", carry=[".dev"], timeout_s=600)
# and copy $OUT (logs, JSON, verdict.txt) to docs/device-emr/. Each step has its own limit.
#   1. tests/test_amx.py and test_amx_permission.py natively: numerics of every GEMM kind
#      against float64, the permission, the AMX peak above the vdpbf16ps peak (their skips
#      elsewhere say why; here DLRM_TVM_REQUIRE_NATIVE turns such a skip into a failure)
#   2. every GEMM of mlperf's bf16 step with the host's rules (AMX where shapes allow) and with
#      cooperlake's (vdpbf16ps only), torch's fp32 and bf16 matmul beside them
#   3. the mlperf step, 16 threads: ours fp32 and bf16 against torch eager, autocast, compile
#   4. tools/amx_verdict.py: one PASS/MISS line per goal of issue 16
set -u
export PYTHONUNBUFFERED=1 TVM_THREAD_POOL_SPIN_COUNT=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
log cpu; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|MHz|L2|L3"
grep -o -w 'avx512_bf16\|amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
source tools/device_setup.sh
python3 -c "import tvm, tvm_ffi, torch, dlrm_tvm.graphs; print('tvm', tvm.__version__, 'ffi', tvm_ffi.__version__, 'torch', torch.__version__)" || exit 4
export TVM_NUM_THREADS=${THREADS:-$(nproc)}
log "threads $TVM_NUM_THREADS"
step() { local lim=$1; shift; log "$*"; timeout -k 10 "$lim" "$@"; echo "rc $?"; }
DLRM_TVM_REQUIRE_NATIVE=bf16,amx step 120 python3 -m pytest -q -p no:cacheprovider -rs \
  tests/test_amx.py tests/test_amx_permission.py 2>&1 | tee "$OUT/pytest-amx.log"
step 150 python3 -m dlrm_tvm kernels bench --config mlperf --precision bf16 \
  --json "$OUT/gemms-mlperf-amx.json" 2>&1 | tee "$OUT/gemms-mlperf-amx.txt"
step 100 python3 -m dlrm_tvm kernels bench --config mlperf --precision bf16 --target cooperlake \
  --no-torch --json "$OUT/gemms-mlperf-vdpbf16ps.json" 2>&1 | tee "$OUT/gemms-mlperf-vdpbf16ps.txt"
step 170 python3 -m dlrm_tvm bench --config mlperf --steps 4 --warmup 1 --precisions fp32,bf16 \
  --json "$OUT/bench-mlperf-amx.json" 2>&1 | tee "$OUT/bench-mlperf-amx.txt"
python3 tools/amx_verdict.py "$OUT" | tee "$OUT/verdict.txt"
log done
