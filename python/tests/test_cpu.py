"""What runs without a GPU (CI): the extension imports, the layouts the fake (meta)
implementations use, argument errors with the host's messages, and the float64 reference."""

import numpy as np
import pytest

import tfla
from tfla import _tfla, reference


def test_package_carries_the_ptx_and_its_chunk_sizes():
    assert tfla.PTX_ARCHES == ("sm_90a", "sm_80")
    assert tfla.CHUNK_SIZES == (64, 128, 256, 512, 1024)


def test_output_layout_gives_every_forward_buffer():
    b, nh, s, dqk, dhv, chunk = 2, 3, 129, 32, 64, 64
    layout = {name: (dt, tuple(shape)) for name, dt, shape in _tfla.output_layout(b, nh, s, dqk, dhv, "bf16", chunk, True)}
    nc = 3  # ceil(129 / 64)
    assert layout["h"] == ("bf16", (b, nh, s, dhv))
    assert layout["c_final"] == ("f32", (b, nh, dqk, dhv))
    assert layout["n_final"] == ("f32", (b, nh, dqk))
    assert layout["m_final"] == ("f32", (b, nh))
    assert layout["c_states"] == ("bf16", (b, nh, nc, dqk, dhv))
    assert layout["gate_b"] == ("f32", (b, nh, nc * chunk))
    assert layout["norm_rows"] == ("f32", (b, nh, s))
    without_stats = [n for n, _, _ in _tfla.output_layout(b, nh, s, dqk, dhv, "f16", chunk, False)]
    assert "norm_rows" not in without_stats and "m_rows" not in without_stats


HOPPER, PORTABLE, A100, SMALL = _tfla.LIMIT_SETS


def test_workspace_layout_depends_on_the_path_and_the_card():
    def layout(plan, dtype):
        return {n: s for n, _, s in _tfla.workspace_layout(plan, 1, 2, 256, 64, 64, dtype, 128)}

    tensor_cores, f32 = layout(HOPPER, "bf16"), layout(HOPPER, "f32")
    assert tensor_cores["segments"] == [0] and f32["segments"] != [0]
    assert f32["dc_states"] == [0] and tensor_cores["dc_states"] == [2, 2, 64, 64]
    # L = 128, heads of 64: Hopper's one-kernel chunk gradients keep the scores on chip; a
    # 99 KB card runs the score kernels, whose matrices the workspace holds.
    assert tensor_cores["scores_p"] == [0]
    assert layout(SMALL, "bf16")["scores_p"] == [2, 2, 3, 64, 64]
    assert HOPPER == (227 * 1024, True) and SMALL == (99 * 1024, False)


def test_chunk_size_is_chosen_or_validated():
    assert _tfla.chunk_size(1, 1, 8192, 128, 128, 0) in tfla.CHUNK_SIZES
    # Small heads: 256 with at most 32 heads in the batch (B·NH), 128 with more (the Rust rule).
    assert _tfla.chunk_size(2, 16, 8192, 128, 128, 0) == 256
    assert _tfla.chunk_size(8, 16, 8192, 128, 128, 0) == 128
    # Before a backward: 16 heads from S = 4096; wide heads with few of them take 128.
    assert _tfla.chunk_size(2, 16, 8192, 128, 128, 0, backward=True) == 128
    assert _tfla.chunk_size(1, 8, 8192, 512, 512, 0) == 256
    assert _tfla.chunk_size(1, 8, 8192, 512, 512, 0, backward=True) == 128
    assert _tfla.chunk_size(1, 1, 8192, 128, 128, 256) == 256
    with pytest.raises(ValueError, match="`chunk_size` = 100 is not supported"):
        _tfla.chunk_size(1, 1, 8192, 128, 128, 100)


def test_a_forward_without_row_stats_keeps_no_chunk_states_where_one_kernel_runs():
    # 128/128 at L = 128, no backward (no row statistics): `saved` leaves C̃_k out; a card that
    # runs two kernels there (an A100's shared memory is too small for the one kernel) gets
    # them as the forward's scratch; a forward a backward follows keeps them in `saved`.
    shape, nc = (2, 3, 300, 128, 128), 3

    def states(shape, dtype, row_stats):
        return {n: s for n, _, s in _tfla.output_layout(*shape, dtype, 128, row_stats)}["c_states"]

    def scratch(plan, row_stats):
        return _tfla.forward_workspace_layout(plan, *shape, "bf16", 128, row_stats)

    assert states(shape, "bf16", False) == [0] and states(shape, "bf16", True) == [2, 3, nc, 128, 128]
    assert scratch(HOPPER, False) == [] and scratch(PORTABLE, False) == []
    assert scratch(A100, False) == [("c_states", "bf16", [2, 3, nc, 128, 128])]
    assert scratch(A100, True) == []
    # Heads the one kernel does not take, and f32 inputs, keep them.
    assert states((2, 3, 300, 128, 256), "bf16", False) != [0]
    assert states(shape, "f32", False) != [0]


@pytest.mark.parametrize("shape", [(1, 8, 8192, 512, 512), (2, 16, 8192, 128, 128), (2, 3, 300, 64, 32)])
def test_the_backward_sizes_its_buffers_for_the_chunk_it_runs(shape):
    # Chunk 0 (tfla chooses) reaches the ops; a forward with row statistics and its backward
    # then run the L a backward is chosen for, which can differ from a forward alone's (the
    # first two shapes): every layout the backward op allocates by must be that L's.
    run = _tfla.chunk_size(*shape, 0, backward=True)
    for plan in (HOPPER, SMALL):
        assert _tfla.workspace_layout(plan, *shape, "bf16", 0) == _tfla.workspace_layout(plan, *shape, "bf16", run)
    assert _tfla.output_layout(*shape, "bf16", 0, True) == _tfla.output_layout(*shape, "bf16", run, True)
    assert _tfla.output_layout(*shape, "bf16", 0, False) == _tfla.output_layout(
        *shape, "bf16", _tfla.chunk_size(*shape, 0), False
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, 2, 64, 40, 64, "bf16", 64, True), "`DQK` = 40 is not supported"),
        ((1, 2, 64, 64, 1024, "bf16", 64, True), "`DHV` = 1024 is not supported"),
        ((1, 2, 64, 64, 64, "int8", 64, True), "`dtype` = int8 is invalid"),
        ((1, 2, 64, 64, 64, "bf16", 96, True), "`chunk_size` = 96 is not supported"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(args, message):
    with pytest.raises(ValueError, match=message):
        _tfla.output_layout(*args)


def test_unknown_pointer_names_are_rejected_before_any_device_work():
    with pytest.raises(ValueError, match="`pointers` = qq is invalid"):
        _tfla.forward(0, 0, {"qq": 1}, 1, 1, 64, 64, 64, "bf16", "exp", True, 1e-6, 64, False)


def test_without_a_driver_the_kernels_raise_runtime_error():
    try:
        _tfla.device_info(0)
    except RuntimeError as e:
        assert "no CUDA device" in str(e)
    else:
        pytest.skip("a GPU is present: the no-driver error cannot be shown here")


def _inputs(rng, b, nh, s, dqk, dhv):
    q, k = rng.standard_normal((2, b, nh, s, dqk))
    v = rng.standard_normal((b, nh, s, dhv))
    i = rng.standard_normal((b, nh, s))
    f = rng.standard_normal((b, nh, s)) + 3.0
    return q, k, v, i, f


def _naive_exp(q, k, v, i, f, eps=1e-6):
    """mLSTMexp step by step in numpy, written from the formulas of tfla's README."""
    b, nh, s, dqk = q.shape
    h = np.zeros(v.shape)
    for bh in np.ndindex(b, nh):
        c = np.zeros((dqk, v.shape[-1]))
        n = np.zeros(dqk)
        m = 0.0
        for t in range(s):
            lam = -np.log1p(np.exp(-f[bh][t]))
            m_new = max(lam + m, i[bh][t])
            decay, inp = np.exp(lam + m - m_new), np.exp(i[bh][t] - m_new)
            c = decay * c + inp * np.outer(k[bh][t], v[bh][t])
            n = decay * n + inp * k[bh][t]
            qh = q[bh][t] / np.sqrt(dqk)
            h[bh][t] = c.T @ qh / (max(abs(n @ qh), np.exp(-m_new)) + eps)
            m = m_new
    return h


def test_reference_forward_matches_the_formulas():
    rng = np.random.default_rng(1)
    q, k, v, i, f = _inputs(rng, 1, 2, 7, 16, 8)
    out = reference.forward(q, k, v, i, f, variant="exp")
    assert out.h.shape == (1, 2, 7, 8) and out.c.shape == (1, 2, 16, 8)
    np.testing.assert_allclose(out.h, _naive_exp(q, k, v, i, f), rtol=1e-10, atol=1e-12)


def test_reference_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    q, k, v, i, f = _inputs(rng, 1, 1, 5, 4, 3)
    dh = rng.standard_normal(v.shape)
    for variant, normalize in (("exp", True), ("sig", True), ("sig", False)):
        g = reference.backward(q, k, v, i, f, dh, variant=variant, normalize=normalize)

        def loss(fv):
            return float((reference.forward(q, k, v, i, fv, variant=variant, normalize=normalize).h * dh).sum())

        step = 1e-6
        for t in range(5):
            up, down = f.copy(), f.copy()
            up[0, 0, t] += step
            down[0, 0, t] -= step
            numeric = (loss(up) - loss(down)) / (2 * step)
            assert abs(numeric - g.df[0, 0, t]) <= 1e-5 * max(1.0, abs(numeric)), (variant, t)


def test_reference_rejects_mismatched_lengths():
    rng = np.random.default_rng(3)
    q, k, v, i, f = _inputs(rng, 1, 1, 5, 4, 3)
    with pytest.raises(ValueError, match="`i` = 4 float64 values is invalid"):
        reference.forward(q, k, v, i[..., :4], f)
