#!/usr/bin/env bash
# The next session's first call (built in session 33, not run: its device time was spent).
#   m = main's kernels (2d41bb6): devcall/m34 (`bench-tfla-bench` of `cargo xtask bundle --xz`
#       on 2d41bb6; session 33's devcall/mg/bin holds it).
#   c = branch wip/s34-candidate: main + the wide `chunk_fused` tile (a whole 128-wide head per
#       block beyond 66 heads, QKᵀ once per head; branch wip/wide-s33, session 30's x rebased
#       on main, now with FMA contraction: its mLSTMexp narrow tile ran 13% slower than main's
#       in session 30, which is the question) + `bwd_max_path` as a tiled scan (branch
#       wip/max-path-tiles; 0.118 ms at (4, 16384) in session 32's trace, 0.03–0.045 elsewhere)
#       + each kernel entry loaded as a module of its own on first use (wip/lazy-modules: the
#       driver compiled the whole 16 MB sm_90a text, 40–65 s, before a process's first kernel;
#       ptxas gives every entry alone the resources it has in the whole module).
#       Full bundle in devcall/c34 (`cargo xtask bundle --xz` on the branch).
# Reading the A/B: the forward rows are the wide tile's alone (grid points (32, 2048), (16,
# 4096), (8, 8192) = 512, 256, 128 heads take it; (4, 16384) = 64 heads the narrow tile);
# sig and no-norm forward+backward have no max path, so exp's forward+backward change less
# sig's is the scan's.
# Then c's every test binary (sm_90a). Call 2 (in this file's second half, run as
# `PART=2`): c through the sm_80 module and compute-sanitizer over `chunk_fused` and
# `bwd_max_path`, both modules; then, if c is merged, the 16/128/128 grid against Triton.
# Run: run(command="END=560 bash benches/results/s33/next_call_plan.sh", carry=["devcall/m34",
#   "devcall/c34", "devcall/whl"]); then the same with PART=2.
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-560}" devcall/whl
unpack devcall/m34 m=bench-tfla-bench
unpack devcall/c34 c=bench-tfla-bench
if [ "${PART:-1}" = 1 ]; then
  # The driver compiles what it loads (main: the whole module, 40–65 s; c: the entries one
  # 128/128 forward+backward runs): these two rows' times in summary.txt are each build's
  # first-call wait on an empty cache, and the rows after them load from the cache.
  export CUDA_CACHE_PATH=/tmp/tfla-cuda-cache
  run jit_m 150 /tmp/m --heads 16:128:128 --points 1:1024 --chunks 128 --reps 1 --no-step
  run jit_c 150 /tmp/c --heads 16:128:128 --points 1:1024 --chunks 128 --reps 1 --no-step
  P="--heads 16:128:128 --points 32:2048,16:4096,8:8192,4:16384 --chunks 128 --reps 10 --no-step --cool-ms 200"
  for r in 1 2; do
    run m_r$r 60 /tmp/m $P --json $W/m_r$r.json
    run c_r$r 60 /tmp/c $P --json $W/c_r$r.json
  done
  run tests 220 bash devcall/c34/run.sh tests
else
  run portable 200 bash devcall/c34/run.sh portable 227
  run sanitize_fused 90 bash devcall/c34/run.sh sanitize both chunk_fused
  run sanitize_max_path 90 bash devcall/c34/run.sh sanitize both max_path
  grid c 16:128:128 128
fi
cat $W/summary.txt
