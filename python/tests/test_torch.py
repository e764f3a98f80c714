"""tfla's PyTorch ops on a GPU: against the float64 reference, against mlstm_kernels, under
torch.compile, CUDA graphs, other streams and autocast, and without leaking memory.

Skipped as a whole where torch or a CUDA device is missing (reported as skipped, never as
passed). Outputs are checked by their relative error ‖x − x_ref‖ / ‖x_ref‖ against the
float64 reference on the same (rounded) inputs; NaN or inf anywhere fails.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import tfla.torch as tt  # noqa: E402
from tfla import reference  # noqa: E402

DEV = torch.device("cuda")
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
# Relative error bounds of h and of the gradients: 16-bit inputs are rounded before the
# reference sees them, so what remains is the kernels' own rounding (16-bit C̃ states and
# score tiles, f32 accumulation); f32 runs the f32 recurrence.
FWD_TOL = {"bf16": 2e-2, "f16": 4e-3, "f32": 2e-5}
BWD_TOL = {"bf16": 5e-2, "f16": 1e-2, "f32": 1e-4}
VARIANTS = [("exp", True), ("sig", True), ("sig", False)]


def inputs(b, nh, s, dqk, dhv, dtype, seed=0, states=False):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rn(*shape, shift=0.0, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(DEV)

    x = dict(
        q=rn(b, nh, s, dqk).to(dtype),
        k=rn(b, nh, s, dqk).to(dtype),
        v=rn(b, nh, s, dhv).to(dtype),
        i=rn(b, nh, s).float(),
        f=rn(b, nh, s, shift=3.0).float(),
    )
    if states:
        x.update(
            c_initial=rn(b, nh, dqk, dhv, scale=0.3).float(),
            n_initial=rn(b, nh, dqk, scale=0.3).abs().float(),
            m_initial=rn(b, nh, 1, scale=0.3).float(),
        )
    return x


def cpu(t):
    return None if t is None else t.detach().double().cpu()


def rel(x, ref):
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    ref = torch.as_tensor(np.asarray(ref))
    x = x.detach().double().cpu().reshape(ref.shape)
    assert torch.isfinite(x).all(), "non-finite values"
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def ref_forward(x, variant, normalize):
    m0 = x.get("m_initial")
    return reference.forward(
        cpu(x["q"]), cpu(x["k"]), cpu(x["v"]), cpu(x["i"]), cpu(x["f"]),
        cpu(x.get("c_initial")), cpu(x.get("n_initial")), None if m0 is None else cpu(m0).squeeze(-1),
        variant=variant, normalize=normalize,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("variant, normalize", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 2, 1, 16, 16), (2, 2, 77, 32, 64), (1, 3, 300, 64, 32)])
@pytest.mark.parametrize("states", [False, True])
def test_forward_matches_the_reference(dtype, variant, normalize, shape, states):
    x = inputs(*shape, DTYPES[dtype], seed=sum(shape), states=states)
    h, (c, n, m) = tt.mlstm_chunkwise(**x, variant=variant, normalize=normalize, return_last_states=True)
    ref = ref_forward(x, variant, normalize)
    assert h.dtype == DTYPES[dtype] and h.shape == x["v"].shape
    assert rel(h, ref.h) < FWD_TOL[dtype]
    assert rel(c, ref.c) < FWD_TOL[dtype]
    if normalize:
        assert rel(n, ref.n) < FWD_TOL[dtype]
    assert m.shape == (shape[0], shape[1], 1)
    if variant == "exp":
        np.testing.assert_allclose(cpu(m).squeeze(-1).numpy(), ref.m, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [64, 128, 256, 512, 1024])
def test_every_chunk_size(chunk_size):
    x = inputs(1, 2, 600, 64, 64, torch.bfloat16, seed=chunk_size)
    h = tt.mlstm_chunkwise(**x, chunk_size=chunk_size)
    assert rel(h, ref_forward(x, "exp", True).h) < FWD_TOL["bf16"]


@pytest.mark.parametrize("variant, normalize", VARIANTS)
def test_a_forward_no_backward_follows_keeps_no_chunk_states(variant, normalize):
    # Without row statistics (no input requires grad), at the one-kernel forward's heads and
    # L, `saved` holds no chunk states and the kernel stores none: h and the final states equal
    # those of the forward a backward follows, bit for bit, and match the reference.
    b, nh, s, d = 2, 3, 300, 128
    x = inputs(b, nh, s, d, d, torch.bfloat16, seed=7, states=True)
    args = [x[n] for n in ("q", "k", "v", "i", "f", "c_initial", "n_initial")]
    args.append(x["m_initial"].squeeze(-1))
    kept, inference = (
        torch.ops.tfla.mlstm_fwd(*args, variant, normalize, 1e-6, 128, row_stats, "exact")
        for row_stats in (True, False)
    )
    states_bytes = b * nh * 3 * d * d * 2  # NC = 3 chunk states of 128 × 128 in bf16
    assert kept[4].numel() - inference[4].numel() >= states_bytes
    for got, want in zip(inference[:4], kept[:4]):
        assert torch.equal(got, want)
    assert rel(inference[0], ref_forward(x, variant, normalize).h) < FWD_TOL["bf16"]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("variant, normalize", VARIANTS)
@pytest.mark.parametrize("grad_mode", ["exact", "detached"])
@pytest.mark.parametrize("states", [False, True])
def test_gradients_match_the_reference(dtype, variant, normalize, grad_mode, states):
    shape = (1, 2, 150, 32, 64)
    x = inputs(*shape, DTYPES[dtype], seed=7, states=states)
    leaves = {name: t.clone().requires_grad_() for name, t in x.items()}
    h, (c, n, m) = tt.mlstm_chunkwise(
        **leaves, variant=variant, normalize=normalize, grad_mode=grad_mode, return_last_states=True
    )
    g = torch.Generator(device="cpu").manual_seed(11)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(DEV).to(h.dtype)
    dc = torch.randn(c.shape, generator=g, dtype=torch.float64).to(DEV).float() * 0.1
    torch.autograd.backward([h, c], [dh, dc])
    m0 = x.get("m_initial")
    ref = reference.backward(
        cpu(x["q"]), cpu(x["k"]), cpu(x["v"]), cpu(x["i"]), cpu(x["f"]), cpu(dh),
        cpu(x.get("c_initial")), cpu(x.get("n_initial")), None if m0 is None else cpu(m0).squeeze(-1),
        cpu(dc), variant=variant, normalize=normalize, grad_mode=grad_mode,
    )  # fmt: skip
    tol = BWD_TOL[dtype]
    for name, want in (("q", ref.dq), ("k", ref.dk), ("v", ref.dv), ("i", ref.di), ("f", ref.df)):
        assert rel(leaves[name].grad, want) < tol, name
        assert leaves[name].grad.dtype == x[name].dtype
    if states:
        assert rel(leaves["c_initial"].grad, ref.dc0) < tol
        if normalize and grad_mode == "exact":
            assert rel(leaves["n_initial"].grad, ref.dn0) < tol


def test_non_contiguous_inputs_are_copied():
    x = inputs(1, 2, 64, 32, 32, torch.bfloat16)
    q_t = x["q"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not q_t.is_contiguous()
    h = tt.mlstm_chunkwise(q_t, x["k"], x["v"], x["i"], x["f"])
    torch.testing.assert_close(h, tt.mlstm_chunkwise(**x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(q="cpu"), ValueError, "need CUDA tensors"),
        (dict(shape=(1, 2, 64, 40, 64)), ValueError, "`DQK` = 40 is not supported"),
        (dict(chunk_size=100), ValueError, "`chunk_size` = 100 is not supported"),
        (dict(variant="lstm"), ValueError, "`variant` = 'lstm' is invalid"),
        (dict(grad_mode="approx"), ValueError, "`grad_mode` = 'approx' is invalid"),
        (dict(dtype=torch.float64), ValueError, "expected torch.bfloat16"),
    ],
)
def test_bad_input_raises_with_the_hosts_message(change, error, message):
    shape = change.get("shape", (1, 2, 64, 32, 64))
    x = inputs(*shape, change.get("dtype", torch.bfloat16))
    if change.get("q") == "cpu":
        x["q"] = x["q"].cpu()
    kwargs = {k: change[k] for k in ("chunk_size", "variant", "grad_mode") if k in change}
    with pytest.raises(error, match=message):
        tt.mlstm_chunkwise(**x, **kwargs)


def test_same_as_mlstm_kernels_forward_and_detached_gradients(monkeypatch):
    mk = pytest.importorskip("mlstm_kernels.torch")
    # Triton 3.6 aborts in LLVM's optimizer on the exp forward kernel (BENCHMARKS.md,
    # "Reference kernels: how they are run"); its result does not depend on the optimizer.
    monkeypatch.setenv("DISABLE_LLVM_OPT", "1")
    for ours, theirs, kw in [
        ("chunkwise--tfla-exp", "chunkwise--triton_xl_chunk", {}),
        ("chunkwise--tfla-sig", "chunkwise--triton_xl_chunk_siging", dict(normalize=True)),
        ("chunkwise--tfla-sig-nonorm", "chunkwise--triton_xl_chunk_siging", dict(normalize=False)),
    ]:
        x = inputs(2, 2, 256, 64, 64, torch.bfloat16, seed=5)
        results = []
        for kernel, extra in ((tt.get_mlstm_kernel(ours), dict(grad_mode="detached")), (mk.get_mlstm_kernel(theirs), kw)):
            leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
            h = kernel(**leaves, chunk_size=128, **extra)
            h.backward(torch.ones_like(h))
            results.append((h, *(leaves[n].grad for n in "qkvif")))
        for name, a, b in zip(("h", "dq", "dk", "dv", "di", "df"), *results):
            assert rel(a, cpu(b)) < 3e-2, (ours, name)


def test_torch_compile_fullgraph_matches_eager():
    x = inputs(1, 2, 128, 64, 64, torch.bfloat16)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}

    def loss(q, k, v, i, f):
        return (tt.mlstm_chunkwise(q, k, v, i, f) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True)
    eager = loss(**leaves)
    eager.backward()
    grads = [leaves[n].grad.clone() for n in "qkvif"]
    for t in leaves.values():
        t.grad = None
    out = compiled(**leaves)
    out.backward()
    torch.testing.assert_close(out, eager)
    for a, n in zip(grads, "qkvif"):
        torch.testing.assert_close(leaves[n].grad, a)


class _SeenOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Passes every op through and records its name: a dispatch mode makes
    ``mlstm_chunkwise`` take the custom ops instead of the eager path."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant, normalize", VARIANTS)
def test_eager_path_equals_the_custom_ops(variant, normalize):
    x = inputs(2, 2, 200, 64, 32, torch.bfloat16, states=True)

    def run(mode):
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        with mode:
            h, (c, n, m) = tt.mlstm_chunkwise(
                **leaves, variant=variant, normalize=normalize, return_last_states=True
            )
            (h.float().square().sum() + c.sum() + n.sum()).backward()
        return [h, c, n, m] + [leaves[name].grad for name in sorted(leaves)]

    import contextlib

    eager = run(contextlib.nullcontext())
    mode = _SeenOps()
    traced = run(mode)
    assert {"tfla.mlstm_fwd.default", "tfla.mlstm_bwd.default"} <= mode.seen
    for a, b in zip(eager, traced):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cuda_graph_replay_matches_eager():
    x = inputs(2, 2, 256, 64, 64, torch.bfloat16)
    static = {n: t.clone() for n, t in x.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        tt.mlstm_chunkwise(**static)  # warm-up: the runtime and the entry points
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tt.mlstm_chunkwise(**static)
    fresh = inputs(2, 2, 256, 64, 64, torch.bfloat16, seed=99)
    for n in static:
        static[n].copy_(fresh[n])
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, tt.mlstm_chunkwise(**fresh), rtol=0, atol=0)


def test_runs_on_the_current_non_default_stream():
    x = inputs(2, 4, 512, 128, 128, torch.bfloat16)
    want = tt.mlstm_chunkwise(**x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = tt.mlstm_chunkwise(**x)
        got = got * 1  # consumed on the same stream, before any synchronization
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_autocast_casts_q_k_v_to_its_dtype():
    x = inputs(1, 2, 64, 32, 32, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = tt.mlstm_chunkwise(**x)
    assert h.dtype == torch.bfloat16
    manual = tt.mlstm_chunkwise(**{**x, **{n: x[n].bfloat16() for n in "qkv"}})
    torch.testing.assert_close(h, manual, rtol=0, atol=0)
    # The mlstm_kernels-style callable runs in autocast_kernel_dtype under autocast.
    kernel = tt.get_mlstm_kernel("chunkwise--tfla-exp")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h16 = kernel(**x, autocast_kernel_dtype=torch.bfloat16)
    torch.testing.assert_close(h16, manual, rtol=0, atol=0)


def test_memory_returns_to_its_start_after_1000_calls():
    x = inputs(1, 2, 256, 64, 64, torch.bfloat16)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}

    def once():
        tt.mlstm_chunkwise(**leaves).sum().backward()
        for t in leaves.values():
            t.grad = None

    once()
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    for _ in range(1000):
        once()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == start


@pytest.mark.parametrize("variant, normalize", VARIANTS)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_prefill_then_steps_equal_one_forward(variant, normalize, state_dtype):
    b, nh, s, steps, dqk, dhv = 2, 2, 100, 8, 64, 64
    x = inputs(b, nh, s + steps, dqk, dhv, torch.bfloat16, seed=3)
    full = tt.mlstm_chunkwise(**x, variant=variant, normalize=normalize)
    prefix = {n: t[:, :, :s] for n, t in x.items()}
    _, (c, n, m) = tt.mlstm_chunkwise(**prefix, variant=variant, normalize=normalize, return_last_states=True)
    c = c.to(state_dtype)
    for t in range(s, s + steps):
        h, (c, n, m) = tt.mlstm_step(
            *(x[name][:, :, t] for name in "qkvif"), c, n, m, variant=variant, normalize=normalize, inplace=True
        )
        # bf16 states round C̃ once per step; f32 states only the inputs.
        tol = 3e-2 if state_dtype == torch.bfloat16 else FWD_TOL["bf16"]
        assert rel(h, cpu(full[:, :, t])) < tol, t


def test_step_with_state_pool_slots_updates_only_those_slots():
    b, nh, dqk, dhv, slots_n = 2, 2, 64, 64, 5
    pool_c = torch.randn(slots_n, nh, dqk, dhv, device=DEV) * 0.1
    pool_n = torch.randn(slots_n, nh, dqk, device=DEV).abs() * 0.1
    pool_m = torch.zeros(slots_n, nh, device=DEV)
    before = (pool_c.clone(), pool_n.clone(), pool_m.clone())
    x = {n: t[:, :, 0] for n, t in inputs(b, nh, 1, dqk, dhv, torch.bfloat16).items()}
    slots = torch.tensor([3, 1], device=DEV)
    h, _ = tt.mlstm_step(*(x[n] for n in "qkvif"), pool_c, pool_n, pool_m, slots=slots)
    # The same step on the two slots' states gathered into a batch.
    want, (c_new, n_new, _) = tt.mlstm_step(*(x[n] for n in "qkvif"), *(t[[3, 1]] for t in before))
    torch.testing.assert_close(h, want, rtol=0, atol=0)
    torch.testing.assert_close(pool_c[[3, 1]], c_new, rtol=0, atol=0)
    torch.testing.assert_close(pool_n[[3, 1]], n_new, rtol=0, atol=0)
    assert torch.equal(pool_c[[0, 2, 4]], before[0][[0, 2, 4]])
    with pytest.raises(ValueError, match="slots"):
        tt.mlstm_step(*(x[n] for n in "qkvif"), pool_c, pool_n, pool_m, slots=torch.tensor([1, 1], device=DEV))


def test_step_kernel_drop_in_returns_new_states_and_keeps_the_old():
    b, nh, dqk, dhv = 2, 2, 64, 128
    x = {n: t[:, :, 0] for n, t in inputs(b, nh, 1, dqk, dhv, torch.bfloat16).items()}
    c = torch.randn(b, nh, dqk, dhv, device=DEV) * 0.1
    n = torch.randn(b, nh, dqk, device=DEV).abs() * 0.1
    m = torch.zeros(b, nh, 1, device=DEV)
    c_old = c.clone()
    kernel = tt.get_mlstm_step_kernel("tfla-exp")
    h, (c1, n1, m1) = kernel(x["q"], x["k"], x["v"], x["i"][..., None], x["f"][..., None], c, n, m)
    assert torch.equal(c, c_old) and m1.shape == (b, nh, 1)
    ref = reference.forward(
        cpu(x["q"])[:, :, None], cpu(x["k"])[:, :, None], cpu(x["v"])[:, :, None],
        cpu(x["i"])[:, :, None], cpu(x["f"])[:, :, None], cpu(c), cpu(n), cpu(m).squeeze(-1),
    )  # fmt: skip
    assert rel(h, ref.h[:, :, 0]) < FWD_TOL["bf16"]
    assert rel(c1, ref.c) < 1e-4


def test_long_sequence_time_per_token_is_flat():
    """Not a benchmark: S = 65,536 runs (B = 1), and its output is finite."""
    x = inputs(1, 4, 65536, 128, 128, torch.bfloat16)
    h = tt.mlstm_chunkwise(**x)
    assert torch.isfinite(h).all()
    assert math.isfinite(float(h.float().norm()))


def test_cu_seqlens_runs_each_sequence_alone():
    lengths = [5, 130, 64, 1]
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    x = inputs(1, 2, cu[-1], 32, 64, torch.bfloat16, seed=4)
    g = torch.Generator(device="cpu").manual_seed(5)
    c0 = (torch.randn(len(lengths), 2, 32, 64, generator=g) * 0.3).to(DEV)
    h, (c, n, m) = tt.mlstm_chunkwise(
        **x, c_initial=c0, cu_seqlens=torch.tensor(cu, device=DEV), return_last_states=True
    )
    assert c.shape == (len(lengths), 2, 32, 64) and m.shape == (len(lengths), 2, 1)
    for s, (a, b) in enumerate(zip(cu, cu[1:])):
        piece = {name: t[:, :, a:b] for name, t in x.items()}
        ref = reference.forward(*(cpu(piece[name]) for name in "qkvif"), cpu(c0[s : s + 1]))
        assert rel(h[:, :, a:b], ref.h) < FWD_TOL["bf16"], s
        assert rel(c[s : s + 1], ref.c) < FWD_TOL["bf16"], s
    with pytest.raises(ValueError, match="`cu_seqlens` = \\[0, 3\\] is invalid"):
        tt.mlstm_chunkwise(**x, cu_seqlens=[0, 3])


@pytest.mark.parametrize("variant, normalize", VARIANTS)
@pytest.mark.parametrize("grad_mode", ["exact", "detached"])
def test_context_parallel_split_on_one_gpu_equals_one_call(variant, normalize, grad_mode):
    """The context-parallel fold with the kernels (pieces run one after another): h and
    gradients as one call, to the kernels' rounding."""
    from tfla.torch import distributed as cp

    x = inputs(1, 2, 1000, 64, 64, torch.bfloat16, seed=8, states=True)
    opts = dict(variant=variant, normalize=normalize, grad_mode=grad_mode)

    def cell(q, k, v, i, f, c0, n0, m0, **o):
        return tt.mlstm_chunkwise(q, k, v, i, f, c0, n0, m0, return_last_states=True, **o)

    results = []
    for split in (None, 4):
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        core = [leaves[n] for n in "qkvif"]
        init = (leaves["c_initial"], leaves["n_initial"], leaves["m_initial"].squeeze(-1))
        if split:
            h, (c, _, _) = cp.simulate(*core, ranks=split, cell=cell, initial=init, **opts)
        else:
            h, (c, _, _) = cell(*core, *init, **opts)
        g = torch.Generator(device="cpu").manual_seed(2)
        dh = torch.randn(h.shape, generator=g).to(DEV).to(h.dtype)
        torch.autograd.backward([h, c], [dh, torch.ones_like(c) * 0.1])
        results.append([h] + [leaves[n].grad for n in ("q", "k", "v", "i", "f", "c_initial")])
    for name, a, b in zip(("h", "dq", "dk", "dv", "di", "df", "dc0"), *results):
        assert rel(a, cpu(b)) < 3e-2, name
