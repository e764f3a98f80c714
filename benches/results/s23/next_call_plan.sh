#!/usr/bin/env bash
# Next call (prepared in session 23). b/ = main's bundle at 1a99ec7 (kernels = b96567c: the row
# dots + D2). new2 = 0a1450e's tfla-bench (the row dots without D2), scoreswg = wip/scores-wg's
# (3f89ecc: bwd_scores_wg + stage::WgmmaRing). Fills session 23's gaps on main (memcheck,
# racecheck, synccheck over every `_wg` entry; the sm_80 module's backward; Triton TFLA in the
# same call), isolates D2 in the backward (main vs new2, ncu), and times the branch.
# Run: run(command="END=540 bash devcall/go.sh", carry=["devcall"]); END = seconds it may use.
set -u
W=$OUT/w; mkdir -p $W
here=$(cd "$(dirname "$0")" && pwd)
for b in new2 scoreswg; do gunzip -c $here/$b-bench.gz > /tmp/$b; chmod +x /tmp/$b; done
gunzip -c $here/b/bin/bench-tfla-bench.gz > /tmp/main; chmod +x /tmp/main
for t in gpu_backward gpu_kernels; do gunzip -c $here/b/bin/test-$t.gz > /tmp/$t; chmod +x /tmp/$t; done
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.memory,driver_version --format=csv > $W/card.txt
T0=$(date +%s); END=${END:-540}
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
( python3 -m pip install --quiet --disable-pip-version-check --no-deps --target /tmp/ref-site \
    --no-index --find-links $here/whl mlstm-kernels==2.0.6 fla-core==0.6.0 einops > $W/pip.txt 2>&1 ) &
export CUDA_CACHE_MAXSIZE=4294967296
( for b in main new2 scoreswg; do /tmp/$b --heads 8:256:512 --points 1:256 --chunks 128 --reps 1 --no-step > $W/warm_$b.txt 2>&1; done ) &
# (run.sh prints a sanitizer's result when it ends: TFLA_LOGS keeps each tool's log as it runs.)
export TFLA_LOGS=$W/logs; mkdir -p $TFLA_LOGS
run sanitize_wg 200 bash $here/b/run.sh sanitize sm_90a _wg
wait
run gpu_kernels 30 /tmp/gpu_kernels --include-ignored --test-threads=1
AB="--heads 8:256:512,8:512:512,16:128:128 --points 8:8192 --chunks 128,256 --reps 10 --no-step"
ab() { for b in "$@"; do run ${b}_r$r 60 /tmp/$b $AB --json $W/${b}_r$r.json; done; }
nc() { local name=$1 bin=$2 h=$3 l=$4 v=$5
  run $name 40 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    /tmp/$bin --heads $h --points 8:8192 --chunks $l --variants $v --reps 1 --no-step; }
r=1; ab main new2 scoreswg
run triton 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --points 8x8192 \
  --heads 8:512:512,8:256:512,16:128:128 --chunks 128 --no-step --no-ceilings \
  --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/triton.json
nc ncu_main_8_512_512 main 8:512:512 256 exp
nc ncu_new2_8_512_512 new2 8:512:512 256 exp
nc ncu_scoreswg_8_256_512 scoreswg 8:256:512 256 exp
r=2; ab scoreswg new2 main
run portable_gpu_backward 120 env TFLA_PORTABLE=1 /tmp/gpu_backward --include-ignored --test-threads=1
nc ncu_main_8_256_512 main 8:256:512 256 exp
nc ncu_main_l128_8_512_512 main 8:512:512 128 exp,sig_nonorm
r=3; ab new2 main scoreswg
cat $W/summary.txt
