"""A fluid model of bwd_chunk_wg's blocks: 132 SMs, one block each at a time; a block loads
B bytes (DRAM bandwidth shared equally by the SMs loading, each capped at `cap`), then
multiplies for T_c; an SM starts its next block when one ends (62 blocks per SM). The first
wave's block b starts at (b mod G)·D. Prints the kernel time per (cap, G, D)."""
import sys

SMS, ITEMS, B, BW = 132, 62, 196e3, 3.0e12


def run(t_c: float, cap: float, g: int, d: float) -> float:
    # state per SM: phase ("wait", "load", "comp"), remaining (s or bytes), items done
    st = [["wait", (i % g) * d, 0] for i in range(SMS)]
    t, dt = 0.0, 0.02e-6
    while any(s[2] < ITEMS for s in st):
        loading = [s for s in st if s[0] == "load"]
        per = min(cap, BW / len(loading)) if loading else 0.0
        for s in st:
            if s[2] >= ITEMS:
                continue
            if s[0] == "wait":
                s[1] -= dt
                if s[1] <= 0:
                    s[0], s[1] = "load", B
            elif s[0] == "load":
                s[1] -= per * dt
                if s[1] <= 0:
                    s[0], s[1] = "comp", t_c
            else:
                s[1] -= dt
                if s[1] <= 0:
                    s[2] += 1
                    s[0], s[1] = "load", B
        t += dt
    return t


if __name__ == "__main__":
    t_c = float(sys.argv[1]) if len(sys.argv) > 1 else 13e-6
    for cap in (50e9, 100e9, 200e9):
        row = []
        for g, d in ((1, 0), (2, 11e-6), (2, 6e-6), (3, 7e-6), (4, 5e-6), (8, 3e-6)):
            row.append(f"G{g} D{d * 1e6:.0f}: {run(t_c, cap, g, d) * 1e3:.3f}")
        print(f"T_c {t_c * 1e6:.0f} µs, cap {cap / 1e9:.0f} GB/s per SM | " + " | ".join(row))
