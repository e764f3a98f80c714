#!/usr/bin/env python3
"""One long sequence over several GPUs with tfla's context parallelism, against one GPU.

    torchrun --nproc-per-node 2 examples/context_parallel.py --seq 262144
    torchrun --nproc-per-node 2 examples/context_parallel.py --seq 16384 --check

Each rank holds a contiguous piece of the sequence (B = 1, the xLSTM-7B head shape by
default: NH = 8, DQK = 256, DHV = 512) and runs ``tfla.torch.distributed.
mlstm_context_parallel`` forward and backward. Rank 0 prints the step time, the time of one
all-gather of the state summaries (the communication each step adds), and, with ``--check``,
the relative difference of h and of the gradients from one unsplit call on rank 0 (which must
fit one GPU). ``--reps`` steps are timed after two warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

import tfla.torch as tt
from tfla.torch.distributed import mlstm_context_parallel


def full_inputs(seq: int, nh: int, dqk: int, dhv: int, device) -> list[torch.Tensor]:
    """The whole sequence, the same on every rank (one seed)."""
    g = torch.Generator(device=device).manual_seed(0)
    rn = lambda *s, shift=0.0: torch.randn(*s, generator=g, device=device) + shift  # noqa: E731
    return [
        rn(1, nh, seq, dqk).bfloat16(), rn(1, nh, seq, dqk).bfloat16(), rn(1, nh, seq, dhv).bfloat16(),
        rn(1, nh, seq), rn(1, nh, seq, shift=3.0),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=262_144, help="total sequence length")
    ap.add_argument("--heads", default="8:256:512", help="NH:DQK:DHV")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="compare with one unsplit call on rank 0")
    args = ap.parse_args()
    nh, dqk, dhv = map(int, args.heads.split(":"))
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.cuda.set_device(device)
    bounds = [round(r * args.seq / world) for r in range(world + 1)]
    whole = full_inputs(args.seq, nh, dqk, dhv, device)
    piece = [t[:, :, bounds[rank] : bounds[rank + 1]].contiguous().requires_grad_() for t in whole]
    dh = torch.randn(1, nh, bounds[rank + 1] - bounds[rank], dhv, device=device).bfloat16()

    def step() -> torch.Tensor:
        for t in piece:
            t.grad = None
        h = mlstm_context_parallel(*piece)
        h.backward(dh)
        return h

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.reps):
        h = step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) / args.reps * 1e3
    # The communication of one step: the summaries' all-gather (forward; the backward moves the
    # same bytes once more).
    summary = torch.zeros(nh * (dqk * dhv + dqk + 3), device=device)
    out = [torch.empty_like(summary) for _ in range(world)]
    dist.all_gather(out, summary)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        dist.all_gather(out, summary)
    torch.cuda.synchronize()
    gather_ms = (time.perf_counter() - start) / 20 * 1e3
    if rank == 0:
        print(f"{world} GPUs, S = {args.seq}, heads {nh}/{dqk}/{dhv}: fwd+bwd {step_ms:.2f} ms per step, "
              f"{args.seq / step_ms / 1e3:.1f} M tokens/s; summary all-gather {gather_ms:.3f} ms "
              f"(x2 with the backward: {200 * gather_ms / step_ms:.1f}% of the step)")
    if args.check:
        parts = [torch.empty(1, nh, b - a, dhv, device=device, dtype=h.dtype) for a, b in zip(bounds, bounds[1:])]
        dist.all_gather(parts, h.detach().contiguous())
        grads = []
        for t in piece:
            gathered = [torch.empty(*t.shape[:2], b - a, *t.shape[3:], device=device, dtype=t.dtype)
                        for a, b in zip(bounds, bounds[1:])]  # fmt: skip
            dist.all_gather(gathered, t.grad.contiguous())
            grads.append(torch.cat(gathered, dim=2))
        dhs = [torch.empty(1, nh, b - a, dhv, device=device, dtype=dh.dtype) for a, b in zip(bounds, bounds[1:])]
        dist.all_gather(dhs, dh)
        if rank == 0:
            leaves = [t.clone().requires_grad_() for t in whole]
            ref = tt.mlstm_chunkwise(*leaves)
            ref.backward(torch.cat(dhs, dim=2))
            rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
            print("relative difference from one GPU: h", f"{rel(torch.cat(parts, dim=2), ref):.2e}",
                  *(f"d{n} {rel(g, leaf.grad):.2e}" for n, g, leaf in zip("qkvif", grads, leaves)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
