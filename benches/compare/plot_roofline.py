"""Roofline plot: every best-L tfla call of a run against its card's ceilings and the references.

Reads the rows `cargo xtask report --rows OUT.json` writes (each call's model FLOPs, the bytes
it must move at least, its roofline floor and the references' times from the same run; the
floor's definition lives in `xtask/src/report.rs`, not here) and draws two panels:

- left, the roofline: achieved TFLOP/s against arithmetic intensity (model FLOPs per byte), with
  the roof min(matmul ceiling, intensity × copy bandwidth) and the 1.5×-floor line of issue 20;
- right, tfla's time over Triton TFLA's per head shape, variant and pass (each dot one (B, S)
  point), with issue 20's ratio targets.

Several row files (one per call, each with its own ceilings) are drawn together; the roof is
that of the first file.

    python3 benches/compare/plot_roofline.py ROWS.json... [--out roofline.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADS = {(8, 512, 512): "C0", (8, 256, 512): "C1", (16, 128, 128): "C2"}
PASSES = {"fwd": ("o", "forward"), "fwdbwd": ("s", "forward+backward")}
VARIANTS = ("exp", "sig", "sig_nonorm")
# Issue 20's ratio targets: (wide heads, 128/128) per pass.
TARGETS = {"fwd": (0.20, 0.30), "fwdbwd": (0.25, 0.35)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, nargs="+", help="cargo xtask report --rows output")
    ap.add_argument("--out", type=Path, default=Path("roofline.png"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(p.read_text()) for p in args.rows]
    ceil = next(d["ceilings"] for d in docs if d.get("ceilings"))
    peak, bw = ceil["matmul_tflops"], ceil["copy_gbps"]  # TFLOP/s, GB/s
    rows = [r for d in docs for r in d["rows"] if r.get("flops") and r.get("bytes")]

    fig, (roof, ratio) = plt.subplots(1, 2, figsize=(13, 5.2))
    # The roof: bytes-bound below the ridge (intensity = peak / bandwidth), compute-bound above.
    ridge = peak * 1e12 / (bw * 1e9)
    xs = [10, ridge, 3000]
    roof.plot(xs, [min(peak, x * bw / 1e3) for x in xs], "k-", lw=1.5, label="roof (matmul, copy)")
    roof.plot(xs, [min(peak, x * bw / 1e3) / 1.5 for x in xs], "k:", lw=1, label="1.5× the floor (target)")
    for r in rows:
        head = (r["NH"], r["DQK"], r["DHV"])
        marker, _ = PASSES[r["pass"]]
        intensity = r["flops"] / r["bytes"]
        achieved = r["flops"] / (r["ms"] * 1e-3) / 1e12
        roof.scatter(intensity, achieved, c=HEADS.get(head, "C7"), marker=marker, s=22, alpha=0.75)
    roof.set(xscale="log", yscale="log", xlabel="model FLOPs per byte moved (at least)",
             ylabel="achieved TFLOP/s (model FLOPs)", title=f"tfla calls against the roofline ({peak:.0f} TFLOP/s, {bw / 1e3:.2f} TB/s)")
    roof.grid(True, which="both", alpha=0.3)

    # tfla / Triton TFLA, one column per (head, variant), forward and forward+backward side by side.
    labels = []
    for h_i, (head, color) in enumerate(HEADS.items()):
        for v_i, variant in enumerate(VARIANTS):
            col = h_i * (len(VARIANTS) + 1) + v_i
            labels.append((col, f"{variant}\n{head[1]}/{head[2]}"))
            for p_i, (pass_, (marker, _)) in enumerate(PASSES.items()):
                ys = [r["ms"] / r["refs"]["triton-tfla"] for r in rows
                      if (r["NH"], r["DQK"], r["DHV"]) == head and r["variant"] == variant
                      and r["pass"] == pass_ and "triton-tfla" in r["refs"]]
                x = col + (p_i - 0.5) * 0.3
                ratio.scatter([x] * len(ys), ys, c=color, marker=marker, s=22, alpha=0.75)
            for p_i, pass_ in enumerate(PASSES):
                target = TARGETS[pass_][1 if head == (16, 128, 128) else 0]
                x = col + (p_i - 0.5) * 0.3
                ratio.plot([x - 0.12, x + 0.12], [target, target], "k-", lw=1)
    ratio.set_xticks([c for c, _ in labels], [t for _, t in labels], fontsize=7)
    ratio.set(ylabel="tfla time / Triton TFLA time", ylim=(0, 0.7),
              title="against Triton TFLA (same run; bars: issue 20's targets)")
    ratio.grid(True, axis="y", alpha=0.3)

    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"{h[0]}/{h[1]}/{h[2]}") for h, c in HEADS.items()]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", label=name) for m, name in PASSES.values()]
    roof.legend(handles=handles + roof.get_legend_handles_labels()[0], fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
