#!/usr/bin/env bash
# The next session's first call (built in session 32, not run: its device time ran out). Two
# candidates against main, A/B in one call, then the checks the riskier one needs to merge.
#   m   = main's kernels (7040b71): devcall/n2, `cargo xtask bundle --xz` on 7040b71.
#   fma = branch wip/fma (d5066fa): FMA contraction for every kernel (`-Cllvm-args=
#         -nvptx-fma-level=2`; no kernel had an `fma`: ncu counted 126 M unfused FP32 of
#         bwd_chunk_wg's 424 M instructions). Changes every kernel's arithmetic: its forward,
#         backward and driver-compile GPU tests run here (their bounds must hold).
#   st  = branch wip/store-sectors (0e5fe6c): the chunk kernels store dq, dk, dv 8 bytes a lane,
#         a full 32-byte sector per row (ncu: the 4-byte stores used 16 of 32 bytes). Its
#         backward tests and compute-sanitizer over bwd_chunk* are the second call below.
# Bundles: devcall/fma (bench, gpu_forward, gpu_backward, gpu_kernels), devcall/st (bench,
# sanitize, gpu_backward, xtask, run.sh); rebuild with `cargo xtask bundle --xz` on the branch.
# Rows: 16/128/128 at (8, 8192), L = 128, every variant, and 8/512/512 exp at L = 256 (FMA
# touches the wide kernels too), two rounds.
# Run: run(command="END=540 bash benches/results/s32/next_call_plan.sh", carry=["devcall/n2",
#   "devcall/fma", "devcall/st", "devcall/whl"]).
# Second call: st's checks (`bash devcall/st/run.sh sanitize sm_90a bwd_chunk` and st's
# gpu_backward, about 130 s), with whichever candidate won merged first; and main's
# `bwd_chunk` (mma.sync) through the sm_80 module, which the chunk-passes refactor (7040b71)
# changed and no GPU has run yet (an H100's sm_90a module takes `bwd_chunk_wg` wherever the
# chunk kernel applies): `TFLA_PORTABLE=1` over devcall/n's gpu_backward and
# `bash devcall/n/run.sh sanitize sm_80 bwd_chunk` (about 150 s).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-540}" devcall/whl
unpack devcall/n2 m=bench-tfla-bench
unpack devcall/fma fma=bench-tfla-bench fma_forward=test-gpu_forward fma_backward=test-gpu_backward \
  fma_kernels=test-gpu_kernels
unpack devcall/st st=bench-tfla-bench
A="--heads 16:128:128 --points 8:8192 --chunks 128 --reps 20 --no-step --cool-ms 200"
Wd="--heads 8:512:512 --points 8:8192 --chunks 256 --variants exp --reps 10 --no-step --cool-ms 500"
for r in 1 2; do
  for b in m fma st; do
    run "${b}_r$r" 80 /tmp/$b $A --json $W/${b}_r$r.json  # round 1 includes the module's JIT
    run "${b}_wide_r$r" 30 /tmp/$b $Wd --json $W/${b}_wide_r$r.json
  done
done
run fma_kernels 60 /tmp/fma_kernels --include-ignored --test-threads=1
run fma_forward 120 /tmp/fma_forward --include-ignored --test-threads=1
run fma_backward 150 /tmp/fma_backward --include-ignored --test-threads=1
cat $W/summary.txt
