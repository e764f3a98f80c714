#!/usr/bin/env bash
# Prepared in session 24 (which got no device time: every start failed). s/ = the bundle of
# 3c49f0b (branch wip/state-c-staged: chunk_output_wg holds the block's Q slices, cf1551e, and
# bwd_state_wg reads C'_k for its chunk dot from the staging tile, 3c49f0b); q = cf1551e's
# tfla-bench (the output kernel alone); main = 1a99ec7's (main's kernels).
# Order: the GPU tests of the changed kernels, A/B, Triton TFLA in the same call, A/B, the
# sanitizers over the changed entries, ncu kernel times, A/B, the sm_80 module's backward.
# Run (a copy as devcall/go.sh): run(command="END=540 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-540}" "$here/whl"
gunzip -c $here/main-bench.gz > /tmp/main; gunzip -c $here/q-bench.gz > /tmp/q
gunzip -c $here/s/bin/bench-tfla-bench.gz > /tmp/s
for t in gpu_forward gpu_backward gpu_kernels; do gunzip -c $here/s/bin/test-$t.gz > /tmp/$t; done
chmod +x /tmp/main /tmp/q /tmp/s /tmp/gpu_*
( for b in main q; do /tmp/$b --heads 8:256:512 --points 1:256 --chunks 128 --reps 1 --no-step > $W/warm_$b.txt 2>&1; done ) &
# Correctness only: the two test binaries side by side.
run gpu_forward 150 /tmp/gpu_forward --include-ignored --test-threads=1 &
run gpu_backward 150 /tmp/gpu_backward --include-ignored --test-threads=1
wait
AB="--heads 8:256:512,8:512:512,16:128:128 --points 8:8192 --chunks 128,256 --reps 10 --no-step"
r=1; ab s q main
run s_l512 40 /tmp/s --heads 8:512:512,8:256:512 --points 8:8192 --chunks 512 --reps 10 --no-step --json $W/s_l512.json
run triton 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --points 8x8192 \
  --heads 8:512:512,8:256:512,16:128:128 --chunks 128 --no-step --no-ceilings \
  --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/triton.json
r=2; ab main q s
# Session 25 widened this step to session 23's gap (bwd_dq*, bwd_dk*, bwd_dv*: the wgmma
# row-dot form and the portable kernels) beside the changed entries, the three side by side,
# each with its own log folder (run.sh names its logs by tool).
for k in bwd_state chunk_output_wg bwd_d; do
  TFLA_LOGS=$W/logs/$k run sanitize_$k 240 bash $here/s/run.sh sanitize sm_90a $k &
done
wait
nc ncu_s_8_512_512 s 8:512:512 256 exp
nc ncu_main_8_512_512 main 8:512:512 256 exp
run gpu_kernels 30 /tmp/gpu_kernels --include-ignored --test-threads=1
r=3; ab q s main
run portable_gpu_backward 150 env TFLA_PORTABLE=1 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
