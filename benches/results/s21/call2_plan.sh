#!/usr/bin/env bash
# PREPARED, NOT RUN (session 21: the device time ran out). Carry devcall/ with base-bench.gz (72d8c8a's tfla-bench) and b/ (the branch's bundle: run.sh, bin/bench-tfla-bench.gz, bench-tfla-sanitize.gz, test-gpu_{forward,backward,kernels,varlen}.gz, xtask).
# Call 2 (session 21): dq and dk on wgmma form their row dots from staged rows of q, k (three
# stages); chunk_output_wg back to the base with the issue_or_empty mend only. Binaries:
# base = 72d8c8a (main), new2 = the branch 79b1ba7. Tests, sanitizers over the _wg
# kernels, A/B of forward and forward+backward, per-kernel times (ncu) of new2.
set -u
W=$OUT/w; mkdir -p $W
here=$(cd "$(dirname "$0")" && pwd)
for b in base; do gunzip -c $here/$b-bench.gz > /tmp/$b; chmod +x /tmp/$b; done
gunzip -c $here/b/bin/bench-tfla-bench.gz > /tmp/new2; chmod +x /tmp/new2
for t in gpu_forward gpu_backward gpu_kernels gpu_varlen; do
  gunzip -c $here/b/bin/test-$t.gz > /tmp/$t; chmod +x /tmp/$t
done
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.memory,driver_version --format=csv > $W/card.txt
T0=$(date +%s); END=${END:-300}
run() {
  local name=$1 t=$2; shift 2
  local left=$(( END - ($(date +%s)-T0) ))
  if [ $left -lt 15 ]; then echo "$name skipped (deadline)" >> $W/summary.txt; return; fi
  [ $t -gt $left ] && t=$left
  local s=$(date +%s); timeout $t "$@" > $W/$name.txt 2>&1; echo "$name rc=$? $(( $(date +%s)-s ))s" >> $W/summary.txt
}
pack() { echo "total $(( $(date +%s)-T0 ))s" >> $W/summary.txt; tar czf $OUT/out.tgz -C $OUT w; }
trap pack EXIT
cd $here/..
run gpu_backward 150 /tmp/gpu_backward --include-ignored --test-threads=1 &
run gpu_forward 100 /tmp/gpu_forward --include-ignored --test-threads=1 &
run gpu_varlen 60 /tmp/gpu_varlen --include-ignored --test-threads=1 &
wait
run gpu_kernels 30 /tmp/gpu_kernels --include-ignored --test-threads=1
run sanitize 90 bash $here/b/run.sh sanitize sm_90a _wg
AB="--heads 8:256:512,8:512:512 --points 8:8192 --chunks 128,256 --reps 10 --no-step"
ab() { for b in "$@"; do run ${b}_r$r 60 /tmp/$b $AB --json $W/${b}_r$r.json; done; }
r=1; ab new2 base
for h in 8:256:512 8:512:512; do
  run ncu_${h//:/_} 40 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    /tmp/new2 --heads $h --points 8:8192 --chunks 256 --variants exp --reps 1 --no-step
done
r=2; ab base new2
run ncu_l128_8_512_512 40 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  /tmp/new2 --heads 8:512:512 --points 8:8192 --chunks 128 --variants exp,sig_nonorm --reps 1 --no-step
r=3; ab new2 base
cat $W/summary.txt
