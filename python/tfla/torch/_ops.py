"""tfla's kernels as PyTorch custom ops (``torch.ops.tfla.*``).

Every output and workspace buffer is a ``torch.empty`` of PyTorch's allocator, shaped by the
layouts the extension returns (``_tfla.output_layout``, ``_tfla.workspace_layout``: the same
functions the Rust API allocates by); the kernels run on ``torch.cuda.current_stream()`` in the
device's primary context, which PyTorch and tfla's runtime share. So memory is accounted by
PyTorch, CUDA-graph capture sees only PyTorch allocations, and nothing is copied.

The ops take contiguous tensors (the public functions in ``tfla.torch`` make them so), f32
gates and a chunk size (0: tfla chooses, from the shapes alone, so forward and backward agree); their fake implementations give the same shapes from the same layouts, so
``torch.compile`` traces them without running them.
"""


import functools
from typing import Optional

import torch
from torch import Tensor

from .. import _tfla

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# The forward op's outputs, in order: h, the final states, then what the backward reads.
FWD_OUTPUTS = (
    "h", "c_final", "n_final", "m_final", "c_states", "n_states", "m_states",
    "gate_b", "gate_u", "gate_cm", "gate_g", "m_rows", "norm_rows",
)  # fmt: skip
GRADS = ("dq", "dk", "dv", "di", "df", "dc0", "dn0", "dm0")


def dtype_name(arg: str, t: Tensor) -> str:
    try:
        return _NAMES[t.dtype]
    except KeyError:
        raise ValueError(
            f"`{arg}` has dtype {t.dtype}, expected torch.bfloat16, torch.float16 or torch.float32"
        ) from None


def _ptr(t: Optional[Tensor]) -> int:
    return t.data_ptr() if t is not None and t.numel() > 0 else 0


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@functools.lru_cache(maxsize=None)
def device_plan(index: int) -> tuple[int, bool]:
    """(shared memory per block, wgmma) of the runtime on device ``index``: the backward's
    workspace depends on which kernels fit the card."""
    return _tfla.device_plan(index)


def _empty(like: Tensor) -> Tensor:
    """A 0-element f32 tensor: what an op returns for an output the call does not have."""
    return like.new_empty(0, dtype=torch.float32)


def _dims(q: Tensor, v: Tensor) -> tuple[int, int, int, int, int]:
    # int(): under torch.compile's dynamic shapes these are SymInts, which the layouts (Rust,
    # and cached by value) cannot take; the layouts need the concrete sizes anyway.
    b, nh, s, dqk = (int(x) for x in q.shape)
    return b, nh, s, dqk, int(v.shape[-1])


# The layouts depend on the arguments alone; cached, a call pays a dict lookup for them
# instead of a call into the extension that builds the lists again.
_output_layout = functools.lru_cache(maxsize=256)(_tfla.output_layout)
_workspace_layout = functools.lru_cache(maxsize=256)(_tfla.workspace_layout)


def _outputs(q: Tensor, v: Tensor, chunk_size: int, row_stats: bool) -> tuple[Tensor, ...]:
    layout = _output_layout(*_dims(q, v), dtype_name("q", q), chunk_size, row_stats)
    out = {name: q.new_empty(shape, dtype=DTYPES[dt]) for name, dt, shape in layout}
    return tuple(out[name] if name in out else _empty(q) for name in FWD_OUTPUTS)


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c0: Optional[Tensor],
    n0: Optional[Tensor],
    m0: Optional[Tensor],
    variant: str,
    normalize: bool,
    eps: float,
    chunk_size: int,
    row_stats: bool,
    grad_mode: str,
) -> tuple[
    Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
    Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
]:  # fmt: skip
    """The forward pass: ``FWD_OUTPUTS`` (``m_rows``, ``norm_rows`` empty without
    ``row_stats``). ``grad_mode`` is the backward's, kept with the op's inputs."""
    out = _outputs(q, v, chunk_size, row_stats)
    pointers = {"q": q, "k": k, "v": v, "i": i, "f": f, "c0": c0, "n0": n0, "m0": m0}
    pointers.update(zip(FWD_OUTPUTS, out))
    _tfla.forward(
        q.device.index, _stream(q.device), {n: _ptr(t) for n, t in pointers.items()},
        *_dims(q, v), dtype_name("q", q), variant, normalize, eps, chunk_size, row_stats,
    )  # fmt: skip
    return out


mlstm_fwd = torch.library.custom_op("tfla::mlstm_fwd", forward, mutates_args=(), device_types="cuda")


@mlstm_fwd.register_fake
def _(q, k, v, i, f, c0, n0, m0, variant, normalize, eps, chunk_size, row_stats, grad_mode):
    return _outputs(q, v, chunk_size, row_stats)


def _grads(q, k, v, c0, n0, m0) -> tuple[Tensor, ...]:
    b, nh, s, _ = q.shape
    gate = q.new_empty((b, nh, s), dtype=torch.float32)

    def initial(t: Optional[Tensor]) -> Tensor:
        return torch.empty_like(t, dtype=torch.float32) if t is not None else _empty(q)

    return (
        torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), gate, torch.empty_like(gate),
        initial(c0), initial(n0), initial(m0),
    )  # fmt: skip


def backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c0: Optional[Tensor],
    n0: Optional[Tensor],
    m0: Optional[Tensor],
    h: Tensor,
    c_final: Tensor,
    n_final: Tensor,
    c_states: Tensor,
    n_states: Tensor,
    m_states: Tensor,
    gate_b: Tensor,
    gate_u: Tensor,
    gate_cm: Tensor,
    gate_g: Tensor,
    norm_rows: Tensor,
    dh: Tensor,
    dc: Optional[Tensor],
    dn: Optional[Tensor],
    dm: Optional[Tensor],
    variant: str,
    normalize: bool,
    eps: float,
    chunk_size: int,
    grad_mode: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward pass from a forward's outputs (with row statistics): ``GRADS`` (the
    initial states' gradients empty where the forward had no initial state)."""
    grads = _grads(q, k, v, c0, n0, m0)
    dims = _dims(q, v)
    dtype = dtype_name("q", q)
    workspace = {
        name: q.new_empty(shape, dtype=DTYPES[dt])
        for name, dt, shape in _workspace_layout(device_plan(q.device.index), *dims, dtype, chunk_size)
    }
    pointers = {
        "q": q, "k": k, "v": v, "i": i, "f": f, "c0": c0, "n0": n0, "m0": m0, "h": h,
        "c_final": c_final, "n_final": n_final, "c_states": c_states, "n_states": n_states,
        "m_states": m_states, "gate_b": gate_b, "gate_u": gate_u, "gate_cm": gate_cm,
        "gate_g": gate_g, "norm_rows": norm_rows, "dh": dh, "dc_final": dc, "dn_final": dn,
        "dm_final": dm, **workspace, **dict(zip(GRADS, grads)),
    }  # fmt: skip
    _tfla.backward(
        q.device.index, _stream(q.device), {n: _ptr(t) for n, t in pointers.items()},
        *dims, dtype, variant, normalize, eps, chunk_size, grad_mode,
    )  # fmt: skip
    return grads


mlstm_bwd = torch.library.custom_op("tfla::mlstm_bwd", backward, mutates_args=(), device_types="cuda")


@mlstm_bwd.register_fake
def _(q, k, v, i, f, c0, n0, m0, *rest):
    return _grads(q, k, v, c0, n0, m0)


def _setup_context(ctx, inputs, output):
    q, k, v, i, f, c0, n0, m0, variant, normalize, eps, chunk_size, row_stats, grad_mode = inputs
    h, c, n, _m, cs, ns, ms, gb, gu, gcm, gg, m_rows, norm_rows = output
    ctx.save_for_backward(q, k, v, i, f, c0, n0, m0, h, c, n, cs, ns, ms, gb, gu, gcm, gg, norm_rows)
    ctx.config = (variant, normalize, eps, chunk_size, grad_mode)
    ctx.row_stats = row_stats
    ctx.has_initial = (c0 is not None, n0 is not None, m0 is not None)
    # Gradients of outputs nobody used stay None instead of materialized zeros (the chunk
    # states alone are NC·DQK·DHV per head).
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(cs, ns, ms, gb, gu, gcm, gg, m_rows, norm_rows)


def _backward_with(bwd, ctx, dh, dc, dn, dm):
    """The gradients of the forward's inputs, through ``bwd``: the op (traced) or ``backward``
    (eager)."""
    if not ctx.row_stats:
        raise RuntimeError(
            "tfla: this forward ran without row statistics (no input required grad when it "
            "ran), so it cannot be differentiated"
        )
    q, k, v, i, f, c0, n0, m0, h, c, n, cs, ns, ms, gb, gu, gcm, gg, norm_rows = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dc, dn, dm = (None if t is None else t.contiguous() for t in (dc, dn, dm))
    dq, dk, dv, di, df, dc0, dn0, dm0 = bwd(
        q, k, v, i, f, c0, n0, m0, h, c, n, cs, ns, ms, gb, gu, gcm, gg, norm_rows,
        dh, dc, dn, dm, *ctx.config,
    )  # fmt: skip
    has_c0, has_n0, has_m0 = ctx.has_initial
    return (
        dq, dk, dv, di, df,
        dc0 if has_c0 else None, dn0 if has_n0 else None, dm0 if has_m0 else None,
        None, None, None, None, None, None,
    )  # fmt: skip


def _backward(ctx, dh, dc, dn, dm, *_unused):
    return _backward_with(mlstm_bwd, ctx, dh, dc, dn, dm)


mlstm_fwd.register_autograd(_backward, setup_context=_setup_context)


class Chunkwise(torch.autograd.Function):
    """The same forward and backward as ``mlstm_fwd`` with its autograd, without the
    dispatcher: an eager call through ``torch.ops`` costs 15–50 µs of host time more (the
    custom op's dispatch and its autograd wrapper, measured on the CPU), which at the small
    heads is several percent of the call. ``mlstm_chunkwise`` takes this path where nothing
    traces the call (see ``eager``); torch.compile, fake tensors, functorch transforms and
    dispatch modes see the op."""

    @staticmethod
    def forward(*inputs):
        return forward(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, dh, dc, dn, dm, *_unused):
        return _backward_with(backward, ctx, dh, dc, dn, dm)


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 1)


def eager(q: Tensor) -> bool:
    """Whether a call on ``q`` may skip the dispatcher: a plain tensor, no compile, no
    functorch transform, no dispatch mode (where the torch version lacks one of these
    checks, never)."""
    return (
        type(q) is Tensor
        and not torch.compiler.is_compiling()
        and not _functorch_active()
        and _dispatch_modes() == 0
    )


def step_(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    c: Tensor,
    n: Tensor,
    m: Tensor,
    tiles_done: Tensor,
    slots: Optional[Tensor],
    variant: str,
    normalize: bool,
    eps: float,
) -> Tensor:
    """One generation step: returns h, updates c, n, m (or, with ``slots``, the pool's slots)
    in place. ``tiles_done``: int32 zeros, one per state head, left zero."""
    b, nh, dqk = q.shape
    dhv = v.shape[-1]
    h = torch.empty_like(v)
    pointers = {
        "q": q, "k": k, "v": v, "i": i, "f": f, "c": c, "n": n, "m": m, "h": h,
        "tiles_done": tiles_done, "slots": slots,
    }  # fmt: skip
    _tfla.step(
        q.device.index, _stream(q.device), {name: _ptr(t) for name, t in pointers.items()},
        b, nh, dqk, dhv, dtype_name("q", q), dtype_name("c", c), variant, normalize, eps,
    )  # fmt: skip
    return h


mlstm_step_ = torch.library.custom_op(
    "tfla::mlstm_step_", step_, mutates_args=("c", "n", "m", "tiles_done"), device_types="cuda"
)


@mlstm_step_.register_fake
def _(q, k, v, i, f, c, n, m, tiles_done, slots, variant, normalize, eps):
    return torch.empty_like(v)
