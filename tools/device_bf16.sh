#!/bin/bash
# Native BF16 checks (issues 3 and 11) on a lent host with avx512_bf16 (the device tool's 16-core
# machine). TVM's compiler does not fit the 64 MiB that travels as a wheel, so the caller
# stages it in .dev/ (git-ignored): tvm_py.tar.xz (the tvm package without libtvm_compiler.so),
# libtvm_compiler.so.xz (stripped, xz -9e) and the cp312 apache-tvm-ffi wheel.
# Everything it prints also lands in $OUT; each step has its own time limit.
set -u
export PYTHONUNBUFFERED=1 TVM_THREAD_POOL_SPIN_COUNT=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
log cpu; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|MHz|L2|L3"
grep -m1 -o -w 'avx512[a-z_0-9]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
source tools/device_setup.sh
python3 -c "import tvm, tvm_ffi, torch, dlrm_tvm.graphs; print('tvm', tvm.__version__, 'ffi', tvm_ffi.__version__, 'torch', torch.__version__)" || exit 4
export TVM_NUM_THREADS=${THREADS:-$(nproc)}
log "threads $TVM_NUM_THREADS"
step() { local lim=$1; shift; log "$*"; timeout -k 10 "$lim" "$@"; echo "rc $?"; }
step 130 python3 -m pytest -q -p no:cacheprovider tests/test_gemm_bf16.py::test_bf16_gemm_native \
  tests/test_gemm_bf16.py::test_bf16_gemm_awkward_shape_falls_to_fp32_compute \
  tests/test_vnni.py tests/test_bf16_training.py tests/test_split_sgd.py 2>&1 \
  | tee "$OUT/pytest-bf16.log"
for c in mlperf small; do
  step 140 python3 -m dlrm_tvm kernels bench --config $c --precision bf16 \
    --json "$OUT/gemms-$c-bf16.json" 2>&1 | tee "$OUT/gemms-$c.log"
done
for c in small mlperf; do
  step 150 python3 -m dlrm_tvm bench --config $c --steps 4 --warmup 1 --precisions fp32,bf16 \
    --json "$OUT/bench-$c-bf16.json" 2>&1 | tee "$OUT/bench-$c.log"
done
python3 tools/bf16_verdict.py "$OUT"/gemms-*-bf16.json "$OUT"/bench-*-bf16.json \
  | tee "$OUT/verdict.txt"
log done
