"""Finds where tfla-exact's gradients go non-finite in the xLSTM example and saves the inputs.

Session 12's diagnosis of the exact-gradient NaN (benches/LOG.md; its output: probe_nan.log).
Run from the repository root on a GPU machine with the tfla wheel installed:
    OUT=/tmp/out python3 benches/results/s12/probe_nan.py
"""
import importlib.util, os, sys, time
import numpy as np
import torch
from safetensors.torch import save_file

spec = importlib.util.spec_from_file_location("xl", "examples/xlstm_lm.py")
xl = importlib.util.module_from_spec(spec); sys.modules["xl"] = xl; spec.loader.exec_module(xl)
import tfla.torch as T
from tfla import reference as ref

OUT = os.environ.get("OUT", "/tmp/out")
bf16 = torch.bfloat16
kernel = T.get_mlstm_kernel("chunkwise--tfla-exp")
records = []

def bad(t):
    return int((~torch.isfinite(t)).sum()) if t is not None else -1

def backend(q, k, v, i, f, ret):
    rec = {n: t.detach().clone() for n, t in zip("qkvif", (q, k, v, i, f))}
    h = kernel(q, k, v, i, f, return_last_states=False, eps=xl.EPS, autocast_kernel_dtype=bf16,
               chunk_size=None, grad_mode=MODE)
    rec["h"] = h.detach().clone()
    if h.requires_grad:
        h.register_hook(lambda g: rec.__setitem__("dh", g.detach().clone()))
    for n, t in zip("qkvif", (q, k, v, i, f)):
        if t.requires_grad:
            t.register_hook(lambda g, n=n: rec.__setitem__("d" + n, g.detach().clone()))
    records.append(rec)
    return h, None

MODE = "exact"
torch.manual_seed(0)
cfg = xl.ModelConfig()
corpus = xl.load_corpus(4 << 20)
data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).cuda()
model = xl.XLSTM(cfg, backend).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
gen = torch.Generator().manual_seed(0)
found = None
for step in range(1, 101):
    records.clear()
    x, y = xl.sample_batch(data, 16, 512, gen)
    with torch.autocast("cuda", dtype=bf16):
        logits, _ = model(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nb = [{k: bad(v) for k, v in r.items()} for r in records]
    if any(any(c > 0 for c in d.values()) for d in nb) or not torch.isfinite(loss):
        print(f"step {step}: loss {loss.item()}")
        for li, d in enumerate(nb):
            print(f"  layer {li}: non-finite counts {d}")
        found = step
        break
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
print("first bad step", found, flush=True)
if found is None:
    sys.exit(0)
li = next(j for j, r in enumerate(records) if any(bad(r.get(n)) > 0 for n in ("dq", "dk", "dv", "di", "df")))
r = records[li]
save_file({k: v.contiguous() for k, v in r.items()}, f"{OUT}/nan_case.safetensors")
print("saved layer", li, {k: (tuple(v.shape), str(v.dtype)) for k, v in r.items()})
for n in ("dq", "dk", "dv", "di", "df"):
    g = r[n]
    idx = (~torch.isfinite(g)).nonzero()
    print(n, "bad", idx.shape[0], "first", idx[:6].tolist())
import traceback
G = globals()
try:
    exec('# Again on the saved inputs: each chunk size, each mode, f32 inputs.\nq, k, v, i, f, dh = (r[n] for n in ("q", "k", "v", "i", "f", "dh"))\ndef grads(q, k, v, i, f, **kw):\n    ts = [t.detach().clone().requires_grad_() for t in (q, k, v, i, f)]\n    h = T.mlstm_chunkwise(*ts, eps=xl.EPS, **kw)\n    h.backward(dh.to(h.dtype))\n    return [bad(h)] + [bad(t.grad) for t in ts]\nfor cs in (None, 64, 128, 256, 512):\n    for mode in ("exact", "detached"):\n        print(f"chunk {cs} {mode} bf16: h,dq,dk,dv,di,df bad", grads(q, k, v, i, f, chunk_size=cs, grad_mode=mode))\n    print(f"chunk {cs} exact f32:", grads(q.float(), k.float(), v.float(), i, f, chunk_size=cs, grad_mode="exact"))', G)
except Exception:
    traceback.print_exc()
try:
    exec('# Per (b, h): which heads, and the reference on the first.\ng = r["di"]\nheads = (~torch.isfinite(g)).any(-1).nonzero().tolist()\nprint("bad (b, h):", heads[:20], "of", len(heads))\nb0, h0 = heads[0] if heads else (0, 0)\nsl = lambda t: t[b0:b0 + 1, h0:h0 + 1].float().cpu().numpy()\ngr = ref.backward(sl(q), sl(k), sl(v), sl(i), sl(f), sl(dh), eps=xl.EPS, grad_mode="exact")\nprint("reference finite:", {n: bool(np.isfinite(getattr(gr, n)).all()) for n in ("dq", "dk", "dv", "di", "df")})\none = grads(*(t[b0:b0 + 1, h0:h0 + 1] for t in (q, k, v, i, f)), grad_mode="exact") if False else None\nii, ff = r["i"][b0, h0].cpu(), r["f"][b0, h0].cpu()\nprint("i range", ii.min().item(), ii.max().item(), "f range", ff.min().item(), ff.max().item())\nprint("q absmax", q[b0, h0].abs().max().item(), "k absmax", k[b0, h0].abs().max().item(), "dh absmax", dh[b0, h0].abs().max().item())\nnames = ["h", "c", "n", "m", "c_states", "n_states", "m_states", "gate_b", "gate_u", "gate_cm", "gate_g", "m_rows", "norm_rows"]\nout = torch.ops.tfla.mlstm_fwd(q.contiguous(), k.contiguous(), v.contiguous(), i.contiguous(), f.contiguous(), None, None, None, "exp", True, float(xl.EPS), 128, True, "exact")\nsave_file({n: t.contiguous() for n, t in zip(names, out) if t.numel()}, f"{OUT}/nan_case_fwd.safetensors")\nfor n, t in zip(names, out):\n    print(n, tuple(t.shape), "bad", bad(t), "min", t.float().min().item() if t.numel() else None, "max", t.float().max().item() if t.numel() else None)', G)
except Exception:
    traceback.print_exc()
try:
    exec('# The backward by hand, workspace and gradients filled first with 0, then with NaN: a result', G)
except Exception:
    traceback.print_exc()
try:
    exec('# that changes reads memory no kernel wrote.\nfrom tfla.torch import _ops\nfrom tfla import _tfla\nqc, kc, vc, ic, fc = (t.contiguous() for t in (q, k, v, i, f))\nfw = dict(zip(names, out))\ndims = _ops._dims(qc, vc)\ndef by_hand(fill, mode):\n    grads = [t.fill_(fill) if t.numel() else t for t in _ops._grads(qc, kc, vc, None, None, None)]\n    ws = {n: qc.new_empty(shp, dtype=_ops.DTYPES[dt]).fill_(fill) for n, dt, shp in _tfla.workspace_layout(_ops.device_plan(qc.device.index), *dims, "bf16", 128)}\n    ptrs = {"q": qc, "k": kc, "v": vc, "i": ic, "f": fc, "c0": None, "n0": None, "m0": None, "h": fw["h"],\n            "c_final": fw["c"], "n_final": fw["n"], "c_states": fw["c_states"], "n_states": fw["n_states"],\n            "m_states": fw["m_states"], "gate_b": fw["gate_b"], "gate_u": fw["gate_u"], "gate_cm": fw["gate_cm"],\n            "gate_g": fw["gate_g"], "norm_rows": fw["norm_rows"], "dh": dh.contiguous(), "dc_final": None,\n            "dn_final": None, "dm_final": None, **ws, **dict(zip(_ops.GRADS, grads))}\n    _tfla.backward(qc.device.index, _ops._stream(qc.device), {n: _ops._ptr(t) for n, t in ptrs.items()},\n                   *dims, "bf16", "exp", True, float(xl.EPS), 128, mode)\n    torch.cuda.synchronize()\n    return dict(zip(_ops.GRADS, grads)), ws\nfor mode in ("exact", "detached"):\n    g0, w0 = by_hand(0.0, mode)\n    g1, w1 = by_hand(float("nan"), mode)\n    print(mode, "fill 0 bad:", {n: bad(t) for n, t in g0.items() if t.numel()}, {n: bad(t) for n, t in w0.items()})\n    print(mode, "fill NaN bad:", {n: bad(t) for n, t in g1.items() if t.numel()})\n    print(mode, "0 vs NaN fill equal:", {n: bool(torch.equal(g0[n], g1[n])) for n in g0 if g0[n].numel()})\n    if mode == "exact":\n        rc = w0["row_coef"]\n        print("row_coef planes bad:", [bad(rc[p]) for p in range(rc.shape[0])] if rc.dim() > 1 else bad(rc))\n        save_file({n: t.contiguous() for n, t in w0.items()}, f"{OUT}/nan_case_ws.safetensors")\n', G)
except Exception:
    traceback.print_exc()
