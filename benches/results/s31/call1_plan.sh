#!/usr/bin/env bash
# Run in session 32 (results in s32/call1/). NOT RUN in session 31: seven starts were refused (721 s of the session's device time), then
# new loans were paused. The next session's first call. Its binaries are in devcall/ (ignored
# by git); to rebuild them: stag = `cargo xtask bundle` on branch wip/stagger (main +
# s31/stagger.patch), d1s = on branch wip/d1-stag (main + s31/chunk_passes.patch + the same
# switch); devcall/stag/bin/bench-stag.xz is stag's tfla-bench, devcall/d1s/bin/ d1s's
# tfla-bench, gpu_kernels and gpu_backward tests.
# Call 1, two questions on one H100:
# 1. Does staggering bwd_chunk_wg's first wave overlap its load and multiply phases? One block
#    per SM stages its six operands (192 KB, about 8.6 µs at a 132nd of the copy bandwidth),
#    then multiplies (about 13 µs); if every SM loads at once the loads never overlap another
#    SM's products. The builds hold the grid's first %nsmid blocks in G phases of D ns
#    (TFLA_STAGGER = G << 24 | D; 0 = off, one untaken branch). s31/stagger_model.py's
#    prediction: 1.34 ms in step, 1.08 with G = 2, 0.89-0.98 with G ≥ 8 (the per-SM cap on
#    bandwidth decides).
# 2. Is the chunk-gradient passes' refactor (one driver in bwd_chunk_terms over ChunkProducts)
#    as fast as main's kernels, and correct? Builds: stag = main + the stagger switch (branch
#    wip/stagger), d1s = the refactor + the same switch (branch wip/d1-stag).
# Rows: 16/128/128 at (8, 8192), L = 128, fwd+bwd, two rounds; the launch trace of three
# settings; d1s's backward GPU tests and the driver-compile test.
# Run: run(command="END=460 bash benches/results/s31/call1_plan.sh", carry=["devcall"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-460}" devcall/whl
unpack devcall/stag stag=bench-stag
unpack devcall/d1s d1s=bench-tfla-bench gpu_kernels=test-gpu_kernels gpu_backward=test-gpu_backward
A="--heads 16:128:128 --points 8:8192 --chunks 128 --reps 20 --no-step --cool-ms 200"
run jit_stag 90 env TFLA_STAGGER=0 /tmp/stag $A --variants exp --no-bwd
run kernels_test_d1s 120 /tmp/gpu_kernels --include-ignored --test-threads=1
S="$((2<<24|11000)) $((2<<24|6000)) $((4<<24|5000)) $((8<<24|3000)) $((16<<24|1400)) $((132<<24|170))"
for r in 1 2; do
  run "stag_0_r$r" 30 env TFLA_STAGGER=0 /tmp/stag $A --json $W/stag_0_r$r.json
  for g in 0 $S; do
    run "d1s_${g}_r$r" 30 env TFLA_STAGGER=$g /tmp/d1s $A --json $W/d1s_${g}_r$r.json
  done
done
for g in 0 $((2<<24|11000)) $((132<<24|170)); do
  run "trace_$g" 30 env TFLA_STAGGER=$g /tmp/d1s $A --variants exp --trace
done
run backward_tests_d1s 200 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
