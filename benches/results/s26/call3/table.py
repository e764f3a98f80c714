"""The paper-grid table of BENCHMARKS.md (session 26) from this call's files: per cell the mean
of the two tfla rounds' medians at the L best on that mean, Triton TFLA's best of the same call,
the floors `cargo xtask report --rows` wrote (rows_r*.json), and memory. Run from this folder:
python3 table.py > table.md"""

import json
import statistics as st

rounds = json.load(open("tfla_r1.json")) + json.load(open("tfla_r2.json"))
refs = [
    x
    for x in json.load(open("refs.json"))["rows"]
    if x.get("kind") == "bench" and x["ref"] == "tfla" and not x.get("error")
]
floors = {}
for f in ("rows_r1.json", "rows_r2.json"):
    for r in json.load(open(f))["rows"]:
        k = (r["variant"], r["NH"], r["DQK"], r["DHV"], r["B"], r["S"], r["pass"], r["chunk"])
        floors[k] = r["floor_ms"]


def key(x):
    return (x["variant"], x["NH"], x["DQK"], x["DHV"], x["B"], x["S"])


cells: dict = {}
for x in rounds:
    cells.setdefault(key(x), {}).setdefault(x["chunk"], []).append(x)
ref: dict = {}
for x in refs:
    ref.setdefault(key(x), []).append(x)

print(
    "| variant | NH/DQK/DHV | B | S | fwd: tfla ms (L) | × floor | Triton ms | ratio "
    "| fwd+bwd: tfla ms (L) | × floor | Triton ms | ratio | tfla alloc GB | Triton peak GB "
    "| memory ratio |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in sorted(cells, key=lambda k: (k[0], -k[2] * k[3], -k[4])):
    c = cells[k]

    def best(m):
        return min(((L, st.mean(r[m] for r in rs)) for L, rs in c.items()), key=lambda p: p[1])

    lf, f = best("fwd_ms")
    lb, b = best("fwdbwd_ms")
    xf, xb = f / floors[k + ("fwd", lf)], b / floors[k + ("fwdbwd", lb)]
    alloc = st.mean(r["fwdbwd_alloc_bytes"] for r in c[lb]) / 1e9
    rf = min(r["fwd_ms"] for r in ref[k])
    rb = min(r["fwdbwd_ms"] for r in ref[k])
    peak = [r["peak_mem_bytes"] for r in ref[k] if r["fwdbwd_ms"] == rb][0] / 1e9
    v, nh, dq, dv, B, S = k
    print(
        f"| {v} | {nh}/{dq}/{dv} | {B} | {S} | {f:.3f} ({lf}) | {xf:.2f} | {rf:.3f} | **{f / rf:.2f}** "
        f"| {b:.3f} ({lb}) | {xb:.2f} | {rb:.3f} | **{b / rb:.2f}** | {alloc:.2f} | {peak:.2f} "
        f"| {alloc / peak:.2f} |"
    )
