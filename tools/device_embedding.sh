#!/bin/bash
# Embedding kernels at 16 threads on the lent 16-core host (see tools/device_bf16.sh for how TVM
# is staged there): forward and SGD/rwsadagrad updates, uniform and Zipf, with torch.
set -u
export PYTHONUNBUFFERED=1 TVM_THREAD_POOL_SPIN_COUNT=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
source tools/device_setup.sh
export TVM_NUM_THREADS=${THREADS:-$(nproc)}
lscpu | grep -E "Model name|^CPU\(s\)"
log "threads $TVM_NUM_THREADS"
step() { local lim=$1; shift; log "$*"; timeout -k 10 "$lim" "$@"; echo "rc $?"; }
step 120 python3 -m dlrm_tvm kernels bench --op embedding_bag_update --shape 1000000,64,100 \
  --reps 7 --json "$OUT/emb-update-16t.json" 2>&1 | tee "$OUT/emb-update-16t.txt"
step 80 python3 -m dlrm_tvm kernels bench --op embedding_bag_update --shape 1000000,64,100 \
  --optimizer rwsadagrad --reps 7 --json "$OUT/emb-update-ada-16t.json" 2>&1 | tee "$OUT/emb-update-ada-16t.txt"
step 100 python3 -m dlrm_tvm kernels bench --op embedding_bag_fwd --shape "1000000,64,100;10000000,64,1" \
  --reps 7 --json "$OUT/emb-fwd-16t.json" 2>&1 | tee "$OUT/emb-fwd-16t.txt"
log done
