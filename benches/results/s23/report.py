"""Session 23 report: medians per cell of the four builds (base, new2, pf, s23) over both rounds, ratios, ncu per kernel. Usage: python3 report.py benches/results/s23"""
import json, glob, statistics, sys, collections, csv, os
d = sys.argv[1]
names = ["base", "new2", "pf", "s23"]
vals = collections.defaultdict(lambda: collections.defaultdict(list))
for n in names:
    for f in sorted(glob.glob(f"{d}/*{n}_r*.json")):
        try: rows = json.load(open(f))
        except Exception as e: print("skip", f, e); continue
        for r in rows:
            if r.get("impl") != "tfla": continue
            key = (r["variant"], f'{r["NH"]}/{r["DQK"]}/{r["DHV"]}', r["chunk"])
            for m in ("fwd_ms", "fwdbwd_ms"):
                if r.get(m): vals[(m,) + key][n].append(r[m])
med = {}
print("metric variant heads L  base new2 pf s23  new2/base pf/base s23/base s23/pf [spreads]")
for k in sorted(vals):
    m = {n: statistics.median(vals[k][n]) if vals[k][n] else None for n in names}
    med[k] = m
    def rr(a, b): return f"{m[a]/m[b]:.3f}" if m[a] and m[b] else "-"
    sp = " ".join(f"{n}[{min(vals[k][n]):.3f}-{max(vals[k][n]):.3f}]n{len(vals[k][n])}" for n in names if vals[k][n])
    print(*k, *(f"{m[n]:.3f}" if m[n] else "-" for n in names), rr("new2","base"), rr("pf","base"), rr("s23","base"), rr("s23","pf"), sp)
tj = f"{d}/triton.json"
if os.path.exists(tj):
    t = json.load(open(tj)); rows = t["rows"] if isinstance(t, dict) and "rows" in t else t
    if isinstance(t, dict) and "rows" not in t:
        rows = [r for v in t.values() if isinstance(v, list) for r in v]
    print("\nTriton (L=128) vs tfla pf at its L=256:")
    for r in rows:
        if not isinstance(r, dict) or r.get("ref") != "tfla" or r.get("kind") != "bench": continue
        h = f'{r["NH"]}/{r["DQK"]}/{r["DHV"]}'
        for m in ("fwd_ms", "fwdbwd_ms"):
            tt = r.get(m)
            for L in (128, 256):
                ours = med.get((m, r["variant"], h, L), {}).get("pf")
                if tt and ours: print(f"  {r['variant']:10s} {h} {m:9s} L={L} tfla {ours:.3f} triton {tt:.3f} ratio {ours/tt:.3f}")
for f in sorted(glob.glob(f"{d}/*ncu_*.txt")):
    lines = [l for l in open(f) if l.startswith('"')]
    if not lines: print(f, "no csv"); continue
    r = csv.reader(lines); hdr = next(r); idx = {h: i for i, h in enumerate(hdr)}
    dd = collections.defaultdict(list)
    for row in r:
        if row[idx['Metric Name']] == 'gpu__time_duration.sum':
            dd[row[idx['Kernel Name']][:45]].append(float(row[idx['Metric Value']].replace(',', '')))
    print("\n", os.path.basename(f))
    for k, v in dd.items():
        v = sorted(v); print(f"  {k:45s} n={len(v)} med={v[len(v)//2]/1e6:.3f} ms")
