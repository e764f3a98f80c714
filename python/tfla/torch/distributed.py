"""Context parallelism: one long sequence split over the ranks of a process group, exact.

Rank r holds steps [r·S/P, (r+1)·S/P) of every sequence (the inputs' S axis is its piece). The
mLSTM's state is a fixed-size summary, so the pieces need to exchange only that:

1. Each rank runs its piece from a zero state and keeps its final state (C̃_r, ñ_r, m_r), the
   piece's total log forget gate Λ_r = Σ log σ(f̃) and, for mLSTMexp, the largest input term
   μ_r = max_j (Σ_{s>j} λ_s + ι_j) (the max state the piece reaches on its own).
2. The summaries are all-gathered (``torch.distributed.nn.functional.all_gather``,
   differentiable: the backward sums the gradients of each summary over the ranks).
3. Rank r folds the summaries of ranks 0..r−1 into the initial state (the caller's, or zero),
   in float32, and runs its piece from it.

The fold is the recurrence composed over a whole piece. For mLSTMexp the max state after the
piece is m' = max(Λ_r + m, μ_r) — exactly the m_t the recurrence reaches step by step — and the
stabilized states are rescaled to it: C̃' = e^{Λ_r + m − m'} C̃ + e^{m_r − m'} C̃_r (ñ alike); for
mLSTMsig (no max state) C' = e^{Λ_r} C + C_r. So every rank's outputs, final states and
gradients equal one call over the whole sequence, up to rounding. The backward runs the same
fold in reverse through autograd: the initial-state gradients tfla's backward returns flow
into the summaries of the earlier ranks. With ``grad_mode="detached"`` the fold holds the max
states and the normalizer constant, as the detached kernels do.

Costs: the piece runs twice (summary, then from the folded state) and each rank sends one
state per head: B·NH·(DQK·DHV + DQK + 3) floats.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Summary = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def piece_summary(c: Tensor, n: Tensor, m: Tensor, i: Tensor, f: Tensor, variant: str) -> Summary:
    """(C̃, ñ, m, Λ, μ) of a piece run from a zero state: its final states (m (B, NH)), the
    total log forget gate Λ and (mLSTMexp) the max state the piece reaches on its own, μ."""
    # In the states' precision (float32 from the kernels): the fold's arithmetic.
    log_f = F.logsigmoid(f.to(c.dtype))
    total = log_f.sum(-1)
    if variant == "exp":
        # Σ_{s>j} λ_s + ι_j for every j: the suffix sums of λ after j, plus the input gate.
        after = total.unsqueeze(-1) - log_f.cumsum(-1)
        own_max = (after + i.to(c.dtype)).amax(-1)
    else:
        own_max = torch.zeros_like(total)
    return c, n, m, total, own_max


def fold(state: tuple[Tensor, Tensor, Tensor], piece: Summary, variant: str, detached: bool):
    """The state after a piece, from the state before it and the piece's summary."""
    c0, n0, m0 = state
    c, n, m, total, own_max = piece
    if variant != "exp":
        decay = total.exp()
        return decay[..., None, None] * c0 + c, decay[..., None] * n0 + n, torch.zeros_like(m0)
    m_new = torch.maximum(total + m0, own_max)
    if detached:
        # The detached kernels hold the max states (and the normalizer) constant; Λ still
        # decays the state before the piece.
        m0, m, m_new = m0.detach(), m.detach(), m_new.detach()
    old, new = (total + m0 - m_new).exp(), (m - m_new).exp()
    n_new = old[..., None] * n0 + new[..., None] * n
    if detached:
        n_new = n_new.detach()
    return old[..., None, None] * c0 + new[..., None, None] * c, n_new, m_new


def _zero_state(q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, nh, _, dqk = q.shape
    dhv = v.shape[-1]
    # The kernels' states are float32; a float64 cell (the tests') keeps float64.
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    zeros = lambda *shape: q.new_zeros(*shape, dtype=dtype)  # noqa: E731
    return zeros(b, nh, dqk, dhv), zeros(b, nh, dqk), zeros(b, nh)


# A log forget gate that erases whatever came before (e^{FORGET_ALL} = 0 in float32).
FORGET_ALL = -1e30


def _as_start(state: tuple[Tensor, Tensor, Tensor]) -> Summary:
    """A summary whose fold is ``state`` whatever precedes it: rank 0 sends the state after
    its piece from the sequence's initial state, so that only rank 0 uses (and differentiates)
    the initial state."""
    c, n, m = state
    return c, n, m, torch.full_like(m, FORGET_ALL), m


def _tfla_cell(q, k, v, i, f, c0, n0, m0, **options):
    from . import mlstm_chunkwise

    return mlstm_chunkwise(q, k, v, i, f, c0, n0, m0, return_last_states=True, **options)


def summarize(
    piece: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    rank: int,
    initial: Optional[tuple[Tensor, Tensor, Tensor]],
    cell: Callable,
    options: dict,
) -> Summary:
    """The summary rank ``rank`` sends: its piece (q, k, v, i, f) run from a zero state, and
    on rank 0 with the sequence's initial state folded in (``_as_start``)."""
    q, k, v, i, f = piece
    variant = options.get("variant", "exp")
    _, (c, n, m) = cell(q, k, v, i, f, None, None, None, **options)
    summary = piece_summary(c, n, m.reshape(m.shape[:2]), i, f, variant)
    if rank == 0 and initial is not None:
        detached = options.get("grad_mode", "exact") == "detached"
        summary = _as_start(fold(initial, summary, variant, detached))
    return summary


def run_from_summaries(
    piece: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    earlier: list[Summary],
    initial: Optional[tuple[Tensor, Tensor, Tensor]],
    cell: Callable,
    options: dict,
):
    """A piece's h and states after it, run from the fold of the ``earlier`` ranks' summaries
    (rank 0: none, and the sequence's initial state if given)."""
    q, k, v, i, f = piece
    variant = options.get("variant", "exp")
    detached = options.get("grad_mode", "exact") == "detached"
    if not earlier and initial is not None:
        state = initial
    else:
        state = _zero_state(q, v)
        for summary in earlier:
            state = fold(state, summary, variant, detached)
    return cell(q, k, v, i, f, *state, **options)


def simulate(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, ranks: int, cell: Callable,
    initial: Optional[tuple[Tensor, Tensor, Tensor]] = None, **options,
):  # fmt: skip
    """Context parallelism over ``ranks`` pieces of the S axis in one process (every piece's
    summary, then every piece from its folded state): the same computation as
    ``mlstm_context_parallel`` without the collectives. Returns the pieces' h concatenated and
    the last piece's states."""
    bounds = [round(r * q.shape[2] / ranks) for r in range(ranks + 1)]
    pieces = [tuple(t[:, :, a:b] for t in (q, k, v, i, f)) for a, b in zip(bounds, bounds[1:])]
    summaries = [summarize(p, r, initial, cell, options) for r, p in enumerate(pieces)]
    outs = [
        run_from_summaries(p, summaries[:r], initial if r == 0 else None, cell, options)
        for r, p in enumerate(pieces)
    ]
    return torch.cat([h for h, _ in outs], dim=2), outs[-1][1]


def mlstm_context_parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c_initial: Optional[Tensor] = None,
    n_initial: Optional[Tensor] = None,
    m_initial: Optional[Tensor] = None,
    *,
    group: Optional["torch.distributed.ProcessGroup"] = None,
    variant: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: Optional[int] = None,
    grad_mode: str = "exact",
    return_last_states: bool = False,
    cell: Optional[Callable] = None,
):
    """``tfla.torch.mlstm_chunkwise`` over a sequence split across the ranks of ``group``
    (default: the world): this rank's q, k, v, i, f are its contiguous piece of the S axis
    (pieces in rank order). Returns this rank's h, and with ``return_last_states`` the states
    after its piece (the last rank's are the sequence's final states). The initial states, if
    given, are those of the whole sequence, used (and differentiated) on rank 0 only.
    Differentiable in every input. ``cell`` replaces the kernel (a callable with
    ``mlstm_chunkwise``'s arguments that returns (h, (c, n, m))), for tests without a GPU.
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    options = dict(variant=variant, normalize=normalize, eps=eps, grad_mode=grad_mode)
    if cell is None:
        cell = _tfla_cell
        options["chunk_size"] = chunk_size
    rank = dist.get_rank(group)

    def gather(summary: Summary) -> tuple[list[Summary], Tensor]:
        """Every rank's summary in rank order, and a zero that depends on all of them."""
        # One collective: the five tensors packed into one flat buffer per rank.
        shapes = [t.shape for t in summary]
        sizes = [t.numel() for t in summary]
        flat = torch.cat([t.reshape(-1) for t in summary])
        parts = dist_fn.all_gather(flat, group=group)
        unpack = lambda p: tuple(x.reshape(sh) for x, sh in zip(p.split(sizes), shapes))  # noqa: E731
        return [unpack(p) for p in parts], torch.stack(parts).sum() * 0

    initial = None
    if rank == 0 and (c_initial is not None or n_initial is not None or m_initial is not None):
        zc, zn, zm = _zero_state(q, v)
        initial = (
            zc if c_initial is None else c_initial.to(zc.dtype),
            zn if n_initial is None else n_initial.to(zn.dtype),
            zm if m_initial is None else m_initial.to(zm.dtype).reshape(zm.shape),
        )
    piece = (q, k, v, i, f)
    summaries, anchor = gather(summarize(piece, rank, initial, cell, options))
    h, (c, n, m) = run_from_summaries(piece, summaries[:rank], initial, cell, options)
    # The gather's backward is a collective: every rank must run it, also rank 0, which uses
    # no other rank's summary.
    h = h + anchor.to(h.dtype)
    if return_last_states:
        return h, (c, n, m)
    return h
