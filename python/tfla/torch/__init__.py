"""tfla's mLSTM kernels for PyTorch.

``mlstm_chunkwise`` (training and prefill, differentiable) and ``mlstm_step`` (generation)
take ``mlstm_kernels``' shapes: q, k (B, NH, S, DQK), v (B, NH, S, DHV), gate pre-activations
i, f (B, NH, S); states c (B, NH, DQK, DHV), n (B, NH, DQK), m (B, NH, 1).
``get_mlstm_kernel(name)`` / ``get_mlstm_step_kernel(name)`` return callables with
``mlstm_kernels``' arguments, so code written for it switches by one name.

Inputs must be CUDA tensors; q, k, v bfloat16, float16 or float32 (one dtype), gates and
states any float dtype (the kernels take them as float32; gradients come back in the caller's
dtype). Non-contiguous inputs are copied to contiguous ones first. Under
``torch.autocast("cuda")`` q, k, v are cast to the autocast dtype, as ``mlstm_kernels`` does
with ``autocast_kernel_dtype``.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .. import _tfla
from . import _ops

__all__ = [
    "mlstm_chunkwise",
    "mlstm_step",
    "get_mlstm_kernel",
    "get_mlstm_step_kernel",
    "available_kernels",
]

_VARIANTS = ("exp", "sig")
_GRAD_MODES = ("exact", "detached")

LastStates = tuple[Tensor, Tensor, Tensor]


def _cuda(arg: str, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"`{arg}` must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"`{arg}` is on {t.device}: tfla's kernels need CUDA tensors")
    return t


def _check_shape(arg: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"`{arg}` has shape {tuple(t.shape)}, expected {shape}")


def _same_device(arg: str, t: Tensor, device: torch.device) -> None:
    _cuda(arg, t)
    if t.device != device:
        raise ValueError(f"`{arg}` is on {t.device}, `q` on {device}: all inputs on one device")


def _state(arg: str, t: Optional[Tensor], shape: tuple[int, ...], device) -> Optional[Tensor]:
    """An initial state as the kernels take it: f32, contiguous, on q's device; m may come as
    (B, NH, 1)."""
    if t is None:
        return None
    _same_device(arg, t, device)
    if arg == "m_initial" and t.dim() == 3 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    _check_shape(arg, t, shape)
    return t.float().contiguous()


def _gate(arg: str, t: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A gate pre-activation as the kernels take it: f32, contiguous; a trailing 1 dropped."""
    _same_device(arg, t, device)
    if t.dim() == len(shape) + 1 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    _check_shape(arg, t, shape)
    return t.float().contiguous()


def _packed(q, k, v, i, f, c0, n0, m0, cu_seqlens, return_last_states, options):
    """``mlstm_chunkwise`` with ``cu_seqlens``: each sequence alone, then h concatenated and
    the final states stacked."""
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(f"with `cu_seqlens`, `q` must be (1, NH, T, DQK), got {tuple(q.shape)}")
    offsets = [int(x) for x in (cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else cu_seqlens)]
    total = q.shape[2]
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != total or any(
        b <= a for a, b in zip(offsets, offsets[1:])
    ):
        raise ValueError(
            f"`cu_seqlens` = {offsets} is invalid: expected 0, then strictly increasing offsets, "
            f"ending at T = {total}"
        )
    seqs = len(offsets) - 1
    for arg, t in (("c_initial", c0), ("n_initial", n0), ("m_initial", m0)):
        if t is not None and t.shape[0] != seqs:
            raise ValueError(f"`{arg}` has {t.shape[0]} rows, expected one per sequence ({seqs})")
    hs, finals = [], []
    for n, (a, b) in enumerate(zip(offsets, offsets[1:])):
        row = lambda t: None if t is None else t[n : n + 1]  # noqa: E731
        h, last = mlstm_chunkwise(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], i[:, :, a:b], f[:, :, a:b],
            row(c0), row(n0), row(m0), return_last_states=True, **options,
        )  # fmt: skip
        hs.append(h)
        finals.append(last)
    h = torch.cat(hs, dim=2)
    if return_last_states:
        return h, tuple(torch.cat(parts, dim=0) for parts in zip(*finals))
    return h


def _check_options(variant: str, normalize: bool, grad_mode: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` = {variant!r} is invalid: expected 'exp' or 'sig'")
    if grad_mode not in _GRAD_MODES:
        raise ValueError(f"`grad_mode` = {grad_mode!r} is invalid: expected 'exact' or 'detached'")
    if variant == "exp" and not normalize:
        raise ValueError("`normalize` = False is invalid for variant 'exp' (always normalized)")


def _autocast(*ts: Tensor) -> tuple[Tensor, ...]:
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return tuple(t.to(dtype) for t in ts)
    return ts


def mlstm_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c_initial: Optional[Tensor] = None,
    n_initial: Optional[Tensor] = None,
    m_initial: Optional[Tensor] = None,
    *,
    variant: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: Optional[int] = None,
    grad_mode: str = "exact",
    return_last_states: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> Union[Tensor, tuple[Tensor, LastStates]]:
    """The mLSTM over whole sequences (TFLA's chunkwise kernels), differentiable.

    variant: "exp" (exponential input gate, max-state stabilizer, always normalized) or
    "sig" (sigmoid input gate; ``normalize=False`` drops the normalizer). chunk_size: one of
    64, 128, 256, 512, 1024, or None to let tfla choose (from the shapes, and whether an
    input requires grad: a forward that a backward follows may take another L). grad_mode: "exact" (the true gradient,
    through the normalizer's max and the max state) or "detached" (normalizer and max state
    held constant, what the TFLA authors' Triton kernels compute).

    Returns h (B, NH, S, DHV) in q's dtype, and with ``return_last_states`` also the final
    states (c (B, NH, DQK, DHV), n (B, NH, DQK), m (B, NH, 1), float32).

    cu_seqlens: N + 1 offsets (0, strictly increasing, ending at S) of N sequences packed into
    one batch row (B = 1): each runs from its own initial state (row n of c_initial etc.,
    shaped (N, NH, ...)) and has its own final state, as if run alone. From PyTorch this is
    one call per sequence for now (the offsets are read on the host, so it is not
    CUDA-graph capturable); the Rust API's packed kernels (``tfla::mlstm_fwd_varlen``) do it
    in one call.
    """
    _check_options(variant, normalize, grad_mode)
    options = dict(variant=variant, normalize=normalize, eps=eps, chunk_size=chunk_size, grad_mode=grad_mode)
    if cu_seqlens is not None:
        return _packed(q, k, v, i, f, c_initial, n_initial, m_initial, cu_seqlens, return_last_states, options)
    for arg, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        _cuda(arg, t)
    q, k, v = _autocast(q, k, v)
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"`q` and `v` must be (B, NH, S, D), got {tuple(q.shape)} and {tuple(v.shape)}"
        )
    b, nh, s, dqk = q.shape
    dhv = v.shape[-1]
    _check_shape("k", k, (b, nh, s, dqk))
    _check_shape("v", v, (b, nh, s, dhv))
    for arg, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"`{arg}` has dtype {t.dtype}, `q` {q.dtype}: they must match")
        if t.device != q.device:
            raise ValueError(f"`{arg}` is on {t.device}, `q` on {q.device}")
    _ops.dtype_name("q", q)
    i, f = _gate("i", i, (b, nh, s), q.device), _gate("f", f, (b, nh, s), q.device)
    c0 = _state("c_initial", c_initial, (b, nh, dqk, dhv), q.device)
    n0 = _state("n_initial", n_initial, (b, nh, dqk), q.device)
    m0 = _state("m_initial", m_initial, (b, nh), q.device)
    chunk = chunk_size or 0  # 0: tfla chooses (inside the ops, so compile traces no call out)
    inputs = (q, k, v, i, f, c0, n0, m0)
    row_stats = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if not _ops.eager(q):
        fwd = torch.ops.tfla.mlstm_fwd
    else:
        # Nothing to differentiate: the op's body alone, without an autograd node.
        fwd = _ops.Chunkwise.apply if row_stats else _ops.forward
    out = fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), i, f, c0, n0, m0,
        variant, normalize, float(eps), chunk, row_stats, grad_mode,
    )  # fmt: skip
    h = out[0]
    if return_last_states:
        return h, (out[1], out[2], out[3].unsqueeze(-1))
    return h




def _is_fake(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


# The step kernel's per-head arrival counters, one zeroed buffer per (device, stream, heads):
# every step leaves them zero, so a decode loop reuses one instead of zeroing a new buffer
# (one more launch) per token. Per stream: steps on two streams at once must not share them.
_COUNTERS: dict[tuple[int, int, int], Tensor] = {}


def _arrival_counters(heads: int, like: Tensor) -> Tensor:
    device = like.device
    if (
        torch.compiler.is_compiling()
        or _is_fake(like)
        or torch.cuda.is_current_stream_capturing()
    ):
        # Traced, or inside a CUDA graph: a buffer of its own (zeroed in the graph, owned by
        # its pool), no reuse across calls.
        return torch.zeros(heads, dtype=torch.int32, device=device)
    key = (device.index, _ops._stream(device.index), heads)
    counters = _COUNTERS.get(key)
    if counters is None:
        counters = _COUNTERS[key] = torch.zeros(heads, dtype=torch.int32, device=device)
    return counters


def mlstm_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c: Tensor,
    n: Tensor,
    m: Tensor,
    *,
    variant: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    slots: Optional[Tensor] = None,
    inplace: bool = False,
) -> tuple[Tensor, LastStates]:
    """One generation step of the mLSTM: q, k (B, NH, DQK), v (B, NH, DHV), gates (B, NH, 1)
    or (B, NH); states c (B, NH, DQK, DHV) float32 or bfloat16, n (B, NH, DQK) float32, m
    (B, NH, 1) or (B, NH) float32. Returns h (B, NH, DHV) and the new states.

    ``inplace=True`` updates c, n, m in place (no copy: what a decode loop wants) and returns
    them; otherwise they are copied first. ``slots`` (B integers, distinct): c, n, m are a state
    pool (num_slots, NH, ...) and batch row b reads and updates slot ``slots[b]``, in place.
    Not differentiable.
    """
    _check_options(variant, normalize, "exact")
    for arg, t in (("q", q), ("k", k), ("v", v), ("c", c), ("n", n), ("m", m)):
        _cuda(arg, t)
    q, k, v = _autocast(q, k, v)
    if q.dim() != 3 or v.dim() != 3:
        raise ValueError(f"`q` and `v` must be (B, NH, D), got {tuple(q.shape)} and {tuple(v.shape)}")
    b, nh, dqk = q.shape
    dhv = v.shape[-1]
    _check_shape("k", k, (b, nh, dqk))
    _check_shape("v", v, (b, nh, dhv))
    i, f = _gate("i", i, (b, nh), q.device), _gate("f", f, (b, nh), q.device)
    for arg, t in (("k", k), ("v", v), ("c", c), ("n", n), ("m", m)):
        _same_device(arg, t, q.device)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"`q`, `k`, `v` must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    m_shape = m.shape
    m_flat = m.squeeze(-1) if m.dim() == 3 and m.shape[-1] == 1 else m
    heads = b
    if slots is not None:
        _cuda("slots", slots)
        if slots.dim() != 1 or slots.numel() != b:
            raise ValueError(f"`slots` has shape {tuple(slots.shape)}, expected ({b},)")
        heads = c.shape[0]
        _tfla.check_slots(slots.tolist(), b, heads)
        slots = slots.to(torch.int32).contiguous()
    elif not inplace:
        c, n, m_flat = c.clone(), n.clone(), m_flat.clone()
    _check_shape("c", c, (heads, nh, dqk, dhv))
    _check_shape("n", n, (heads, nh, dqk))
    _check_shape("m", m_flat, (heads, nh))
    for arg, t in (("c", c), ("n", n), ("m", m_flat)):
        if not t.is_contiguous():
            raise ValueError(f"`{arg}` must be contiguous: the step updates it in place")
    if n.dtype != torch.float32 or m_flat.dtype != torch.float32:
        raise ValueError(f"`n` and `m` must be float32, got {n.dtype} and {m_flat.dtype}")
    tiles_done = _arrival_counters(heads * nh, q)
    step = _ops.step_ if _ops.eager(q) else torch.ops.tfla.mlstm_step_
    h = step(
        q.contiguous(), k.contiguous(), v.contiguous(), i, f, c, n, m_flat, tiles_done, slots,
        variant, normalize, float(eps),
    )  # fmt: skip
    return h, (c, n, m_flat.view(m_shape) if m_flat.numel() == m.numel() else m_flat)


_KERNELS = {
    "chunkwise--tfla-exp": dict(variant="exp", normalize=True),
    "chunkwise--tfla-sig": dict(variant="sig", normalize=True),
    "chunkwise--tfla-sig-nonorm": dict(variant="sig", normalize=False),
}
_STEP_KERNELS = {
    "tfla-exp": dict(variant="exp", normalize=True),
    "tfla-sig": dict(variant="sig", normalize=True),
    "tfla-sig-nonorm": dict(variant="sig", normalize=False),
}


def available_kernels() -> list[str]:
    """The names ``get_mlstm_kernel`` and ``get_mlstm_step_kernel`` take."""
    return list(_KERNELS) + list(_STEP_KERNELS)


def get_mlstm_kernel(name: str) -> Callable[..., Union[Tensor, tuple[Tensor, LastStates]]]:
    """A chunkwise kernel with ``mlstm_kernels.torch.get_mlstm_kernel``'s arguments:
    ``kernel(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=False, eps=1e-6, chunk_size=None, autocast_kernel_dtype=torch.float32,
    grad_mode="exact", **ignored)``. As there, under ``torch.autocast`` q, k, v are cast to
    ``autocast_kernel_dtype`` (pass ``torch.bfloat16`` for the tensor-core kernels) and run
    with autocast off; outside it they run in their own dtype. ``mlstm_kernels``' tuning
    arguments (tile sizes, warps, stages, ``recompute_states_in_bw``) are accepted and
    ignored."""
    if name not in _KERNELS:
        raise ValueError(f"unknown tfla kernel {name!r}: expected one of {list(_KERNELS)}")
    fixed = _KERNELS[name]

    def kernel(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        i: Tensor,
        f: Tensor,
        c_initial: Optional[Tensor] = None,
        n_initial: Optional[Tensor] = None,
        m_initial: Optional[Tensor] = None,
        return_last_states: bool = False,
        eps: float = 1e-6,
        chunk_size: Optional[int] = None,
        autocast_kernel_dtype: torch.dtype = torch.float32,
        grad_mode: str = "exact",
        **_tuning,
    ):
        call = functools.partial(
            mlstm_chunkwise, eps=eps, chunk_size=chunk_size, grad_mode=grad_mode,
            return_last_states=return_last_states, **fixed,
        )  # fmt: skip
        if not torch.is_autocast_enabled("cuda"):
            return call(q, k, v, i, f, c_initial, n_initial, m_initial)
        # As mlstm_kernels' custom_fwd(cast_inputs=autocast_kernel_dtype): under autocast
        # the kernel runs in autocast_kernel_dtype with autocast off.
        q, k, v = (t.to(autocast_kernel_dtype) for t in (q, k, v))
        with torch.autocast("cuda", enabled=False):
            return call(q, k, v, i, f, c_initial, n_initial, m_initial)

    kernel.__name__ = name.replace("-", "_")
    return kernel


def get_mlstm_step_kernel(name: str) -> Callable[..., tuple[Tensor, LastStates]]:
    """A step kernel with ``mlstm_kernels.torch.get_mlstm_step_kernel``'s arguments:
    ``kernel(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=None, **ignored)``; returns h and new
    states (copies: the arguments are not changed)."""
    if name not in _STEP_KERNELS:
        raise ValueError(f"unknown tfla step kernel {name!r}: expected one of {list(_STEP_KERNELS)}")
    fixed = _STEP_KERNELS[name]

    def kernel(q, k, v, i, f, c, n, m, eps: float = 1e-6, dtype_state=None, **_tuning):
        if dtype_state is None or c.dtype == dtype_state:
            return mlstm_step(q, k, v, i, f, c, n.float(), m.float(), eps=eps, **fixed)
        # The state dtype changes: the converted C is a copy already; copy n, m and step in
        # place instead of copying C twice.
        c = c.to(dtype_state)
        n, m = n.float().clone(), m.float().clone()
        return mlstm_step(q, k, v, i, f, c, n, m, eps=eps, inplace=True, **fixed)

    kernel.__name__ = name.replace("-", "_")
    return kernel
