"""Call 1's A/B (`call1/ab.txt`): each candidate's forward and forward+backward time over main's
round-2 row (main's round 1 ran out of its limit in the driver's compile of its module), one
column per candidate round. Run from this folder: python3 ab.py > call1/ab.txt"""

import json


def load(f):
    return {(r["variant"], r["B"], r["S"]): r for r in json.load(open(f"call1/{f}"))}


m = load("m_r2.json")
for name, files in [
    ("fma", ["fma_r1.json", "fma_r2.json"]),
    ("st", ["st_r2.json"]),
    ("s64", ["s64_r1.json", "s64_r2.json"]),
]:
    print(f"== {name} / main (fwd | fwd+bwd), rounds: {', '.join(files)}")
    rs = [load(f) for f in files]
    for k in m:
        if k not in rs[0]:
            continue
        fw = " ".join(f"{r[k]['fwd_ms'] / m[k]['fwd_ms']:.3f}" for r in rs)
        fb = " ".join(f"{r[k]['fwdbwd_ms'] / m[k]['fwdbwd_ms']:.3f}" for r in rs)
        print(f"{k[0]:<11}{k[1]:>3}{k[2]:>6}  fwd {fw} | f+b {fb}")
