"""A small character-level xLSTM language model, trained once per mLSTM back end.

The point is to show tfla as a drop-in for ``mlstm_kernels``: the model (the xLSTM-7B block
layout at toy size) is identical for every back end, only the function that computes the mLSTM
cell changes. Every back end starts from the same initial weights and sees the same batches, so
the loss curves are directly comparable. A back end whose loss turns non-finite is stopped at
the next evaluation and reported with the step where it did. After training, the first tfla
model that trained (tfla-exact unless it failed) is checked for generation: a chunkwise prefill
followed by step-by-step decoding must reproduce the logits of one full forward pass.

    python examples/xlstm_lm.py --steps 2000 --backends tfla-exact,tfla-detached,triton,torch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerState = tuple[Tensor, Tensor, Tensor]  # c (B, NH, DQK, DHV), n (B, NH, DQK), m (B, NH, 1)
# (q, k, v, i, f, return_last_states) -> (h (B, NH, S, DHV), last states or None)
Backend = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, bool], tuple[Tensor, Optional[LayerState]]]
ALL_BACKENDS = ("tfla-exact", "tfla-detached", "triton", "torch")
EPS = 1e-6


# ----------------------------------------------------------------------------- back ends
def mlstm_parallel_torch(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, eps: float = EPS) -> Tensor:
    """mLSTMexp in its parallel (quadratic) stabilized form, in float32, differentiated by
    autograd: the independent reference the kernels are compared against.

    Follows mlstm_kernels' ``parallel/native_stablef`` but with the empty initial state's term
    in the max (m_{-1} = 0, so m_t = max(Σ_{s≤t} λ_s, max_j D_tj)), which is what the recurrent
    definition, tfla and the Triton chunkwise kernels compute (it changes the e^{-m} floor).
    """
    with torch.autocast("cuda", enabled=False):
        q, k, v, i, f = (t.float() for t in (q, k, v, i, f))
        s_len, dqk = q.shape[-2], q.shape[-1]
        log_f = F.logsigmoid(f)  # (B, NH, S)
        # (t, j) -> Σ_{s=j+1..t} λ_s, summed directly (not b_t - b_j) to avoid cancellation.
        log_f_cum = log_f[..., :, None].expand(*log_f.shape, s_len).tril(-1).cumsum(-2)
        causal = torch.ones(s_len, s_len, dtype=torch.bool, device=q.device).tril()
        log_d = torch.where(causal, log_f_cum + i[..., None, :], float("-inf"))  # (B, NH, S, S)
        m = torch.maximum(log_d.amax(dim=-1), log_f.cumsum(-1))  # (B, NH, S)
        scores = (q @ k.transpose(-2, -1)) * dqk**-0.5 * torch.exp(log_d - m[..., None])
        norm = torch.maximum(scores.sum(-1).abs(), torch.exp(-m))
        return (scores @ v) / (norm[..., None] + eps)


def make_backend(name: str, args: argparse.Namespace) -> Backend:
    """The mLSTM cell for one back-end name. Raises (ImportError, ValueError, ...) when it is
    not available here, which the caller reports as skipped. The kernels are called exactly as
    code written for mlstm_kernels calls them; only the name differs."""
    if name == "torch":

        def run_torch(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, ret: bool):
            if ret:
                raise NotImplementedError("the torch back end returns no last states")
            return mlstm_parallel_torch(q, k, v, i, f), None

        return run_torch
    if name in ("tfla-exact", "tfla-detached"):
        import tfla.torch as tfla_torch

        kernel = tfla_torch.get_mlstm_kernel("chunkwise--tfla-exp")
        # chunk_size None: tfla picks one per shape (any S works).
        options = {"chunk_size": args.tfla_chunk_size or None, "grad_mode": name.split("-", 1)[1]}
    elif name == "triton":
        from mlstm_kernels.torch import get_mlstm_kernel

        kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")  # ValueError without triton
        options = {"chunk_size": args.triton_chunk_size}
        if args.context % args.triton_chunk_size:
            raise ValueError(f"mlstm_kernels needs S % chunk_size == 0 (S={args.context}, "
                             f"chunk_size={args.triton_chunk_size})")
    else:
        raise ValueError(f"unknown back end {name!r}: expected one of {ALL_BACKENDS}")

    def run(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, ret: bool):
        # Triton 3.6 aborts in LLVM's optimizer on triton_xl_chunk's exp forward kernel, so
        # that kernel (compiled on the first call, then cached in memory) is built without
        # LLVM's optimizations; the backward kernels, compiled outside, keep them.
        old = os.environ.get("DISABLE_LLVM_OPT")
        if name == "triton":
            os.environ["DISABLE_LLVM_OPT"] = "1"
        try:
            out = kernel(q, k, v, i, f, return_last_states=ret, eps=EPS,
                         autocast_kernel_dtype=torch.bfloat16, **options)
        finally:
            if old is None:
                os.environ.pop("DISABLE_LLVM_OPT", None)
            else:
                os.environ["DISABLE_LLVM_OPT"] = old
        return out if ret else (out, None)

    return run


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    vocab_size: int = 256
    dim: int = 256
    num_heads: int = 4
    num_blocks: int = 4
    qk_dim_factor: float = 0.5
    ffn_factor: float = 2.667
    ffn_multiple: int = 64
    gate_soft_cap: float = 15.0
    logit_soft_cap: float = 30.0
    norm_eps: float = 1e-6

    @property
    def dqk(self) -> int:
        return int(self.dim * self.qk_dim_factor) // self.num_heads

    @property
    def dhv(self) -> int:
        return self.dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return self.ffn_multiple * math.ceil(self.dim * self.ffn_factor / self.ffn_multiple)


def soft_cap(x: Tensor, cap: float) -> Tensor:
    """cap·tanh(x/cap): bounds gate and logit pre-activations (xLSTM-7B's stability fix)."""
    return cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    """RMSNorm reducing in float32 whatever the input dtype, as xlstm_large does."""

    def __init__(self, shape: tuple[int, ...], eps: float, center: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.eps, self.center = eps, center

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.center:  # LayerNorm without bias (the multi-head norm)
            xf = xf - xf.mean(-1, keepdim=True)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight).to(x.dtype)


class MLSTMLayer(nn.Module):
    """xLSTM-7B's mLSTM layer: q, k, v and output-gate projections, soft-capped scalar
    input/forget gates per head, the mLSTM cell (the back end), per-head norm, out projection."""

    def __init__(self, cfg: ModelConfig, backend: Backend) -> None:
        super().__init__()
        self.cfg, self.backend = cfg, backend
        nh, d = cfg.num_heads, cfg.dim
        self.q = nn.Linear(d, nh * cfg.dqk, bias=False)
        self.k = nn.Linear(d, nh * cfg.dqk, bias=False)
        self.v = nn.Linear(d, nh * cfg.dhv, bias=False)
        self.ogate = nn.Linear(d, nh * cfg.dhv, bias=False)
        self.ifgate = nn.Linear(d, 2 * nh, bias=True)  # [input | forget] pre-activations
        self.mh_norm = RMSNorm((nh, cfg.dhv), cfg.norm_eps, center=True)
        self.out_proj = nn.Linear(nh * cfg.dhv, d, bias=False)

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gate pre-activations (..., NH) in float32: they enter exponentials, where bf16's
        8-bit mantissa would be visible."""
        with torch.autocast("cuda", enabled=False):
            g = F.linear(x.float(), self.ifgate.weight, self.ifgate.bias)
            g = soft_cap(g, self.cfg.gate_soft_cap)
        return g[..., : self.cfg.num_heads], g[..., self.cfg.num_heads :]

    def forward(self, x: Tensor, return_state: bool = False) -> tuple[Tensor, Optional[LayerState]]:
        b, s, _ = x.shape
        nh = self.cfg.num_heads
        q = self.q(x).view(b, s, nh, -1).transpose(1, 2)  # (B, NH, S, DQK)
        k = self.k(x).view(b, s, nh, -1).transpose(1, 2)
        v = self.v(x).view(b, s, nh, -1).transpose(1, 2)  # (B, NH, S, DHV)
        i, f = (g.transpose(1, 2) for g in self._gates(x))  # (B, NH, S)
        h, state = self.backend(q, k, v, i, f, return_state)
        h = self.mh_norm(h.transpose(1, 2)).reshape(b, s, -1)  # norm over DHV per head
        return self.out_proj(torch.sigmoid(self.ogate(x)) * h), state

    def step(self, x: Tensor, state: LayerState) -> Tensor:
        """One token (x: (B, D)) through tfla's step kernel; updates ``state`` in place."""
        import tfla.torch as tfla_torch

        b, nh = x.shape[0], self.cfg.num_heads
        q, k, v = (proj(x).view(b, nh, -1) for proj in (self.q, self.k, self.v))
        i, f = self._gates(x)  # (B, NH)
        h, _ = tfla_torch.mlstm_step(q, k, v, i, f, *state, eps=EPS, inplace=True)
        h = self.mh_norm(h).reshape(b, -1)
        return self.out_proj(torch.sigmoid(self.ogate(x)) * h)


class FeedForward(nn.Module):
    """Gated feed-forward (SwiGLU): SiLU(gate)·up, then down."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)  # [gate | up]
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + mLSTM(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, cfg: ModelConfig, backend: Backend) -> None:
        super().__init__()
        self.norm_mlstm = RMSNorm((cfg.dim,), cfg.norm_eps)
        self.mlstm = MLSTMLayer(cfg, backend)
        self.norm_ffn = RMSNorm((cfg.dim,), cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: Tensor, return_state: bool = False) -> tuple[Tensor, Optional[LayerState]]:
        y, state = self.mlstm(self.norm_mlstm(x), return_state)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state

    def step(self, x: Tensor, state: LayerState) -> Tensor:
        x = x + self.mlstm.step(self.norm_mlstm(x), state)
        return x + self.ffn(self.norm_ffn(x))


class XLSTM(nn.Module):
    """Embedding → blocks → RMSNorm → LM head (soft-capped logits)."""

    def __init__(self, cfg: ModelConfig, backend: Backend) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, backend) for _ in range(cfg.num_blocks))
        self.out_norm = RMSNorm((cfg.dim,), cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Small init for inputs, depth-scaled init for residual outputs; gates as in the xlstm
        package (zero weights, forget bias linspace 3..6 so memory starts long, input bias ~0)."""
        std = math.sqrt(2 / (5 * self.cfg.dim))
        out_std = 2 / (self.cfg.num_blocks * math.sqrt(self.cfg.dim))
        for name, p in self.named_parameters():
            if "norm" in name:  # norm gains stay 1 (mh_norm's is 2-D)
                continue
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(p, std=out_std)
            elif p.dim() == 2:
                nn.init.normal_(p, std=std)
        nh = self.cfg.num_heads
        for block in self.blocks:
            gate = block.mlstm.ifgate
            nn.init.zeros_(gate.weight)
            nn.init.normal_(gate.bias[:nh], std=0.1)
            gate.bias[nh:] = torch.linspace(3.0, 6.0, nh)

    def _logits(self, x: Tensor) -> Tensor:
        return soft_cap(self.lm_head(self.out_norm(x)).float(), self.cfg.logit_soft_cap)

    def forward(self, idx: Tensor, return_states: bool = False) -> tuple[Tensor, list[LayerState]]:
        """idx (B, S) → logits (B, S, V) float32, and each layer's last state if asked."""
        x, states = self.embedding(idx), []
        for block in self.blocks:
            x, state = block(x, return_states)
            if state is not None:
                states.append(state)
        return self._logits(x), states

    @torch.no_grad()
    def step(self, token: Tensor, states: list[LayerState]) -> Tensor:
        """token (B,) → logits (B, V); ``states`` advance in place."""
        x = self.embedding(token)
        for block, state in zip(self.blocks, states):
            x = block.step(x, state)
        return self._logits(x)


# ----------------------------------------------------------------------------- data
def load_corpus(max_bytes: int) -> bytes:
    """The standard library's own *.py files, sorted by path: present on every machine with
    Python, so the example needs no download. Third-party site-packages are left out."""
    root = os.path.dirname(os.__file__)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
        paths += [os.path.join(dirpath, n) for n in filenames if n.endswith(".py")]
    chunks, total = [], 0
    for path in sorted(paths, key=lambda p: os.path.relpath(p, root)):
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    corpus = b"".join(chunks)[:max_bytes]
    if len(corpus) < 1_000_000:
        sys.exit(f"error: only {len(corpus)} bytes of *.py under {root}; need at least 1 MB")
    return corpus


def sample_batch(data: Tensor, batch: int, context: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random windows of context+1 bytes; starts come from a CPU generator so every back end
    sees exactly the same batches."""
    starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=gen).to(data.device)
    window = data[starts[:, None] + torch.arange(context + 1, device=data.device)].long()
    return window[:, :-1], window[:, 1:]


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: XLSTM, val_batches: list[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    total = 0.0
    for x, y in val_batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    model.train()
    return total / len(val_batches)


def train(name: str, backend: Backend, cfg: ModelConfig, train_data: Tensor,
          val_batches: list[tuple[Tensor, Tensor]], args: argparse.Namespace) -> tuple[XLSTM, dict]:
    """Trains one model; returns it with its history and measurements. Training throughput
    excludes the first 20 steps (compilation, autotuning) and the evaluations."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    mem_before = torch.cuda.memory_allocated()  # data, and the kept tfla model
    torch.manual_seed(args.seed)
    model = XLSTM(cfg, backend).cuda()
    # Weight decay on matrices only, not on biases and norm gains.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

    def lr_factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(args.seed)
    warmup_steps = min(20, args.steps)
    losses: list[Tensor] = []  # kept on the GPU: a per-step .item() would sync every step
    hist: dict[str, list] = {"train_step": [], "train_loss": [], "val_step": [], "val_loss": []}
    train_time, t0 = 0.0, None
    wall0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        if step == warmup_steps + 1:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = sample_batch(train_data, args.batch, args.context, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if step % args.eval_every == 0 or step == args.steps:
            torch.cuda.synchronize()
            if t0 is not None:
                train_time += time.perf_counter() - t0
            hist["train_loss"] += torch.stack(losses).float().tolist()
            hist["train_step"] = list(range(1, step + 1))
            losses.clear()
            val = evaluate(model, val_batches)
            hist["val_step"].append(step)
            hist["val_loss"].append(val)
            print(f"[{name}] step {step:5d}  train {hist['train_loss'][-1]:.4f}  val {val:.4f}", flush=True)
            # A non-finite loss never recovers (the weights are non-finite from then on): stop
            # this back end here and say where it started.
            first_bad = next((n for n, x in zip(hist["train_step"], hist["train_loss"])
                              if not math.isfinite(x)), None)
            if first_bad is not None or not math.isfinite(val):
                where = f"step {first_bad}" if first_bad is not None else f"the evaluation at step {step}"
                raise FloatingPointError(f"non-finite loss from {where}")
            torch.cuda.synchronize()
            t0 = time.perf_counter() if step > warmup_steps else None
    model.zero_grad(set_to_none=True)
    timed = args.steps - warmup_steps
    last = hist["train_loss"][-min(100, len(hist["train_loss"])):]
    result = {
        "status": "ok",
        "train_loss": sum(last) / len(last),
        "val_loss": hist["val_loss"][-1],
        "tokens_per_s": (timed * args.batch * args.context / train_time
                         if timed > 0 and train_time > 0 else None),
        "peak_mem_gib": (torch.cuda.max_memory_allocated() - mem_before) / 2**30,
        "wall_s": time.perf_counter() - wall0,
        "history": hist,
    }
    return model, result


# ----------------------------------------------------------------------------- generation check
@torch.no_grad()
def generation_check(model: XLSTM, val_data: Tensor, prompt_len: int, new_tokens: int) -> dict:
    """Prefill (chunkwise, last states) + greedy decoding with tfla's step kernel, compared
    with one full chunkwise forward over prompt + generated tokens at the same positions: the
    recurrent and chunkwise forms must agree up to bf16 rounding."""
    model.eval()
    prompt = val_data[:prompt_len].long().unsqueeze(0)  # (1, P)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, states = model(prompt, return_states=True)
        token = logits[:, -1].argmax(-1)  # (1,)
        tokens, step_logits = [token], []
        for _ in range(new_tokens):
            logits_t = model.step(token, states)  # logits at position P + len(step_logits)
            step_logits.append(logits_t)
            token = logits_t.argmax(-1)
            tokens.append(token)
        fed = torch.stack(tokens[:-1], dim=1)  # (1, new_tokens): the tokens the steps consumed
        full, _ = model(torch.cat([prompt, fed], dim=1))
    full = full[0, prompt_len:]  # (new_tokens, V)
    stepped = torch.cat(step_logits, dim=0)
    text = bytes(torch.cat(tokens).tolist()).decode("utf-8", errors="replace")
    return {
        "max_abs_logit_diff": (full - stepped).abs().max().item(),
        "max_abs_logit": full.abs().max().item(),
        "argmax_agreement": (full.argmax(-1) == stepped.argmax(-1)).float().mean().item(),
        "prompt": bytes(prompt[0].tolist()).decode("utf-8", errors="replace"),
        "generated": text,
    }


# ----------------------------------------------------------------------------- reporting
def plot(results: dict[str, dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"matplotlib unavailable ({e}); {path.name} not written")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for color, (name, r) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], results.items()):
        ema, smooth = 0.0, []
        for n, loss in enumerate(r["history"]["train_loss"], 1):
            ema = 0.98 * ema + 0.02 * loss
            smooth.append(ema / (1 - 0.98**n))  # bias-corrected EMA
        ax.plot(r["history"]["train_step"], smooth, color=color, alpha=0.6, label=f"{name} train (EMA)")
        ax.plot(r["history"]["val_step"], r["history"]["val_loss"], "o--", color=color, ms=3,
                label=f"{name} validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/byte)", title="xLSTM char LM: mLSTM back ends")
    vals = [v for r in results.values() for v in r["history"]["val_loss"] if math.isfinite(v)]
    if vals:  # the first steps (ln 256 ≈ 5.5) would squash the interesting part
        ax.set_ylim(top=1.15 * max(vals))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def markdown_table(results: dict[str, dict]) -> str:
    rows = ["| back end | train loss (last 100) | val loss | tokens/s | peak GPU mem (GiB) | wall (s) |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r["status"] != "ok":
            rows.append(f"| {name} | {r['status']}: {r['reason']} | | | | |")
            continue
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "n/a"
        rows.append(f"| {name} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {tps} "
                    f"| {r['peak_mem_gib']:.2f} | {r['wall_s']:.1f} |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated subset of %(default)s")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus-mb", type=float, default=20.0, help="MiB of stdlib source to use")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--tfla-chunk-size", type=int, default=0, help="64..1024; 0: tfla chooses")
    p.add_argument("--triton-chunk-size", type=int, default=128, help="must divide --context")
    p.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                   help="prefill + step-decoding check with the first tfla model that trained")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("examples/out"))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: CUDA is required (tfla's kernels and mlstm_kernels' Triton kernels run on "
                 "NVIDIA GPUs); torch.cuda.is_available() is False")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if unknown := [n for n in names if n not in ALL_BACKENDS]:
        sys.exit(f"error: unknown back end(s) {unknown}; choose from {ALL_BACKENDS}")
    cfg = ModelConfig(dim=args.dim, num_heads=args.heads, num_blocks=args.blocks)
    for what, d in (("DQK", cfg.dqk), ("DHV", cfg.dhv)):
        if d % 16 or not 16 <= d <= 512:
            sys.exit(f"error: {what} = {d} per head; tfla needs a multiple of 16 in 16..512")
    args.out.mkdir(parents=True, exist_ok=True)

    corpus = load_corpus(int(args.corpus_mb * 2**20))
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).cuda()
    split = int(0.95 * data.numel())
    train_data, val_data = data[:split], data[split:]
    val_gen = torch.Generator().manual_seed(args.seed + 1)
    val_batches = [sample_batch(val_data, args.batch, args.context, val_gen)
                   for _ in range(args.eval_batches)]
    n_params = sum(p.numel() for p in XLSTM(cfg, make_backend("torch", args)).parameters())
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"corpus {len(corpus) / 2**20:.1f} MiB of stdlib source "
          f"({split:,} train / {data.numel() - split:,} validation bytes)")
    print(f"model {n_params / 1e6:.2f}M parameters: {asdict(cfg)}, "
          f"DQK={cfg.dqk}, DHV={cfg.dhv}, ffn={cfg.ffn_dim}")

    results: dict[str, dict] = {}
    kept: Optional[XLSTM] = None  # the first tfla model that trained: the generation check's
    kept_name = ""
    for name in names:
        try:
            backend = make_backend(name, args)
        except Exception as e:  # missing package, no Triton, unsupported shape
            print(f"[{name}] skipped: {type(e).__name__}: {e}")
            results[name] = {"status": "skipped", "reason": f"{type(e).__name__}: {e}"}
            continue
        try:
            model, results[name] = train(name, backend, cfg, train_data, val_batches, args)
        except Exception as e:  # a kernel failing at run time: report it, run the others
            print(f"[{name}] failed: {type(e).__name__}: {e}")
            results[name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            continue
        if name in ("tfla-exact", "tfla-detached") and kept is None:
            kept, kept_name = model, name
        del model
        torch.cuda.empty_cache()

    report: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {**asdict(cfg), "dqk": cfg.dqk, "dhv": cfg.dhv, "ffn_dim": cfg.ffn_dim, "params": n_params},
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "backends": results,
    }
    generation_failed = False
    if args.generate and kept is not None:
        try:
            gen = generation_check(kept, val_data, args.prompt_len, args.gen_tokens)
        except Exception as e:  # still write the training results below
            generation_failed = True
            gen = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            print(f"\ngeneration check failed: {gen['reason']}")
        report["generation"] = {"model": kept_name, **gen}
    if "max_abs_logit_diff" in report.get("generation", {}):
        print(f"\ngeneration check ({kept_name}, prefill {args.prompt_len} + {args.gen_tokens} steps): "
              f"max |step logits - full-forward logits| = {gen['max_abs_logit_diff']:.4g} "
              f"(max |logit| {gen['max_abs_logit']:.2f}), argmax agreement {gen['argmax_agreement']:.0%}")
        print(f"--- prompt ---\n{gen['prompt']}\n--- greedy continuation ---\n{gen['generated']}\n---")
    elif args.generate and kept is None:
        print("\ngeneration check skipped: no tfla back end trained")

    ok = {n: r for n, r in results.items() if r["status"] == "ok"}
    if ok:
        plot(ok, args.out / "loss.png")
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'results.json'}\n\n{markdown_table(results)}")
    bad = [n for n, r in results.items()
           if r["status"] == "failed" or (r["status"] == "ok" and not math.isfinite(r["val_loss"]))]
    if bad:
        print(f"error: non-finite final validation loss or failure for {bad}", file=sys.stderr)
    return 1 if bad or generation_failed else 0


if __name__ == "__main__":
    sys.exit(main())
