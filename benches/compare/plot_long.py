"""Long-context plot: time per token and memory against S at B = 1 (`--grid long`).

Reads tfla-bench's JSON (and, optionally, compare.py's for the Triton TFLA kernels of the same
run) and draws, per head configuration, the best chunk size's time per token of the forward and
of forward+backward, and the memory a call allocates (tfla: outputs, gradients and workspace;
Triton: the peak PyTorch saw), both against S on log axes. Flat time per token and memory
linear in S are what a chunkwise kernel should show.

    python3 benches/compare/plot_long.py RESULTS/tfla.json [--refs RESULTS/refs.json]
        [--variant exp] [--out long.png]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

Point = tuple[int, int, int]  # (NH, DQK, DHV)


def best_by_s(rows: list[dict], ms_key: str, mem_key: str) -> dict[Point, dict[int, tuple[float, float]]]:
    """(NH, DQK, DHV) -> S -> (µs per token, GB) of the fastest chunk size of each B = 1 call."""
    out: dict[Point, dict[int, tuple[float, float]]] = defaultdict(dict)
    for r in rows:
        ms = r.get(ms_key)
        if ms is None or r.get("B") != 1:
            continue
        head = (r["NH"], r["DQK"], r["DHV"])
        us_per_token = 1e3 * ms / r["S"]
        gb = (r.get(mem_key) or 0) / 1e9
        if r["S"] not in out[head] or us_per_token < out[head][r["S"]][0]:
            out[head][r["S"]] = (us_per_token, gb)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tfla", type=Path, help="tfla-bench --json output")
    ap.add_argument("--refs", type=Path, help="compare.py --json output of the same run")
    ap.add_argument("--variant", default="exp", choices=["exp", "sig", "sig_nonorm"])
    ap.add_argument("--out", type=Path, default=Path("long.png"))
    args = ap.parse_args()

    ours = [r for r in json.loads(args.tfla.read_text()) if r.get("variant") == args.variant]
    series = {
        "tfla forward": best_by_s(ours, "fwd_ms", "alloc_bytes"),
        "tfla forward+backward": best_by_s(ours, "fwdbwd_ms", "fwdbwd_alloc_bytes"),
    }
    if args.refs:
        refs = json.loads(args.refs.read_text()).get("rows", [])
        triton = [r for r in refs if r.get("ref") == "tfla" and r.get("variant") == args.variant
                  and not r.get("error")]
        series["Triton TFLA forward"] = best_by_s(triton, "fwd_ms", "peak_mem_bytes")
        series["Triton TFLA forward+backward"] = best_by_s(triton, "fwdbwd_ms", "peak_mem_bytes")
    heads = sorted({h for s in series.values() for h in s}, reverse=True)
    if not heads:
        raise SystemExit(f"no B = 1 rows of variant {args.variant} in {args.tfla}: run --grid long")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(2, len(heads), figsize=(4.5 * len(heads), 7), squeeze=False)
    for col, head in enumerate(heads):
        top, bottom = axes[0][col], axes[1][col]
        for name, by_head in series.items():
            points = sorted(by_head.get(head, {}).items())
            if not points:
                continue
            color = "tab:blue" if name.startswith("tfla") else "tab:orange"
            dash = "--" if "backward" in name else "-"
            s_values = [s for s, _ in points]
            top.plot(s_values, [us for _, (us, _) in points], dash, color=color, marker="o", ms=3, label=name)
            if name != "Triton TFLA forward":  # compare.py records one peak, forward+backward's
                bottom.plot(s_values, [gb for _, (_, gb) in points], dash, color=color, marker="o", ms=3,
                            label=name)
        top.set(title=f"NH/DQK/DHV = {head[0]}/{head[1]}/{head[2]}", ylabel="µs per token")
        bottom.set(xlabel="S (B = 1)", ylabel="GB allocated", yscale="log")
        s_ticks = sorted({s for by_head in series.values() for s in by_head.get(head, {})})
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(s_ticks, [f"{s // 1024}k" for s in s_ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(alpha=0.3, which="both")
        top.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"mLSTM{args.variant}, bf16: time per token and memory against sequence length")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
