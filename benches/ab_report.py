"""Report of one scripted device call (benches/device_call.sh): per cell the median of each
build's A/B rounds and their ratios to the first build named, the Triton TFLA times of the same
call beside tfla's, the ncu kernel times, and the kernels of `tfla-bench --trace` rows as they
ran back to back against the call's time. A round timed with the card's clock held for power
(`tfla-bench`'s `*`, JSON `*_power_capped` ≥ 0.1) is counted after its build's spread as `*N`:
such rounds compare the power limit, not the kernels (time them with `--cool-ms`).

    python3 benches/ab_report.py DIR BASE NAME...   # e.g. benches/results/s25 main q s
    python3 benches/ab_report.py DIR                # the Triton, ncu and trace parts alone
"""
import collections
import csv
import glob
import json
import os
import statistics
import sys

d, names = sys.argv[1], sys.argv[2:]
base = names[0] if names else None


def cell(r):
    """A row's variant, heads (NH/DQK/DHV) and (B, S) point: what the builds are compared at."""
    return (r["variant"], f'{r["NH"]}/{r["DQK"]}/{r["DHV"]}', f'{r["B"]}x{r["S"]}')


vals = collections.defaultdict(lambda: collections.defaultdict(list))
capped = collections.defaultdict(collections.Counter)
for n in names:
    for f in sorted(glob.glob(f"{d}/*{n}_r*.json")):
        try:
            rows = json.load(open(f))
        except Exception as e:  # a round cut off by the call's limit leaves a partial file
            print("skip", f, e)
            continue
        for r in rows:
            if r.get("impl") != "tfla":
                continue
            key = cell(r) + (r["chunk"],)
            for m in ("fwd_ms", "fwdbwd_ms"):
                if r.get(m):
                    vals[(m,) + key][n].append(r[m])
                    if r.get(m.replace("_ms", "_power_capped"), 0) >= 0.1:
                        capped[(m,) + key][n] += 1
med = {}
if names:
    print("metric variant heads BxS L", *names, *(f"{n}/{base}" for n in names[1:]), "[min-max, n]")
for k in sorted(vals):
    m = {n: statistics.median(vals[k][n]) if vals[k][n] else None for n in names}
    med[k] = m
    ratios = [f"{m[n] / m[base]:.3f}" if m[n] and m[base] else "-" for n in names[1:]]
    spread = " ".join(
        f"{n}[{min(v):.3f}-{max(v):.3f}]n{len(v)}" + (f"*{c}" if (c := capped[k][n]) else "")
        for n in names
        if (v := vals[k][n])
    )
    print(*k, *(f"{m[n]:.3f}" if m[n] else "-" for n in names), *ratios, spread)
for tj in sorted(glob.glob(f"{d}/*triton*.json")):
    t = json.load(open(tj))
    rows = t.get("rows", t) if isinstance(t, dict) else t
    if isinstance(rows, dict):
        rows = [r for v in rows.values() if isinstance(v, list) for r in v]
    print(f"\n{os.path.basename(tj)}: Triton TFLA (its L) against each build's best L")
    for r in rows:
        if not isinstance(r, dict) or r.get("ref") != "tfla" or r.get("kind") != "bench":
            continue
        variant, h, point = cell(r)
        for metric in ("fwd_ms", "fwdbwd_ms"):
            if not (tt := r.get(metric)):
                continue
            for n in names:
                best = [
                    (m[n], k[4])
                    for k, m in med.items()
                    if k[:4] == (metric, variant, h, point) and m[n]
                ]
                if best:
                    ours, L = min(best)
                    print(f"  {variant:10s} {h:9s} {point:8s} {metric:9s} {n:5s} L={L} tfla {ours:.3f}"
                          f" triton {tt:.3f} ratio {ours / tt:.3f}")
for f in sorted(glob.glob(f"{d}/*ncu_*.txt")):
    lines = [line for line in open(f) if line.startswith('"')]
    if not lines:
        print(f, "no csv")
        continue
    rd = csv.reader(lines)
    idx = {h: i for i, h in enumerate(next(rd))}
    per = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rd:
        value = row[idx["Metric Value"]].replace(",", "")
        try:
            per[row[idx["Kernel Name"]][:45]][row[idx["Metric Name"]]].append(float(value))
        except ValueError:  # empty or "n/a" where ncu could not collect the metric
            pass
    print("\n", os.path.basename(f), "(median ms, L2 GB, DRAM GB)")
    for k, ms in per.items():
        def mid(name):
            v = sorted(ms.get(name, [0.0]))
            return v[len(v) // 2]
        print(f"  {k:45s} n={len(ms.get('gpu__time_duration.sum', []))} {mid('gpu__time_duration.sum') / 1e6:.3f} ms"
              f"  L2 {mid('lts__t_bytes.sum') / 1e9:.2f}  DRAM {mid('dram__bytes.sum') / 1e9:.2f}")
for f in sorted(glob.glob(f"{d}/*.json")):
    try:
        rows = json.load(open(f))
    except Exception:
        continue
    if not isinstance(rows, list):
        continue
    traced = [r for r in rows if isinstance(r, dict) and ("trace_fwd" in r or "trace_fwdbwd" in r)]
    if not traced:
        continue
    print(f"\n {os.path.basename(f)}: kernels back to back (median ms, [gap before it])")
    for r in traced:
        head = f'{r["variant"]:10s} {r["NH"]}/{r["DQK"]}/{r["DHV"]} B={r["B"]} S={r["S"]} L={r["chunk"]}'
        for p, timed in (("fwd", "fwd_ms"), ("fwdbwd", "fwdbwd_ms")):
            t = r.get(f"trace_{p}")
            if not t:
                continue
            call = r.get(timed, 0.0)
            kernels = sum(k["ms"] for k in t)
            gaps = sum(k["gap_ms"] for k in t[1:])
            print(f"  {head} {p:6s} call {call:.3f} = kernels {kernels:.3f} + gaps {gaps:.3f}"
                  f" {call - kernels - gaps:+.3f}")
            for k in t:
                name = k["name"].removeprefix("mlstm_")
                gap = f" [+{k['gap_ms']:.3f}]" if k["gap_ms"] >= 1e-3 else ""
                print(f"      {name:40s} {k['ms']:.3f}{gap}")
