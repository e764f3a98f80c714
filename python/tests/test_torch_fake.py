"""The PyTorch layer without a GPU (CI): the ops' fake (meta) implementations give the shapes
and dtypes the kernels write, ``torch.export`` (Dynamo, strict) traces ``mlstm_chunkwise`` into
one graph around the custom op, and bad arguments raise before anything reaches a device.

Needs torch (any build); skipped where it is missing. Fake CUDA tensors need no GPU."""

import math

import pytest

torch = pytest.importorskip("torch")
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import tfla.torch as tt  # noqa: E402
from tfla import _tfla  # noqa: E402
from tfla.torch import _ops  # noqa: E402

CUDA = torch.device("cuda", 0)


def fake_inputs(b, nh, s, dqk, dhv, dtype=torch.bfloat16):
    empty = lambda *shape, dt=dtype: torch.empty(*shape, device=CUDA, dtype=dt)  # noqa: E731
    return (
        empty(b, nh, s, dqk), empty(b, nh, s, dqk), empty(b, nh, s, dhv),
        empty(b, nh, s, dt=torch.float32), empty(b, nh, s, dt=torch.float32),
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("chunk", [0, 64, 256])
def test_forward_fake_gives_the_kernels_shapes(dtype, chunk):
    b, nh, s, dqk, dhv = 2, 3, 300, 64, 32
    with FakeTensorMode():
        q, k, v, i, f = fake_inputs(b, nh, s, dqk, dhv, dtype)
        out = torch.ops.tfla.mlstm_fwd(q, k, v, i, f, None, None, None, "exp", True, 1e-6, chunk, True, "exact")
        run = chunk or _tfla.chunk_size(b, nh, s, dqk, dhv, 0, backward=True)  # 0: tfla chooses
        nc = -(-s // run)
        h, c, n, m, saved = out
        assert (h.shape, h.dtype, h.device) == ((b, nh, s, dhv), dtype, CUDA)
        assert (c.shape, n.shape, m.shape) == ((b, nh, dqk, dhv), (b, nh, dqk), (b, nh))
        assert c.dtype == n.dtype == m.dtype == torch.float32
        # What only the backward reads, packed in one byte buffer: the chunk states (NC per
        # head), the gate vectors and the row statistics, each at a 256-byte boundary.
        size = {"bf16": 2, "f16": 2, "f32": 4}
        parts = {
            name: size[dt] * math.prod(shape)
            for name, dt, shape in _tfla.output_layout(b, nh, s, dqk, dhv, _ops.dtype_name("q", q), chunk, True)
        }
        assert parts["c_states"] == size[_ops.dtype_name("q", q)] * b * nh * nc * dqk * dhv
        assert parts["gate_b"] == 4 * b * nh * nc * run and parts["norm_rows"] == 4 * b * nh * s
        packed = sum(-(-parts[p] // 256) * 256 for p in parts if p not in ("h", "c_final", "n_final", "m_final"))
        assert (saved.dtype, saved.shape) == (torch.uint8, (packed,))
        grads = torch.ops.tfla.mlstm_bwd(
            q, k, v, i, f, None, None, None, h, c, n, saved,
            torch.empty_like(h), None, None, None, "exp", True, 1e-6, chunk, "exact",
        )  # fmt: skip
        for g, x in zip(grads[:5], (q, k, v, i, f)):
            assert g.shape == x.shape
        assert grads[0].dtype == dtype and grads[3].dtype == torch.float32
        assert all(g.numel() == 0 for g in grads[5:])  # no initial states: empty


def test_public_function_under_fake_tensors_returns_mlstm_kernels_shapes():
    with FakeTensorMode():
        q, k, v, i, f = fake_inputs(2, 4, 100, 32, 64)
        m0 = torch.empty(2, 4, 1, device=CUDA)
        h, (c, n, m) = tt.mlstm_chunkwise(q, k, v, i, f, m_initial=m0, return_last_states=True)
        assert h.shape == (2, 4, 100, 64) and c.shape == (2, 4, 32, 64) and m.shape == (2, 4, 1)
        # A drop-in callable with mlstm_kernels' arguments, tuning arguments ignored.
        kernel = tt.get_mlstm_kernel("chunkwise--tfla-sig-nonorm")
        assert kernel(q, k, v, i, f, chunk_size=64, siz_b_L_loop=32).shape == (2, 4, 100, 64)
        state = torch.empty(2, 4, 32, 64, device=CUDA)
        h1, (c1, n1, m1) = tt.mlstm_step(
            q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state,
            torch.empty(2, 4, 32, device=CUDA), torch.empty(2, 4, 1, device=CUDA),
        )  # fmt: skip
        assert h1.shape == (2, 4, 64) and c1.shape == state.shape and m1.shape == (2, 4, 1)


def test_only_plain_untraced_calls_take_the_eager_path():
    from torch.utils._python_dispatch import TorchDispatchMode

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    plain = torch.empty(2)
    assert _ops.eager(plain)
    with FakeTensorMode():
        assert not _ops.eager(torch.empty(2))
    with PassThrough():
        assert not _ops.eager(plain)
    assert not torch.compile(lambda t: _ops.eager(t), fullgraph=True, backend="eager")(plain)
    assert torch.func.grad(lambda t: (t * float(_ops.eager(t))).sum())(plain).sum() == 0


def test_export_traces_one_graph_around_the_custom_op():
    class Cell(torch.nn.Module):
        def forward(self, q, k, v, i, f):
            return tt.mlstm_chunkwise(q, k, v, i, f, variant="sig")

    with FakeTensorMode(allow_non_fake_inputs=True):
        program = torch.export.export(Cell(), fake_inputs(1, 2, 128, 64, 64), strict=True)
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.tfla.mlstm_fwd.default in ops


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(device="cpu"), "`q` is on cpu: tfla's kernels need CUDA tensors"),
        (dict(variant="lstm"), "`variant` = 'lstm' is invalid"),
        (dict(grad_mode="x"), "`grad_mode` = 'x' is invalid"),
        (dict(variant="exp", normalize=False), "`normalize` = False is invalid"),
        (dict(k_shape=(1, 2, 64, 16)), "`k` has shape"),
        (dict(q_dtype=torch.float64), "expected torch.bfloat16"),
        (dict(cu_seqlens=[0, 5, 3, 64]), "`cu_seqlens` = \\[0, 5, 3, 64\\] is invalid"),
    ],
)
def test_bad_arguments_raise_before_any_launch(change, message):
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v, i, f = fake_inputs(1, 2, 64, 32, 32)
        if change.get("device") == "cpu":
            q = torch.empty(1, 2, 64, 32)
        if "k_shape" in change:
            k = torch.empty(change["k_shape"], device=CUDA, dtype=torch.bfloat16)
        if "q_dtype" in change:
            q, k, v = (t.to(change["q_dtype"]) for t in (q, k, v))
        kwargs = {key: change[key] for key in ("variant", "grad_mode", "normalize", "cu_seqlens") if key in change}
        with pytest.raises(ValueError, match=message):
            tt.mlstm_chunkwise(q, k, v, i, f, **kwargs)


def test_forward_fake_without_row_stats_takes_the_forward_alone_chunk():
    # 128/256 heads, one of them: a forward alone takes L = 256, one a backward follows 128;
    # the fake's `saved` is that of the L the real op runs with the same row_stats.
    b, nh, s, dqk, dhv = 1, 1, 512, 128, 256
    with FakeTensorMode():
        q, k, v, i, f = fake_inputs(b, nh, s, dqk, dhv)
        for row_stats in (False, True):
            out = torch.ops.tfla.mlstm_fwd(q, k, v, i, f, None, None, None, "exp", True, 1e-6, 0, row_stats, "exact")
            run = _tfla.chunk_size(b, nh, s, dqk, dhv, 0, backward=row_stats)
            assert out[4].shape == (_ops._forward_plan((b, nh, s, dqk, dhv), "bf16", run, row_stats)[1],)
    assert _tfla.chunk_size(b, nh, s, dqk, dhv, 0) != _tfla.chunk_size(b, nh, s, dqk, dhv, 0, backward=True)


def test_the_backward_rejects_saved_of_another_forward():
    # 128/256 heads, one of them: a forward alone takes L = 256, one a backward follows 128,
    # so a forward-alone's `saved` is not what the backward reads. Checked before any launch
    # (CPU tensors reach no device).
    b, nh, s, dqk, dhv = 1, 1, 512, 128, 256
    assert _tfla.chunk_size(b, nh, s, dqk, dhv, 0) != _tfla.chunk_size(b, nh, s, dqk, dhv, 0, backward=True)
    q, k = (torch.zeros(b, nh, s, dqk, dtype=torch.bfloat16) for _ in range(2))
    v = torch.zeros(b, nh, s, dhv, dtype=torch.bfloat16)
    i, f = (torch.zeros(b, nh, s) for _ in range(2))
    alone = _ops._forward_plan((b, nh, s, dqk, dhv), "bf16", 0, False)[1]
    saved = torch.zeros(alone, dtype=torch.uint8)
    c, n = torch.zeros(b, nh, dqk, dhv), torch.zeros(b, nh, dqk)
    with pytest.raises(ValueError, match="`saved` has"):
        _ops.backward(
            q, k, v, i, f, None, None, None, torch.zeros_like(v), c, n, saved,
            torch.zeros_like(v), None, None, None, "exp", True, 1e-6, 0, "exact",
        )  # fmt: skip
