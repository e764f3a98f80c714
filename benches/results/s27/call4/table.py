"""The wide heads' paper-grid table of BENCHMARKS.md (session 27, call 4) from this call's files:
per cell tfla's median at its best L (the card idle 1 s before each timed row, `--cool-ms
1000`) with the mean SM clock of that row, Triton TFLA's best of the same call, the floors
`cargo xtask report --rows` wrote (rows.json), and memory. Run from this folder:
python3 table.py > table.md"""

import json

tfla = json.load(open("tfla.json"))
refs = [
    x
    for x in json.load(open("refs.json"))["rows"]
    if x.get("kind") == "bench" and x["ref"] == "tfla" and not x.get("error")
]
floors = {}
for r in json.load(open("rows.json"))["rows"]:
    k = (r["variant"], r["NH"], r["DQK"], r["DHV"], r["B"], r["S"], r["pass"], r["chunk"])
    floors[k] = r["floor_ms"]


def key(x):
    return (x["variant"], x["NH"], x["DQK"], x["DHV"], x["B"], x["S"])


cells: dict = {}
for x in tfla:
    cells.setdefault(key(x), {})[x["chunk"]] = x
ref: dict = {}
for x in refs:
    ref.setdefault(key(x), []).append(x)

print(
    "| variant | NH/DQK/DHV | B | S | fwd: tfla ms (L) | MHz | × floor | Triton ms | ratio "
    "| fwd+bwd: tfla ms (L) | MHz | × floor | Triton ms | ratio | tfla alloc GB | Triton peak GB "
    "| memory ratio |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in sorted(cells, key=lambda k: (k[0], -k[2] * k[3], -k[4])):
    c = cells[k]
    lf = min(c, key=lambda L: c[L]["fwd_ms"])
    lb = min(c, key=lambda L: c[L]["fwdbwd_ms"])
    f, b = c[lf]["fwd_ms"], c[lb]["fwdbwd_ms"]
    xf, xb = f / floors[k + ("fwd", lf)], b / floors[k + ("fwdbwd", lb)]
    alloc = c[lb]["fwdbwd_alloc_bytes"] / 1e9
    rf = min(r["fwd_ms"] for r in ref[k])
    rb = min(r["fwdbwd_ms"] for r in ref[k])
    peak = [r["peak_mem_bytes"] for r in ref[k] if r["fwdbwd_ms"] == rb][0] / 1e9
    v, nh, dq, dv, B, S = k
    print(
        f"| {v} | {nh}/{dq}/{dv} | {B} | {S} | {f:.3f} ({lf}) | {c[lf]['fwd_sm_mhz']} | {xf:.2f} "
        f"| {rf:.3f} | **{f / rf:.3f}** | {b:.3f} ({lb}) | {c[lb]['fwdbwd_sm_mhz']} | {xb:.2f} "
        f"| {rb:.3f} | **{b / rb:.3f}** | {alloc:.2f} | {peak:.2f} | {alloc / peak:.2f} |"
    )
