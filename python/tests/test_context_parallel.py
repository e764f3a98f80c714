"""Context parallelism without a GPU: the fold of piece summaries, a simulated split and the
real collectives (gloo, two processes) against one unsplit call, forward and gradients, with a
float64 step-by-step mLSTM in PyTorch standing in for the kernels (the cell). The same code
runs the kernels on GPUs (`tfla.torch.distributed.mlstm_context_parallel`)."""

import os
import tempfile

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from tfla.torch import distributed as cp  # noqa: E402

VARIANTS = [("exp", True), ("sig", True), ("sig", False)]


def cell(q, k, v, i, f, c0=None, n0=None, m0=None, *, variant="exp", normalize=True, eps=1e-6,
         grad_mode="exact"):  # fmt: skip
    """The mLSTM step by step in float64 (the README's definitions), differentiable; with
    ``grad_mode="detached"`` the max state and the denominator are held constant, as in the
    detached kernels."""
    b, nh, s, dqk = q.shape
    detached = grad_mode == "detached"
    c = c0 if c0 is not None else q.new_zeros(b, nh, dqk, v.shape[-1])
    n = n0 if n0 is not None else q.new_zeros(b, nh, dqk)
    m = m0.reshape(b, nh) if m0 is not None and variant == "exp" else q.new_zeros(b, nh)
    hold = (lambda x: x.detach()) if detached else (lambda x: x)  # noqa: E731
    hs = []
    for t in range(s):
        lam = F.logsigmoid(f[..., t])
        if variant == "exp":
            iota = i[..., t]
            m_new = torch.maximum(lam + m, iota)
            decay, inp = (lam + hold(m) - hold(m_new)).exp(), (iota - hold(m_new)).exp()
            floor = (-m_new).exp()
        else:
            m_new = torch.zeros_like(m)
            decay, inp = lam.exp(), F.logsigmoid(i[..., t]).exp()
            floor = torch.ones_like(m)
        c = decay[..., None, None] * c + inp[..., None, None] * (k[..., t, :, None] * v[..., t, None, :])
        n = decay[..., None] * n + inp[..., None] * k[..., t, :]
        qh = q[..., t, :] / dqk**0.5
        num = (c * qh[..., :, None]).sum(-2)
        if variant == "exp" or normalize:
            den = torch.maximum((n * qh).sum(-1).abs(), floor) + eps
            num = num / hold(den)[..., None]
        hs.append(num)
        m = m_new
    return torch.stack(hs, dim=2), (c, n, m[..., None])


def inputs(b=2, nh=2, s=24, dqk=4, dhv=3, seed=0, states=False):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = dict(q=rn(b, nh, s, dqk), k=rn(b, nh, s, dqk), v=rn(b, nh, s, dhv), i=rn(b, nh, s) * 2,
             f=rn(b, nh, s) + 2)  # fmt: skip
    initial = (rn(b, nh, dqk, dhv) * 0.3, rn(b, nh, dqk).abs() * 0.3, rn(b, nh) * 0.5) if states else None
    return x, initial


def run(split, x, initial, **options):
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    init = None if initial is None else tuple(t.clone().requires_grad_() for t in initial)
    if split:
        h, (c, n, m) = cp.simulate(*leaves.values(), ranks=split, cell=cell, initial=init, **options)
    else:
        h, (c, n, m) = cell(*leaves.values(), *(init or (None, None, None)), **options)
    g = torch.Generator().manual_seed(1)
    loss = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum() + (c * 0.3).sum()
    if options.get("grad_mode") != "detached":
        loss = loss + n.sum() * 0.2 + m.sum() * 0.1
    loss.backward()
    grads = [leaves[name].grad for name in "qkvif"] + ([t.grad for t in init] if init else [])
    return [h, c, n, m] + grads


@pytest.mark.parametrize("variant, normalize", VARIANTS)
@pytest.mark.parametrize("grad_mode", ["exact", "detached"])
@pytest.mark.parametrize("ranks", [2, 3, 5])
@pytest.mark.parametrize("states", [False, True])
def test_simulated_split_equals_one_call(variant, normalize, grad_mode, ranks, states):
    x, initial = inputs(seed=ranks, states=states)
    options = dict(variant=variant, normalize=normalize, grad_mode=grad_mode)
    whole = run(0, x, initial, **options)
    split = run(ranks, x, initial, **options)
    names = ["h", "c", "n", "m", "dq", "dk", "dv", "di", "df", "dc0", "dn0", "dm0"]
    for name, a, b in zip(names, split, whole):
        if a is None and b is None:
            continue
        if name == "dm0" and variant != "exp":
            continue  # m0 does not enter mLSTMsig
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_fold_of_two_pieces_is_the_recurrence_over_both():
    """The fold alone: state after piece A then piece B from the summaries, against the cell
    run over A+B from the same initial state (mLSTMexp: the max state included)."""
    x, initial = inputs(s=30, seed=9, states=True)
    with torch.no_grad():
        _, (c_ab, n_ab, m_ab) = cell(*x.values(), *initial)
        state = initial
        for a, b in ((0, 13), (13, 30)):
            piece = {name: t[:, :, a:b] for name, t in x.items()}
            _, (c, n, m) = cell(*piece.values())
            summary = cp.piece_summary(c, n, m.squeeze(-1), piece["i"], piece["f"], "exp")
            state = cp.fold(state, summary, "exp", detached=False)
    torch.testing.assert_close(state[2], m_ab.squeeze(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[0].float(), c_ab.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[1].float(), n_ab.float(), rtol=1e-5, atol=1e-6)


def _worker(rank, world, path, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    x, initial = inputs(s=21, seed=3, states=True)
    bounds = [round(r * 21 / world) for r in range(world + 1)]
    piece = {n: t[:, :, bounds[rank] : bounds[rank + 1]].clone().requires_grad_() for n, t in x.items()}
    init = tuple(t.clone().requires_grad_() for t in initial)
    h, (c, n, m) = cp.mlstm_context_parallel(
        *piece.values(), *init, variant="exp", return_last_states=True, cell=cell
    )
    g = torch.Generator().manual_seed(1)
    full_noise = torch.randn(2, 2, 21, 3, generator=g, dtype=torch.float64)
    loss = (h * full_noise[:, :, bounds[rank] : bounds[rank + 1]]).sum()
    if rank == world - 1:
        loss = loss + (c * 0.3).sum()
    loss.backward()
    grads = {name: piece[name].grad for name in "qkvif"}
    if rank == 0:
        grads.update(dc0=init[0].grad, dn0=init[1].grad, dm0=init[2].grad)
    results[rank] = (h.detach(), {k: v.detach() for k, v in grads.items()}, c.detach())
    dist.destroy_process_group()


def test_two_processes_over_gloo_equal_one_call():
    mp = torch.multiprocessing.get_context("spawn")
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        procs = [mp.Process(target=_worker, args=(r, world, os.path.join(tmp, "rdv"), results)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = dict(results)
    x, initial = inputs(s=21, seed=3, states=True)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    init = tuple(t.clone().requires_grad_() for t in initial)
    h, (c, _, _) = cell(*leaves.values(), *init)
    g = torch.Generator().manual_seed(1)
    ((h * torch.randn(h.shape, generator=g, dtype=torch.float64)).sum() + (c * 0.3).sum()).backward()
    bounds = [0, 10, 21]  # round(r * 21 / 2)
    got_h = torch.cat([results[r][0] for r in range(world)], dim=2)
    torch.testing.assert_close(got_h, h.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(results[world - 1][2], c.detach(), rtol=1e-9, atol=1e-11)
    for name in "qkvif":
        got = torch.cat([results[r][1][name] for r in range(world)], dim=2)
        torch.testing.assert_close(got, leaves[name].grad, rtol=1e-9, atol=1e-11, msg=name)
    for name, t in zip(("dc0", "dn0", "dm0"), init):
        torch.testing.assert_close(results[0][1][name], t.grad, rtol=1e-9, atol=1e-11, msg=name)
    assert bounds[1] == round(21 / 2)
