"""tfla's kernels as PyTorch custom ops (``torch.ops.tfla.*``).

Every output and workspace buffer is a ``torch.empty`` of PyTorch's allocator, sized by the
layouts the extension returns (``_tfla.output_layout``, ``_tfla.workspace_layout``: the same
functions the Rust API allocates by); buffers that only tfla reads (what the forward keeps for
the backward, the backward's scratch) are packed into one byte buffer each. The kernels run on
PyTorch's current stream in the device's primary context, which PyTorch and tfla's runtime
share. So memory is accounted by PyTorch, CUDA-graph capture sees only PyTorch allocations, and
nothing is copied.

The ops take contiguous tensors (the public functions in ``tfla.torch`` make them so), f32
gates and a chunk size (0: tfla chooses, from the shapes and ``row_stats``, which says a
backward follows; the backward chooses as a forward with row statistics did, so the two
agree); their fake implementations give the same shapes from the same layouts, so
``torch.compile`` traces them without running them.
"""

import functools
from typing import Optional

import torch
from torch import Tensor

from .. import _tfla

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_BYTES = {"bf16": 2, "f16": 2, "f32": 4}

# The forward's outputs a caller sees: h and the final states. Everything else it writes (the
# chunk states, the gate vectors, the row statistics) only the backward reads, so it lives in
# one byte buffer, ``saved``, at the offsets of ``_forward_plan``: one allocation instead of
# nine per call.
PUBLIC = ("h", "c_final", "n_final", "m_final")
GRADS = ("dq", "dk", "dv", "di", "df", "dc0", "dn0", "dm0")
# Sub-buffers of a packed buffer start at multiples of this (the kernels' vector loads need
# 16 bytes; 256 is what PyTorch's allocator gives a tensor of its own).
_ALIGN = 256


def dtype_name(arg: str, t: Tensor) -> str:
    try:
        return _NAMES[t.dtype]
    except KeyError:
        raise ValueError(
            f"`{arg}` has dtype {t.dtype}, expected torch.bfloat16, torch.float16 or torch.float32"
        ) from None


def _ptr(t: Optional[Tensor]) -> int:
    return t.data_ptr() if t is not None and t.numel() > 0 else 0


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(index: int) -> int:
    """The handle of PyTorch's current stream on device ``index`` (without building a
    ``torch.cuda.Stream`` object where torch has the raw accessor)."""
    if _raw_stream is not None:
        return _raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


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


def _pack(layout) -> tuple[int, dict[str, int]]:
    """(bytes, {name: byte offset}) of the layout's buffers in one allocation."""
    offsets, size = {}, 0
    for name, dt, shape in layout:
        numel = 1
        for x in shape:
            numel *= x
        if numel:
            offsets[name] = size
            size += -(-numel * _BYTES[dt] // _ALIGN) * _ALIGN
    return size, offsets


# The plans depend on the arguments alone, so a call pays a dict lookup for them.
@functools.lru_cache(maxsize=256)
def _forward_plan(dims, dtype: str, chunk_size: int, row_stats: bool):
    """((name, torch dtype, shape) of the public outputs, bytes of ``saved``, the offsets in
    it), from ``_tfla.output_layout`` (the layout the Rust API allocates by)."""
    layout = _tfla.output_layout(*dims, dtype, chunk_size, row_stats)
    public = tuple((name, DTYPES[dt], tuple(shape)) for name, dt, shape in layout if name in PUBLIC)
    assert tuple(name for name, _, _ in public) == PUBLIC
    size, offsets = _pack([entry for entry in layout if entry[0] not in PUBLIC])
    return public, size, offsets


@functools.lru_cache(maxsize=256)
def _forward_workspace_plan(
    device_plan: tuple[int, bool], dims, dtype: str, chunk_size: int, row_stats: bool
):
    """(bytes, offsets) of what a forward needs beside its outputs on a device
    (``_tfla.forward_workspace_layout``): the chunk states where ``saved`` leaves them out but
    the device runs two kernels; nothing on a card that runs the one-kernel forward."""
    return _pack(_tfla.forward_workspace_layout(device_plan, *dims, dtype, chunk_size, row_stats))


@functools.lru_cache(maxsize=256)
def _workspace_plan(device_plan: tuple[int, bool], dims, dtype: str, chunk_size: int):
    """(bytes, offsets) of the backward's scratch in one buffer (``_tfla.workspace_layout``)."""
    return _pack(_tfla.workspace_layout(device_plan, *dims, dtype, chunk_size))


def _addresses(base: Tensor, offsets: dict[str, int]) -> dict[str, int]:
    start = base.data_ptr() if base.numel() else 0
    return {name: start + offset for name, offset in offsets.items()}


def _plan(q: Tensor, v: Tensor, chunk_size: int, row_stats: bool):
    """(dims, dtype name, `_forward_plan`) of a forward on q, v."""
    dims, dtype = _dims(q, v), dtype_name("q", q)
    return dims, dtype, _forward_plan(dims, dtype, chunk_size, row_stats)


def _allocate(q: Tensor, plan) -> tuple[Tensor, ...]:
    """The forward's outputs for `plan`: the public ones, then ``saved``."""
    public, size, _ = plan
    out = tuple(q.new_empty(shape, dtype=dt) for _, dt, shape in public)
    return out + (q.new_empty(size, dtype=torch.uint8),)


# The forward's inputs, in the order the ops take them (and the extension's pointer names).
INPUTS = ("q", "k", "v", "i", "f", "c0", "n0", "m0")


def forward_pointers(q, k, v, i, f, c0, n0, m0, out, offsets) -> dict[str, int]:
    """The forward's device addresses by name (the extension's `FwdPointers`): its inputs,
    its outputs `out` (`_allocate`'s), and the buffers in ``saved`` at `offsets`."""
    pointers = _addresses(out[-1], offsets)
    for name, t in (*zip(PUBLIC, out), *zip(INPUTS, (q, k, v, i, f, c0, n0, m0))):
        pointers[name] = _ptr(t)
    return pointers


def backward_pointers(
    q, k, v, i, f, c0, n0, m0, h, c_final, n_final, saved, saved_offsets,
    dh, dc, dn, dm, grads, workspace, workspace_offsets,
) -> dict[str, int]:  # fmt: skip
    """The backward's device addresses by name (the extension's `BwdPointers`): the forward's
    inputs and outputs (``saved`` of a forward with row statistics, at `saved_offsets`), the
    outputs' gradients, `grads` (`GRADS`) and the scratch at `workspace_offsets`."""
    pointers = _addresses(saved, saved_offsets)
    # The forward's m_rows is in `saved` too; the backward does not read it.
    pointers.pop("m_rows", None)
    pointers.update(_addresses(workspace, workspace_offsets))
    for name, t in (
        *zip(INPUTS, (q, k, v, i, f, c0, n0, m0)),
        ("h", h), ("c_final", c_final), ("n_final", n_final), ("dh", dh), ("dc_final", dc),
        ("dn_final", dn), ("dm_final", dm), *zip(GRADS, grads),
    ):  # fmt: skip
        pointers[name] = _ptr(t)
    return pointers


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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward pass: h, the final states c, n, m, and ``saved`` (what the backward reads:
    the chunk states, the gate vectors and, with ``row_stats``, the row statistics, packed;
    without ``row_stats`` no chunk states at the heads the one-kernel forward takes).
    ``grad_mode`` is the backward's, kept with the op's inputs."""
    dims, dtype, plan = _plan(q, v, chunk_size, row_stats)
    out = _allocate(q, plan)
    pointers = forward_pointers(q, k, v, i, f, c0, n0, m0, out, plan[2])
    index = q.get_device()
    size, offsets = _forward_workspace_plan(device_plan(index), dims, dtype, chunk_size, row_stats)
    if size:
        # Freed when the call returns; the caching allocator reuses it only for work queued
        # after this forward on the same stream.
        workspace = q.new_empty(size, dtype=torch.uint8)
        pointers.update(_addresses(workspace, offsets))
    _tfla.forward(
        index, _stream(index), pointers, *dims, dtype, variant, normalize, eps, chunk_size,
        row_stats,
    )  # fmt: skip
    return out


mlstm_fwd = torch.library.custom_op("tfla::mlstm_fwd", forward, mutates_args=(), device_types="cuda")


@mlstm_fwd.register_fake
def _(q, k, v, i, f, c0, n0, m0, variant, normalize, eps, chunk_size, row_stats, grad_mode):
    return _allocate(q, _plan(q, v, chunk_size, row_stats)[2])


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
    saved: Tensor,
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
    """The backward pass from a forward's outputs (``saved`` of a forward with row
    statistics): ``GRADS`` (the initial states' gradients empty where the forward had no
    initial state)."""
    grads = _grads(q, k, v, c0, n0, m0)
    dims, dtype, plan = _plan(q, v, chunk_size, True)
    if int(saved.numel()) != plan[1]:
        # Another forward's buffer: without row statistics, or for another chunk size (with
        # chunk_size 0 the L follows row_stats). The kernels would read past it.
        raise ValueError(
            f"`saved` has {int(saved.numel())} bytes where a forward with row statistics at "
            f"chunk_size = {chunk_size} writes {plan[1]}: pass the `saved` of such a forward"
        )
    index = q.get_device()
    size, offsets = _workspace_plan(device_plan(index), dims, dtype, chunk_size)
    workspace = q.new_empty(size, dtype=torch.uint8)
    pointers = backward_pointers(
        q, k, v, i, f, c0, n0, m0, h, c_final, n_final, saved, plan[2],
        dh, dc, dn, dm, grads, workspace, offsets,
    )  # fmt: skip
    _tfla.backward(
        index, _stream(index), pointers, *dims, dtype, variant, normalize, eps, chunk_size,
        grad_mode,
    )  # fmt: skip
    return grads


mlstm_bwd = torch.library.custom_op("tfla::mlstm_bwd", backward, mutates_args=(), device_types="cuda")


@mlstm_bwd.register_fake
def _(q, k, v, i, f, c0, n0, m0, *rest):
    return _grads(q, k, v, c0, n0, m0)


def _setup_context(ctx, inputs, output):
    q, k, v, i, f, c0, n0, m0, variant, normalize, eps, chunk_size, row_stats, grad_mode = inputs
    h, c, n, _m, saved = output
    ctx.save_for_backward(q, k, v, i, f, c0, n0, m0, h, c, n, saved)
    ctx.config = (variant, normalize, eps, chunk_size, grad_mode)
    ctx.row_stats = row_stats
    ctx.has_initial = (c0 is not None, n0 is not None, m0 is not None)
    # Gradients of outputs nobody used stay None instead of materialized zeros.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(saved)


def _backward_with(bwd, ctx, dh, dc, dn, dm):
    """The gradients of the forward's inputs, through ``bwd``: the op (traced) or ``backward``
    (eager)."""
    if not ctx.row_stats:
        raise RuntimeError(
            "tfla: this forward ran without row statistics (no input required grad when it "
            "ran), so it cannot be differentiated"
        )
    q, k, v, i, f, c0, n0, m0, h, c, n, saved = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dc, dn, dm = (None if t is None else t.contiguous() for t in (dc, dn, dm))
    dq, dk, dv, di, df, dc0, dn0, dm0 = bwd(
        q, k, v, i, f, c0, n0, m0, h, c, n, saved, dh, dc, dn, dm, *ctx.config,
    )  # fmt: skip
    has_c0, has_n0, has_m0 = ctx.has_initial
    return (
        dq, dk, dv, di, df,
        dc0 if has_c0 else None, dn0 if has_n0 else None, dm0 if has_m0 else None,
        None, None, None, None, None, None,
    )  # fmt: skip


def _backward(ctx, dh, dc, dn, dm, _saved):
    return _backward_with(mlstm_bwd, ctx, dh, dc, dn, dm)


mlstm_fwd.register_autograd(_backward, setup_context=_setup_context)


class Chunkwise(torch.autograd.Function):
    """The same forward and backward as ``mlstm_fwd`` with its autograd, without the
    dispatcher: an eager call through ``torch.ops`` costs 15–50 µs of host time more (the
    custom op's dispatch and its autograd wrapper), which at the small heads is several
    percent of the call. ``mlstm_chunkwise`` takes this path where nothing traces the call
    (see ``eager``); torch.compile, fake tensors, functorch transforms and dispatch modes see
    the op."""

    @staticmethod
    def forward(*inputs):
        return forward(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, dh, dc, dn, dm, _saved):
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
    index = q.get_device()
    _tfla.step(
        index, _stream(index), {name: _ptr(t) for name, t in pointers.items()},
        b, nh, dqk, dhv, dtype_name("q", q), dtype_name("c", c), variant, normalize, eps,
    )  # fmt: skip
    return h


mlstm_step_ = torch.library.custom_op(
    "tfla::mlstm_step_", step_, mutates_args=("c", "n", "m", "tiles_done"), device_types="cuda"
)


@mlstm_step_.register_fake
def _(q, k, v, i, f, c, n, m, tiles_done, slots, variant, normalize, eps):
    return torch.empty_like(v)
