#!/usr/bin/env bash
# Prepared in session 29, not run (its last 334 s of device time went to refused starts): the
# wide chunk_fused tile with the hybrid narrow tile, then main's 128/128 rows against Triton
# TFLA and FLA in one call.
#
# Why: session 29's call 1 (benches/results/s29/call1/) ran session 28's g and h builds. The
# wide tile (beyond 66 heads) took the 128/128 forward at (8, 8192) from 0.798 to 0.682 ms (exp),
# 0.768 to 0.637 (sig), 0.714 to 0.612 (no-norm) in h; but at 64 heads (the narrow tile) g, which
# holds Q's fragments in registers, ran exp 9.5% slower than main, and h, which reads them per
# product, ran sig 1.5% and no-norm 6.1% slower. fused128_v3.patch (seven commits; `git am -3` on
# main) takes g's code for the sig gates' narrow tile (their PTX is g's, normalized labels) and
# reads Q per product in mLSTMexp's narrow tile, whose PTX is neither g's nor h's (255 registers,
# h had 243): unmeasured.
# Bundles: m = main: `cargo xtask bundle --out devcall/m --xz`; x = main with the patch:
# `git switch -c wip/fused-hybrid && git am -3 benches/results/s29/fused128_v3.patch &&
# cargo xtask bundle --out devcall/x --xz`; keep bin/{bench-tfla-bench} of m,
# bin/{bench-tfla-bench, bench-tfla-sanitize, test-gpu_forward, test-gpu_varlen, xtask} and
# run.sh of x, the wheels in devcall/whl (`pip download --no-deps mlstm-kernels==2.0.6
# fla-core==0.6.0 einops`), this file as devcall/go.sh; keep test-gpu_backward of m too.
# (Session 29 left the three built from a946794 in devcall/, which git ignores; its review
# then changed bwd_chunk_wg's code (a1e461e: the same arithmetic, not run on a GPU), so
# rebuild them from main, and m's backward tests, in part 2, check that change.)
# y = main with s29/chunk_wg_no_barrier.patch (bwd_chunk_wg without the block barrier between
# its dq and its dv/dk passes, which held warpgroup 0 for a sixth of the kernel; the
# warpgroup index broadcast from lane 0 so that ptxas does not serialize the wgmmas behind the
# passes' warpgroup-dependent loops, C7520): `git switch -c wip/chunk-wg-3 main && git am -3
# benches/results/s29/chunk_wg_no_barrier.patch && cargo xtask bundle --out devcall/y --xz`;
# keep bin/{bench-tfla-bench, test-gpu_backward}.
# Questions, in order:
#  1. x's forward GPU tests (first: the driver's compile of x's module lands in the cache);
#  2. m against x, forwards alone at 64 heads (narrow) and 128 (wide), three variants, two
#     rounds; merge x only if every narrow cell is within 1% of m's;
#  3. compute-sanitizer over chunk_fused;
#  3b. y's backward GPU tests, and m against y, forward+backward at 16/128/128 (8, 8192), three
#     variants, two rounds; merge y if faster in every cell;
#  4. main (m) over the paper grid at 16/128/128 (L = 128, 256), two rounds around Triton TFLA's
#     three variants (compare.py, fair anchors) and FLA's chunk_simple_gla: the same-run ratios
#     of the 128/128 forward+backward with bwd_chunk_wg (session 29 measured it against main
#     only; its ratios in BENCHMARKS are against session 26's Triton times).
# Two calls (about 800 s in all; one call allows 600): this file runs 1-3b (about 450 s), with
# PART=2 it runs main's backward tests and 4 (about 500 s).
# Run: run(command="END=580 bash devcall/go.sh", carry=["devcall"]), then
#      run(command="PART=2 END=580 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-580}" "$here/whl"
unpack $here/m m=bench-tfla-bench
if [ "${PART:-1}" = 1 ]; then
unpack $here/x x=bench-tfla-bench gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen
run forward_tests_x 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests_x 60 /tmp/gpu_varlen --include-ignored --test-threads=1
AB="--heads 16:128:128 --points 4:8192,8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step --no-bwd"
for r in 1 2; do ab m x; done
python3 benches/ab_report.py $W m x > $W/ab.txt 2>&1
run sanitize_x 80 bash $here/x/run.sh sanitize sm_90a chunk_fused
unpack $here/y y=bench-tfla-bench gpu_backward_y=test-gpu_backward
run backward_tests_y 200 /tmp/gpu_backward_y --include-ignored --test-threads=1
AB="--heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step"
ln -sf /tmp/m /tmp/mb
for r in 3 4; do ab mb y; done
python3 benches/ab_report.py $W mb y >> $W/ab.txt 2>&1
else
unpack $here/m gpu_backward_m=test-gpu_backward
run backward_tests_m 200 /tmp/gpu_backward_m --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 90 /tmp/m --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 200 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm,fla:simple_gla --dtype bf16 --json $W/refs.json
run tfla_r2 90 /tmp/m --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
fi
cat $W/summary.txt; [ -f $W/ab.txt ] && cat $W/ab.txt
