#!/usr/bin/env bash
# Call 2: the merge candidate (branch wip/s33-merge: main + FMA contraction + full-sector dq,
# dk, dv stores; call 1's A/B kept both, rejected the 64-column state tile). Its bundle in
# devcall/mg (`cargo xtask bundle --xz` on the branch). In order of what must not be cut:
#  1. every test binary through the sm_90a module (`run.sh tests`: FMA changes every
#     kernel's rounding, so the forward, backward and driver-compile tests must hold);
#  2. every GPU test through the sm_80 module at 227 KB (`run.sh portable 227`): the
#     refactored `bwd_chunk` (mma.sync), which no GPU has run since 7040b71, and the new store;
#  3. compute-sanitizer's four tools over the bwd_chunk kernels, both modules;
#  4. the 16/128/128 paper grid, L = 128, tfla in two rounds around Triton TFLA at its fair
#     best (compare.py: exp without LLVM optimizations, which it needs to compile, sig and
#     no-norm with them), as in `s32/call2_plan.sh`.
# Run: run(command="END=570 bash benches/results/s33/call2_plan.sh", carry=["devcall/mg",
#   "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-570}" devcall/whl
unpack devcall/mg f=bench-tfla-bench
run tests 200 bash devcall/mg/run.sh tests
run portable 200 bash devcall/mg/run.sh portable 227
run sanitize 90 bash devcall/mg/run.sh sanitize both bwd_chunk
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 45 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/refs.json
run tfla_r2 45 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
grep -h "passed\|failed" $W/tests.txt $W/portable.txt $W/sanitize.txt | tail -8
cat $W/summary.txt
