"""The 16/128/128 paper-grid table of BENCHMARKS.md (session 30, call 2) from that call's files:
per cell the mean of the two tfla rounds' medians (L = 128), Triton TFLA's time of the same call,
the floors `cargo xtask report --rows` wrote (rows_r*.json), memory, and FLA's
chunk_simple_gla forward beside the no-norm rows. Run from the call's folder:
python3 ../table.py > table.md"""

import json
import statistics as st

rounds = json.load(open("tfla_r1.json")) + json.load(open("tfla_r2.json"))
ref_rows = [x for x in json.load(open("refs.json"))["rows"] if x.get("kind") == "bench"]
floors = {}
for f in ("rows_r1.json", "rows_r2.json"):
    for r in json.load(open(f))["rows"]:
        k = (r["variant"], r["NH"], r["DQK"], r["DHV"], r["B"], r["S"], r["pass"], r["chunk"])
        floors.setdefault(k, []).append(r["floor_ms"])


def key(x, variant=None):
    return (variant or x["variant"], x["NH"], x["DQK"], x["DHV"], x["B"], x["S"])


cells: dict = {}
for x in rounds:
    cells.setdefault(key(x), []).append(x)
tri: dict = {}
fla: dict = {}
for x in ref_rows:
    if x["ref"] == "tfla" and x.get("fwdbwd_ms"):
        tri.setdefault(key(x), []).append(x)
    if x["ref"] == "fla" and x.get("fwd_ms"):
        fla.setdefault(key(x, "sig_nonorm"), []).append(x)

print(
    "| variant | B | S | fwd: tfla ms | × floor | Triton ms | ratio | FLA ms | ratio "
    "| fwd+bwd: tfla ms | TFLOP/s | × floor | Triton ms | ratio | tfla alloc GB "
    "| Triton peak GB | memory ratio |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in sorted(cells, key=lambda k: (k[0], -k[4])):
    c = cells[k]
    L = c[0]["chunk"]
    f = st.mean(r["fwd_ms"] for r in c)
    b = st.mean(r["fwdbwd_ms"] for r in c)
    tf = st.mean(r["fwdbwd_tflops"] for r in c)
    xf = f / st.mean(floors[k + ("fwd", L)])
    xb = b / st.mean(floors[k + ("fwdbwd", L)])
    alloc = st.mean(r["fwdbwd_alloc_bytes"] for r in c) / 1e9
    v, nh, dq, dv, B, S = k
    if k in tri:
        rf = min(r["fwd_ms"] for r in tri[k])
        rb = min(r["fwdbwd_ms"] for r in tri[k])
        peak = [r["peak_mem_bytes"] for r in tri[k] if r["fwdbwd_ms"] == rb][0] / 1e9
        t = f"{rf:.3f} | **{f / rf:.2f}**"
        tb = f"{rb:.3f} | **{b / rb:.2f}** | {alloc:.2f} | {peak:.2f} | {alloc / peak:.2f}"
    else:
        t, tb = "— | —", f"— | — | {alloc:.2f} | — | —"
    fl = f"{fla[k][0]['fwd_ms']:.3f} | **{f / fla[k][0]['fwd_ms']:.2f}**" if k in fla else "— | —"
    print(f"| {v} | {B} | {S} | {f:.3f} | {xf:.2f} | {t} | {fl} | {b:.3f} | {tf:.0f} | {xb:.2f} | {tb} |")
