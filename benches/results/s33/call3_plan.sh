#!/usr/bin/env bash
# Call 3: the FMA contraction at the wide heads. Call 1 timed fma's 8/512/512 exp
# forward+backward (L = 256) 2.5% slower than main's in round 1 and 0.2% in round 2 (main's row
# there held for power): main (devcall/n2) against the merge (devcall/mg), alternated three
# times, each row from an idle card (--cool-ms 1500).
# Run: run(command="END=200 bash benches/results/s33/call3_plan.sh", carry=["devcall/n2",
#   "devcall/mg/bin/bench-tfla-bench.xz", "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-200}" devcall/whl
unpack devcall/n2 m=bench-tfla-bench
unpack devcall/mg mg=bench-tfla-bench
Wd="--heads 8:512:512 --points 8:8192 --chunks 256 --variants exp --reps 10 --no-step --cool-ms 1500"
for r in 1 2 3; do
  run m_wide_r$r 60 /tmp/m $Wd --json $W/m_wide_r$r.json
  run mg_wide_r$r 60 /tmp/mg $Wd --json $W/mg_wide_r$r.json
done
cat $W/summary.txt
