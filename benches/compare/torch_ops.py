#!/usr/bin/env python3
"""tfla through PyTorch: the time of ``tfla.torch`` ops against the Rust benchmark's.

For each head config at (B, S) = (8, 8192), bf16, the forward and the forward+backward of
``tfla.torch.mlstm_chunkwise`` (Exact gradient, chunk size as tfla-bench's best, or
``--chunk``) are timed with CUDA events (median of ``--reps`` after warm-up, L2 not flushed,
as tfla-bench does), and the ratio to tfla-bench's time of the same point in its JSON
(``--tfla``, from the same run) is printed: the Python layer's cost. Each is timed twice: one
call per event pair, waiting for it (so host time the device spends idle counts), and calls
queued back to back (the device's time per call when the host keeps ahead). Then the generation step:
``mlstm_step(..., inplace=True)`` per call in an eager loop against the same loop replayed
from a CUDA graph (which leaves the kernel alone), at B·NH = 64, DQK = 256, DHV = 512.

    python3 benches/compare/torch_ops.py --tfla target/bench/results/tfla.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import types

import torch

import tfla.torch as tt

HEADS = [(8, 512, 512), (8, 256, 512), (16, 128, 128)]


HOST_US: list = []  # the host time of each call `time_ms` timed (perf_counter, µs)


def time_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median device time of one call waited for (CUDA events around it), as tfla-bench
    times; the host time of each call (until it returns, kernels queued) goes to HOST_US."""
    import time

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    HOST_US.clear()
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn()
        HOST_US.append((time.perf_counter() - t0) * 1e6)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def time_queued_ms(fn, reps: int, warmup: int = 3) -> float:
    """Per-call time of `reps` calls issued back to back between one pair of events: the
    device's time per call where the host keeps ahead of it (as in training, where the next
    op is queued while this one runs); ``time_ms`` waits for each call, so host time the
    device spends idle counts there."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps


def cases(seed: int, b: int = 8, s: int = 8192):
    """(name, variant, normalize, (NH, DQK, DHV), (q, k, v, i, f)) of the benchmark's grid at
    (B, S): each head config, each variant, random bf16 inputs and f32 gates."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    for nh, dqk, dhv in HEADS:
        for variant, normalize, name in (("exp", True, "exp"), ("sig", True, "sig"), ("sig", False, "sig_nonorm")):
            q, k = (torch.randn(b, nh, s, dqk, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
            v = torch.randn(b, nh, s, dhv, device="cuda", generator=g, dtype=torch.bfloat16)
            i = torch.randn(b, nh, s, device="cuda", generator=g)
            f = torch.randn(b, nh, s, device="cuda", generator=g) + 3
            yield name, variant, normalize, (nh, dqk, dhv), (q, k, v, i, f)


def captured(fn) -> "torch.cuda.CUDAGraph":
    """`fn`'s kernels in a CUDA graph, after one warm-up call on a side stream (as PyTorch's
    CUDA-graph docs do: the runtime loads and allocates outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def rust_best(rows: list, variant: str, nh: int, dqk: int, dhv: int, b: int, s: int, key: str):
    """tfla-bench's best (ms, chunk) at this point, or None."""
    best = None
    for r in rows:
        if (r.get("variant"), r.get("NH"), r.get("DQK"), r.get("DHV"), r.get("B"), r.get("S")) != (variant, nh, dqk, dhv, b, s):
            continue
        ms = r.get(key)
        if ms and (best is None or ms < best[0]):
            best = (ms, r.get("chunk"))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tfla", help="tfla-bench's JSON of the same run (for the ratios)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--layer-cost", metavar="JSON", help="only the Python layer against the "
                    "launches alone, in rounds (`layer_cost`), written here")
    args = ap.parse_args()
    if args.layer_cost:
        json.dump(layer_cost(), open(args.layer_cost, "w"), indent=1)
        return
    rows = []
    if args.tfla:
        data = json.load(open(args.tfla))
        rows = data if isinstance(data, list) else data.get("rows", [])
    b, s = 8, 8192
    out = {"device": torch.cuda.get_device_name(), "chunkwise": [], "step": []}
    print(f"{'variant':10} {'NH/DQK/DHV':12} {'L':>5} {'fwd ms':>8} {'rust':>8} {'ratio':>6} "
          f"{'fwd+bwd':>8} {'rust':>8} {'ratio':>6} {'fwd q':>8} {'ratio':>6} {'f+b q':>8} {'ratio':>6} "
          f"{'fwd us':>7} {'f+b us':>7} {'raw fwd':>8} {'ratio':>6} {'raw q':>8} {'ratio':>6} "
          f"{'graph':>8} {'ratio':>6}")
    print("(q: calls queued back to back, time_queued_ms; the others wait for each call; us: the "
          "host time of a waited call until it returns, median; raw fwd: _tfla.forward on buffers "
          "allocated once, in this process, and the waited forward's ratio to it; raw q: the same "
          "queued, and the queued forward's ratio to it; graph: the forward replayed from a CUDA "
          "graph, and its ratio to tfla-bench)")
    for name, variant, normalize, (nh, dqk, dhv), (q, k, v, i, f) in cases(0, b, s):
        fwd_rust = rust_best(rows, name, nh, dqk, dhv, b, s, "fwd_ms")
        bwd_rust = rust_best(rows, name, nh, dqk, dhv, b, s, "fwdbwd_ms")
        chunk = fwd_rust[1] if fwd_rust else None
        kw = dict(variant=variant, normalize=normalize)
        with torch.no_grad():
            fwd = time_ms(lambda: tt.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk, **kw), args.reps)
        fwd_host = statistics.median(HOST_US)
        # The extension's launch alone on buffers allocated once: tfla-bench's work in this
        # process (same buffers, same clocks), the floor of the Python layer.
        raw = raw_calls(q, k, v, i, f, variant, normalize, chunk or 0)
        fwd_raw = time_ms(raw.fwd, args.reps)
        fwd_raw_q = time_queued_ms(raw.fwd, args.reps)
        del raw
        # The forward replayed from a CUDA graph: no host work per call at all.
        with torch.no_grad():
            graph = captured(lambda: tt.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk, **kw))
        fwd_graph = time_ms(graph.replay, args.reps)
        del graph
        leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
        dh = torch.randn_like(v)
        chunk_b = bwd_rust[1] if bwd_rust else None

        def fwd_bwd():
            # As `optimizer.zero_grad()` does: without it every call after the first adds
            # its gradients into the leaves' .grad (full-size q, k, v adds tfla-bench
            # does not do).
            for t in leaves:
                t.grad = None
            h = tt.mlstm_chunkwise(*leaves, chunk_size=chunk_b, **kw)
            h.backward(dh)

        both = time_ms(fwd_bwd, args.reps)
        both_host = statistics.median(HOST_US)
        with torch.no_grad():
            fwd_q = time_queued_ms(lambda: tt.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk, **kw), args.reps)
        both_q = time_queued_ms(fwd_bwd, args.reps)
        ratio = lambda ms, r: f"{ms / r[0]:6.3f}" if r else "     -"  # noqa: E731
        rust = lambda r: f"{r[0]:8.3f}" if r else "       -"  # noqa: E731
        print(f"{name:10} {f'{nh}/{dqk}/{dhv}':12} {chunk or '-':>5} {fwd:8.3f} {rust(fwd_rust)} "
              f"{ratio(fwd, fwd_rust)} {both:8.3f} {rust(bwd_rust)} {ratio(both, bwd_rust)} "
              f"{fwd_q:8.3f} {ratio(fwd_q, fwd_rust)} {both_q:8.3f} {ratio(both_q, bwd_rust)} "
              f"{fwd_host:7.0f} {both_host:7.0f} {fwd_raw:8.3f} {fwd / fwd_raw:6.3f} "
              f"{fwd_raw_q:8.3f} {fwd_q / fwd_raw_q:6.3f} {fwd_graph:8.3f} {ratio(fwd_graph, fwd_rust)}")
        out["chunkwise"].append(dict(variant=name, NH=nh, DQK=dqk, DHV=dhv, B=b, S=s, chunk=chunk,
                                     fwd_ms=fwd, fwdbwd_ms=both, fwd_queued_ms=fwd_q,
                                     fwdbwd_queued_ms=both_q, fwd_host_us=fwd_host,
                                     fwdbwd_host_us=both_host, raw_fwd_ms=fwd_raw, raw_fwd_queued_ms=fwd_raw_q,
                                     graph_fwd_ms=fwd_graph, rust_fwd_ms=fwd_rust and fwd_rust[0],
                                     rust_fwdbwd_ms=bwd_rust and bwd_rust[0]))
        del q, k, v, leaves, dh
    # Generation: per-call cost of the op in an eager loop vs the same calls from a CUDA graph.
    for bh in (64, 256):
        nh, dqk, dhv, calls = 8, 256, 512, 100
        bb = bh // nh
        q, k = (torch.randn(bb, nh, dqk, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(bb, nh, dhv, device="cuda", dtype=torch.bfloat16)
        i, f = torch.randn(bb, nh, device="cuda"), torch.randn(bb, nh, device="cuda") + 3
        c = torch.zeros(bb, nh, dqk, dhv, device="cuda", dtype=torch.bfloat16)
        n, m = torch.zeros(bb, nh, dqk, device="cuda"), torch.zeros(bb, nh, device="cuda")

        def loop():
            for _ in range(calls):
                tt.mlstm_step(q, k, v, i, f, c, n, m, inplace=True)

        eager = time_ms(loop, 5) / calls
        graph = captured(loop)
        replay = time_ms(graph.replay, 5) / calls
        print(f"step B*NH={bh} DQK={dqk} DHV={dhv} bf16 state: eager {eager * 1e3:7.2f} us/call, "
              f"graph replay {replay * 1e3:7.2f} us/call, overhead {(eager - replay) * 1e3:6.2f} us")
        out["step"].append(dict(BH=bh, DQK=dqk, DHV=dhv, eager_us=eager * 1e3, graph_us=replay * 1e3))
    out["host_us"] = host_costs()
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)


def host_costs(calls: int = 2000) -> dict:
    """Host time per call of each layer of the forward at a shape whose kernels take a few
    microseconds (B = NH = 1, S = 64, D = 64), so the host, not the device, sets the pace:
    wall time over `calls` calls, then one synchronize. From the extension's launch alone
    (`_tfla.forward` on buffers allocated once) up to the public function, eager and through
    the custom op (`torch.ops.tfla.mlstm_fwd`, the path torch.compile sees), and a
    forward+backward."""
    import time

    from tfla.torch import _ops

    q, k, v = (torch.randn(1, 1, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    i, f = torch.randn(1, 1, 64, device="cuda"), torch.randn(1, 1, 64, device="cuda") + 3
    args = (q, k, v, i, f, None, None, None, "exp", True, 1e-6, 0, False, "exact")
    raw = raw_calls(q, k, v, i, f, "exp", True, 0)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
    dh = torch.randn_like(v)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        tt.mlstm_chunkwise(*leaves).backward(dh)

    # The backward op's body on one forward's outputs (with row statistics).
    saved = _ops.forward(*args[:12], True, "exact")
    grad_args = (q, k, v, i, f, None, None, None, *saved[:3], saved[4], dh, None, None, None, "exp", True, 1e-6, 0, "exact")

    class Nothing(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g

    layers = {
        "one torch.empty (1 MB)": lambda: torch.empty(1 << 20, device="cuda", dtype=torch.uint8),
        "autograd.Function.apply": lambda: Nothing.apply(q),
        "launch (_tfla.forward)": raw.fwd,
        "op body (_ops.forward)": lambda: _ops.forward(*args),
        "custom op (torch.ops)": lambda: torch.ops.tfla.mlstm_fwd(*args),
        "mlstm_chunkwise": lambda: tt.mlstm_chunkwise(q, k, v, i, f),
        "mlstm_chunkwise fwd+bwd": fwd_bwd,
        "backward body (_ops.backward)": lambda: _ops.backward(*grad_args),
        "backward launch alone": raw.bwd,
    }
    result = {}
    print(f"host time per call (B=NH=1, S=64, D=64, {calls} calls, no wait between them):")
    for name, fn in layers.items():
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        result[name] = (time.perf_counter() - t0) / calls * 1e6
        print(f"  {name:26} {result[name]:7.1f} us")
    return result


def raw_calls(q, k, v, i, f, variant: str, normalize: bool, chunk: int) -> types.SimpleNamespace:
    """The forward (`fwd`), the backward (`bwd`) and both (`fwd_bwd`) as the extension launches
    them on buffers allocated once (no Python layer, no allocation): what tfla-bench does, in
    this process."""
    from tfla import _tfla
    from tfla.torch import _ops

    index, stream = q.get_device(), torch.cuda.current_stream().cuda_stream
    dims, dtype, plan = _ops._plan(q, v, chunk, True)
    outs = _ops._allocate(q, plan)
    dh = torch.randn_like(v)
    grads = _ops._grads(q, k, v, None, None, None)
    size, offsets = _ops._workspace_plan(_ops.device_plan(index), dims, dtype, chunk)
    workspace = q.new_empty(size, dtype=torch.uint8)
    # The op bodies' pointer tables, on these buffers: with row statistics (what the backward
    # reads), without (the forward alone, at the plan's offsets without them).
    fwd_ptrs = _ops.forward_pointers(q, k, v, i, f, None, None, None, outs, plan[2])
    plain = _ops.forward_pointers(q, k, v, i, f, None, None, None, outs, _ops._plan(q, v, chunk, False)[2][2])
    bwd_ptrs = _ops.backward_pointers(
        q, k, v, i, f, None, None, None, *outs[:3], outs[-1], plan[2],
        dh, None, None, None, grads, workspace, offsets,
    )  # fmt: skip

    def fwd(row_stats: bool = False):
        ptrs = fwd_ptrs if row_stats else plain
        _tfla.forward(index, stream, ptrs, *dims, dtype, variant, normalize, 1e-6, chunk, row_stats)

    def bwd():
        _tfla.backward(index, stream, bwd_ptrs, *dims, dtype, variant, normalize, 1e-6, chunk, "exact")

    def fwd_bwd():
        fwd(True)
        bwd()

    # The buffers stay alive with the closures.
    return types.SimpleNamespace(fwd=fwd, bwd=bwd, fwd_bwd=fwd_bwd, buffers=(outs, dh, grads, workspace))


def layer_cost(rounds: int = 7, reps: int = 10) -> list:
    """The Python layer's cost in the same process and on the same buffers' card: each round
    times `mlstm_chunkwise` (forward under no_grad; forward+backward with `.grad` cleared) and
    the extension's launches on buffers allocated once (`raw_calls`), one after the other, both
    waited for per call and queued; the median over rounds of the per-round ratio, and its
    range. Alternating in rounds cancels the device's drift, which between two processes (this
    and tfla-bench) moves single kernels by 5-10%."""
    b, s = 8, 8192
    rows = []
    print(f"Python layer against the launches alone, same process, {rounds} rounds alternated "
          f"(median ratio [min, max]):")
    print(f"{'variant':10} {'NH/DQK/DHV':12} {'L':>4} {'fwd waited':>22} {'fwd queued':>22} "
          f"{'f+b waited':>22} {'f+b queued':>22}")
    from tfla import _tfla

    for name, variant, normalize, (nh, dqk, dhv), (q, k, v, i, f) in cases(1, b, s):
        # The L the op picks for a forward alone and for one a backward follows, each timed
        # against the launches at the same L.
        chunk = _tfla.chunk_size(b, nh, s, dqk, dhv, 0)
        chunk_fb = _tfla.chunk_size(b, nh, s, dqk, dhv, 0, backward=True)
        raw = raw_calls(q, k, v, i, f, variant, normalize, chunk)
        raw_fb = raw if chunk_fb == chunk else raw_calls(q, k, v, i, f, variant, normalize, chunk_fb)
        leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
        dh = torch.randn_like(v)
        kw = dict(variant=variant, normalize=normalize)

        def py_fwd():
            with torch.no_grad():
                tt.mlstm_chunkwise(q, k, v, i, f, **kw)

        def py_fb():
            for t in leaves:
                t.grad = None
            tt.mlstm_chunkwise(*leaves, **kw).backward(dh)

        ratios = {m: [] for m in ("fwd_w", "fwd_q", "fb_w", "fb_q")}
        for _ in range(rounds):
            for m, (py, alone) in (("fwd", (py_fwd, raw.fwd)), ("fb", (py_fb, raw_fb.fwd_bwd))):
                ratios[m + "_w"].append(time_ms(py, reps, warmup=1) / time_ms(alone, reps, warmup=1))
                ratios[m + "_q"].append(time_queued_ms(py, reps, warmup=1) / time_queued_ms(alone, reps, warmup=1))
        cell = lambda xs: f"{statistics.median(xs):6.3f} [{min(xs):.3f}, {max(xs):.3f}]"  # noqa: E731
        ls = f"{chunk}" if chunk == chunk_fb else f"{chunk}/{chunk_fb}"
        print(f"{name:10} {f'{nh}/{dqk}/{dhv}':12} {ls:>4} {cell(ratios['fwd_w']):>22} "
              f"{cell(ratios['fwd_q']):>22} {cell(ratios['fb_w']):>22} {cell(ratios['fb_q']):>22}")
        rows.append(dict(variant=name, NH=nh, DQK=dqk, DHV=dhv, chunk=chunk, chunk_fwdbwd=chunk_fb, **ratios))
        del q, k, v, leaves, dh, raw, raw_fb
    return rows


if __name__ == "__main__":
    main()
