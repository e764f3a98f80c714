#!/usr/bin/env python3
"""Side-by-side reference benchmark for tfla: the published Triton kernels on the same GPU.

References: TFLA (mlstm_kernels 2.0.6: mLSTMexp and mLSTMsig chunkwise "xl_chunk" kernels),
FLA (fla-core 0.6.0: chunk_simple_gla, chunk_gla) and PyTorch SDPA (flash backend, causal);
for generation, TFLA's fused Triton step kernel (mLSTMexp, `get_mlstm_step_kernel("triton")`).
Also measures the card's matmul and copy ceilings, and (--check-dir) compares our outputs
with the TFLA kernels on identical inputs.

Every measurement runs in a worker subprocess: a Triton/LLVM assertion aborts the whole
process and an illegal memory access poisons the CUDA context, and neither can be caught in
Python. The parent touches no CUDA; it records a dead worker's entry as an error and starts a
fresh worker for the entries that remain.
"""
import argparse, collections, gc, importlib.util, inspect, json, os, signal, subprocess, sys
import tempfile, threading, time
from importlib import metadata

GRIDS = {  # (B, S); "paper" keeps B*S = 65,536 tokens
    "paper": [(32, 2048), (16, 4096), (8, 8192), (4, 16384)],
    "quick": [(8, 8192)],
    "smoke": [(2, 1024)],  # tiny: checks that every reference runs at all
    "long": [(1, 16384), (1, 32768), (1, 65536), (1, 131072), (1, 262144)],  # one sequence
    "none": [],
}
HEADS = [(8, 512, 512), (8, 256, 512), (16, 128, 128)]  # (NH, DQK, DHV)
CHUNKS = (64, 128, 256)
# The main job's default (quick) grid has to finish in minutes with cold Triton caches: TFLA's
# chunk 64 never ran fastest on this grid (BENCHMARKS.md), and FLA's autotuning alone takes
# minutes per head config, so those run with --grid paper (or --chunks / --only).
GRID_CHUNKS = {"quick": (128, 256), "long": (128, 256)}
GRID_SKIPS_REFS = {"quick": ("fla:simple_gla", "fla:gla"), "long": ("fla:simple_gla", "fla:gla")}
REFS = {  # id -> (ref, variant, worker group)
    # Each worker group is one process with one LLVM setting (group_setup): only the exp
    # forward needs DISABLE_LLVM_OPT=1, so exp runs apart from the sig kernels, which compile
    # (and run up to 17% faster) with the optimizations on.
    "tfla:exp": ("tfla", "exp", "tfla_exp"),
    "tfla:sig": ("tfla", "sig", "tfla_sig"),
    "tfla:sig_nonorm": ("tfla", "sig_nonorm", "tfla_sig"),
    "fla:simple_gla": ("fla", "simple_gla", "fla"),
    "fla:gla": ("fla", "gla", "fla"),
    "sdpa:flash_causal": ("sdpa", "flash_causal", "torch"),
}
TFLA_NAMES = {"exp": "chunkwise--triton_xl_chunk", "sig": "chunkwise--triton_xl_chunk_siging",
              "sig_nonorm": "chunkwise--triton_xl_chunk_siging"}
FLA_CHUNK = 64  # FLA's default chunk size, used only for its FLOP count
# The step (generation) points, as tfla-bench's step table: B*NH heads (NH = 8), DQK, DHV, and
# the state dtypes of TFLA's step kernel (`dtype_state`).
STEP_BH = (64, 256)
STEP_NH, STEP_DQK, STEP_DHV = 8, 256, 512
STEP_STATES = ("fp32", "bf16")
FATAL_MARKERS = ("illegal memory access", "unspecified launch failure", "device-side assert",
                 "CUDA error", "CUBLAS_STATUS_EXECUTION_FAILED")


def mlstm_flops(B, NH, S, DQK, DHV, chunk):
    """Forward model FLOPs of the chunkwise mLSTM (a multiply-add counts 2).

    Per (batch, head):
      2*S*DQK*DHV    chunk states: K~^T V accumulated over every chunk (each token once)
      2*S*DQK*DHV    inter-chunk output: every query times the state C of the chunks before it
      S*L*(DQK+DHV)  intra-chunk: causal Q K^T and (Q K^T * D) V, each half of an L x L tile
    Gates, normalizer and stabilizer are O(S*L + S*D) and are left out.
    Backward is counted as 2x forward, so forward+backward = 3x this number.
    The same function serves FLA's GLA kernels (with L = their chunk size, 64).
    """
    L = chunk
    return B * NH * (2 * S * DQK * DHV + 2 * S * DQK * DHV + S * L * (DQK + DHV))


def attention_flops(B, NH, S, D):
    """Causal softmax attention forward: Q K^T and P V are 2*S*S*D each, the mask halves
    both: 4*B*NH*S^2*D/2. Backward ~2.5x forward (it recomputes Q K^T), so fwd+bwd = 3.5x."""
    return 4 * B * NH * S * S * D // 2


def flops(row):
    """(forward, forward+backward) FLOPs of a result row, or (None, None)."""
    B, NH, S, DQK, DHV = (row[k] for k in ("B", "NH", "S", "DQK", "DHV"))
    if row["ref"] == "sdpa":
        f = attention_flops(B, NH, S, DQK)
        return f, f * 7 // 2
    chunk = row["chunk"] or FLA_CHUNK
    f = mlstm_flops(B, NH, S, DQK, DHV, chunk)
    return f, 3 * f


# ----------------------------------------------------------------------------- the plan
def build_plan(args):
    """Every (reference, point, chunk) entry, with a skip reason where it must not run."""
    wanted = set(args.only.split(",")) if args.only \
        else set(REFS) - set(GRID_SKIPS_REFS.get(args.grid, ()))
    unknown = wanted - set(REFS)
    if unknown:
        sys.exit(f"unknown --only ids {sorted(unknown)}; known: {', '.join(REFS)}")
    points = [tuple(map(int, p.split("x"))) for p in args.points.split(",")] \
        if args.points else GRIDS[args.grid]
    heads = [tuple(map(int, h.split(":"))) for h in args.heads.split(",")] \
        if args.heads else HEADS
    plan = []
    for (B, S) in points:
        for (NH, DQK, DHV) in heads:
            for rid, (ref, var, group) in REFS.items():
                if rid not in wanted:
                    continue
                base = dict(kind="bench", ref=ref, variant=var, group=group, B=B, S=S, NH=NH,
                            DQK=DQK, DHV=DHV, dtype=args.dtype, chunk=None)
                if ref != "tfla":
                    e = dict(base)
                    if ref == "sdpa" and (DQK != DHV or DQK > 256):
                        e["skip"] = "flash backend needs equal q/k/v head dims <= 256"
                    plan.append(e)
                    continue
                chunks = [int(c) for c in args.chunks.split(",")] if args.chunks \
                    else GRID_CHUNKS.get(args.grid, CHUNKS)
                for L in chunks:
                    e = dict(base, chunk=L)
                    if var == "exp" and args.exp_backward == "llvm-opt":
                        e["bwd_llvm_opt"] = True
                    if S % L:
                        e["skip"] = f"S={S} is not a multiple of chunk {L}"
                    elif L == 64 and B >= 16 and not args.include_risky:
                        # Seen with mlstm_kernels 2.0.6: an illegal memory access, which would
                        # poison the CUDA context. Never trigger it by default.
                        e["skip"] = "chunk 64 at B>=16 can hit an illegal memory access"
                    plan.append(e)
    return plan


def extra_entries(args):
    extra = [] if args.no_ceilings else [dict(kind="ceil", group="torch")]
    if args.step or (args.grid == "quick" and not args.no_step):
        for bh in STEP_BH:
            for sd in STEP_STATES:
                extra.append(dict(kind="step", group="step", ref="tfla", variant="exp",
                                  B=bh // STEP_NH, NH=STEP_NH, DQK=STEP_DQK, DHV=STEP_DHV,
                                  dtype=args.dtype, state_dtype=sd))
    if args.check_dir:
        for name in sorted(os.listdir(args.check_dir)):
            if name.endswith(".safetensors"):
                extra.append(dict(kind="check", group="check",
                                  path=os.path.abspath(os.path.join(args.check_dir, name))))
    return extra


def group_setup(group, args):
    """(set DISABLE_LLVM_OPT=1?, other env) for a worker group."""
    if group in ("tfla_exp", "check"):
        # TRITON_F32_DEFAULT=ieee: fp32 check inputs get true fp32 dots, not TF32.
        return True, ({"TRITON_F32_DEFAULT": "ieee"} if group == "check" else {})
    return args.llvm_opt_off == "all" and group in ("fla", "tfla_sig"), {}


def package_versions():
    out = {}
    for dist in ("mlstm-kernels", "fla-core", "flash-linear-attention", "torch", "triton",
                 "safetensors", "numpy", "einops"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------- the worker
class Unavailable(Exception):
    pass


_CACHE = {}


def load_ref(ref, variant):
    """The reference's callable; raises Unavailable with the reason when it cannot import."""
    key = (ref, variant)
    if key not in _CACHE:
        try:
            if ref == "tfla":
                from mlstm_kernels.torch import get_mlstm_kernel
                _CACHE[key] = get_mlstm_kernel(TFLA_NAMES[variant])
            elif ref == "fla" and variant == "simple_gla":
                from fla.ops.simple_gla import chunk_simple_gla
                _CACHE[key] = chunk_simple_gla
            elif ref == "fla":
                from fla.ops.gla import chunk_gla
                _CACHE[key] = chunk_gla
            else:
                from torch.nn.attention import SDPBackend, sdpa_kernel
                _CACHE[key] = (SDPBackend, sdpa_kernel)
        except Exception as ex:  # ImportError, or the registry's ValueError without triton
            _CACHE[key] = Unavailable(f"{type(ex).__name__}: {ex}")
    if isinstance(_CACHE[key], Unavailable):
        raise _CACHE[key]
    return _CACHE[key]


def bench_ms(torch, fn, grad_to_none=None):
    """Median milliseconds of fn(), CUDA-event timed, L2 flushed between calls."""
    try:
        from triton.testing import do_bench
        if "return_mode" in inspect.signature(do_bench).parameters:
            return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                  return_mode="median"))
    except ImportError:
        pass
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        fn()
    times = []
    for _ in range(20):
        for x in grad_to_none or ():
            x.grad = None
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def build_case(torch, e):
    """(fn, leaf inputs, output picker) with fresh random inputs in the reference's layout."""
    ref, var = e["ref"], e["variant"]
    impl = load_ref(ref, var)  # first, so a missing package is reported before any CUDA work
    B, S, NH, DQK, DHV = e["B"], e["S"], e["NH"], e["DQK"], e["DHV"]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[e["dtype"]]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rn(*shape, shift=0.0):
        x = torch.randn(*shape, device="cuda", dtype=dt, generator=gen)
        return x.add_(shift) if shift else x

    if ref == "tfla":  # (B, NH, S, D); gates (B, NH, S) as pre-activations
        # f + 3: sigma(3) ~ 0.95 keeps the forget gates open, as in a trained model.
        q, k, v, i, f = rn(B, NH, S, DQK), rn(B, NH, S, DQK), rn(B, NH, S, DHV), \
            rn(B, NH, S), rn(B, NH, S, shift=3.0)
        kw = {"chunk_size": e["chunk"]}
        if var != "exp":
            kw["normalize"] = var == "sig"
        return (lambda: impl(q, k, v, i, f, **kw)), [q, k, v, i, f], (lambda o: o)
    if ref == "fla":  # (B, T, H, D); g is the log decay per step, log sigma(f)
        F = torch.nn.functional
        q, k, v = rn(B, S, NH, DQK), rn(B, S, NH, DQK), rn(B, S, NH, DHV)
        g = F.logsigmoid(rn(B, S, NH, shift=3.0) if var == "simple_gla"
                         else rn(B, S, NH, DQK, shift=3.0))
        return (lambda: impl(q, k, v, g)), [q, k, v, g], (lambda o: o[0])
    SDPBackend, sdpa_kernel = impl
    q, k, v = rn(B, NH, S, DQK), rn(B, NH, S, DQK), rn(B, NH, S, DHV)

    def fn():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # refuse the silent fallback to math
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn, [q, k, v], (lambda o: o)


def describe(ex):
    text = " | ".join(line.strip() for line in str(ex).splitlines() if line.strip())
    return f"{type(ex).__name__}: {text}"[:500]


def run_bench(torch, e, row):
    try:
        fn, inputs, pick = build_case(torch, e)
    except Unavailable as ex:
        row["error"] = f"unavailable: {ex}"
        return
    row["input_bytes"] = sum(x.numel() * x.element_size() for x in inputs)
    try:
        with torch.no_grad():
            fn()  # first call compiles; its errors come out here, not inside do_bench
            row["fwd_ms"] = bench_ms(torch, fn)
    except Exception as ex:
        row["error"] = "fwd: " + describe(ex)
        return
    try:
        for x in inputs:
            x.requires_grad_(True)
        dh = torch.randn_like(pick(fn()).detach())  # random upstream gradient
        if e.get("bwd_llvm_opt"):
            # The TFLA exp forward aborts Triton 3.6's compiler with LLVM's optimizations; its
            # backward kernels are other functions, compiled at their first call: with this
            # shape's forward compiled (the call above, as autograd calls it), the backward
            # compiles with the optimizations on. Triton's in-process cache does not key on the
            # variable, so every later call reuses both as compiled here.
            out = pick(fn())
            os.environ.pop("DISABLE_LLVM_OPT", None)
            try:
                out.backward(dh)
            finally:
                os.environ["DISABLE_LLVM_OPT"] = "1"

        def step():
            pick(fn()).backward(dh)
        for x in inputs:
            x.grad = None
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        # Peak on top of what is resident (inputs and dh): outputs, saved/recomputed
        # states, gradients and workspace of one forward+backward.
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base
        row["fwdbwd_ms"] = bench_ms(torch, step, grad_to_none=inputs)
    except Exception as ex:
        row["error"] = "fwdbwd: " + describe(ex)
        if "3.7.1" in str(ex):
            row["note"] = "FLA refuses its gated backward on Hopper with Triton < 3.7.1"


def step_bytes(bh, dqk, dhv, x, s, sn):
    """Bytes one step must move (tfla's StepDims::bytes_moved, exp): C read and written (s
    bytes), n read and written (sn bytes: tfla keeps n in f32, TFLA's kernel in dtype_state),
    m read and written, q, k, v read and h written (x bytes), i and f read."""
    return bh * (2 * dqk * dhv * s + 2 * dqk * sn + 2 * 4 + (2 * dqk + 2 * dhv) * x + 2 * 4)


def run_step(torch, e, row):
    """TFLA's fused Triton step kernel, `get_mlstm_step_kernel("triton")` (mLSTMexp only):
    q, k (B, NH, DQK), v (B, NH, DHV), i, f (B, NH, 1) in the input dtype; states c
    (B, NH, DQK, DHV), n (B, NH, DQK), m (B, NH, 1) in `dtype_state`. It is not in place: the
    new states go to buffers passed as matC_new/vecN_new/scaM_new (allocated once, so the
    timing is the kernel's), which reads and writes C once, like ours."""
    try:
        from mlstm_kernels.torch import get_mlstm_step_kernel
        step = get_mlstm_step_kernel("triton")
    except Exception as ex:  # ImportError, or the registry's error without triton
        row["error"] = f"unavailable: {type(ex).__name__}: {ex}"
        return
    B, NH, DQK, DHV = e["B"], e["NH"], e["DQK"], e["DHV"]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[e["dtype"]]
    sdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[e["state_dtype"]]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rn(*shape, dtype=dt, shift=0.0):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen).add_(shift)
    q, k, v = rn(B, NH, DQK), rn(B, NH, DQK), rn(B, NH, DHV)
    i, f = rn(B, NH, 1), rn(B, NH, 1, shift=3.0)
    c, n, m = rn(B, NH, DQK, DHV, dtype=sdt), rn(B, NH, DQK, dtype=sdt), rn(B, NH, 1, dtype=sdt)
    c2, n2, m2 = torch.empty_like(c), torch.empty_like(n), torch.empty_like(m)

    def fn():
        return step(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=sdt, matC_new=c2,
                    vecN_new=n2, scaM_new=m2)
    try:
        with torch.no_grad():
            fn()  # compiles
            ms = bench_ms(torch, fn)
    except Exception as ex:
        row["error"] = "step: " + describe(ex)
        return
    nbytes = step_bytes(B * NH, DQK, DHV, q.element_size(), c.element_size(), n.element_size())
    row.update(step_us=ms * 1e3, bytes=nbytes, gbps=nbytes / (ms * 1e-3) / 1e9)


def run_ceilings(torch, row):
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(torch, lambda: torch.matmul(a, b))
    row.update(matmul_ms=ms, matmul_bf16_tflops=2 * n ** 3 / (ms * 1e-3) / 1e12)
    a = b = None  # release them before the 4 GiB copy test
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    dst = torch.empty_like(src)
    ms = bench_ms(torch, lambda: dst.copy_(src))
    nbytes = 2 * src.numel() * src.element_size()  # read + written
    row.update(copy_ms=ms, copy_bytes=nbytes, copy_gbps=nbytes / (ms * 1e-3) / 1e9)


def run_check(torch, e, row):
    """Our output h against the TFLA kernel on the same inputs (see the README's notes on
    definitions: both sides scale q by 1/sqrt(DQK); exp: h = C~^T q / (max(|n~^T q|,
    e^-m) + eps); sig: sigma(i), sigma(f), h = C~^T q / (max(|n~^T q|, 1) + eps);
    sig_nonorm: h = C~^T q, eps unused)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(e["path"], framework="pt") as fh:
        meta = fh.metadata() or {}
    t = load_file(e["path"], device="cuda")
    var = meta.get("variant", "exp")
    eps, chunk = float(meta.get("eps", 1e-6)), int(meta.get("chunk", 128))
    B, NH, S, DQK = t["q"].shape
    row.update(file=os.path.basename(e["path"]), variant=var, eps=eps, chunk=chunk, B=B,
               NH=NH, S=S, DQK=DQK, DHV=t["v"].shape[-1], dtype=str(t["q"].dtype))
    try:
        impl = load_ref("tfla", var)
    except Unavailable as ex:
        row["error"] = f"unavailable: {ex}"
        return
    kw = {"eps": eps, "chunk_size": chunk}
    if var != "exp":
        kw["normalize"] = var == "sig"
    with torch.no_grad():
        h_ref = impl(t["q"], t["k"], t["v"], t["i"], t["f"], **kw).float()
    ours = t["h"].float()
    row["rel_l2"] = float((h_ref - ours).norm() / ours.norm().clamp_min(1e-30))
    row["max_abs"] = float((h_ref - ours).abs().max())


def machine_info(torch):
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "python": sys.version.split()[0], "packages": package_versions()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    gpu_mem_bytes=p.total_memory)
    try:
        info["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception:
        info["driver"] = None
    return info


def worker_main(task_path, out_path):
    with open(task_path) as fh:
        task = json.load(fh)
    if task["disable_llvm_opt"]:
        # Must be set before Triton compiles anything: without it the TFLA exp forward
        # kernel aborts Triton 3.6's compiler (LLVM SLPVectorizer assertion).
        os.environ["DISABLE_LLVM_OPT"] = "1"
    else:
        os.environ.pop("DISABLE_LLVM_OPT", None)
    os.environ.update(task["env"])
    print(f"[worker {task['group']}] pid {os.getpid()} DISABLE_LLVM_OPT="
          f"{os.environ.get('DISABLE_LLVM_OPT', '(unset)')} {task['env'] or ''}", flush=True)
    import torch
    out = open(out_path, "a", buffering=1)

    def emit(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()
    emit({"machine": machine_info(torch)})
    for idx, e in task["entries"]:
        emit({"start": idx})
        row = {k: v for k, v in e.items() if k not in ("group", "kind")}
        row.update(kind=e["kind"], error=None)
        t0 = time.time()
        try:
            {"bench": run_bench, "ceil": lambda t, _e, r: run_ceilings(t, r),
             "check": run_check, "step": run_step}[e["kind"]](torch, e, row)
        except torch.cuda.OutOfMemoryError as ex:
            row["error"] = "OOM: " + describe(ex)
        except Exception as ex:
            row["error"] = describe(ex)
        row["wall_s"] = round(time.time() - t0, 1)  # compiles and autotuning included
        gc.collect()
        torch.cuda.empty_cache()  # free this entry's memory before the next one
        print("  " + fmt_row(row), flush=True)
        fatal = row["error"] and any(m in row["error"] for m in FATAL_MARKERS)
        emit({"done": idx, "row": row})
        if fatal:  # a sticky CUDA error: nothing more can run in this context
            sys.exit(3)


# ----------------------------------------------------------------------------- the parent
def strip(e, **extra):
    return dict({k: v for k, v in e.items() if k not in ("group", "skip")}, **extra)


def run_group(group, items, args, rows, machine):
    """Run (index, entry) items in worker processes, storing each row in rows[index] as it
    arrives; a worker that crashes or overruns --entry-timeout costs only its current entry."""
    disable, env_extra = group_setup(group, args)
    pending = list(items)
    while pending:
        with tempfile.TemporaryDirectory() as td:
            task, outp = os.path.join(td, "task.json"), os.path.join(td, "out.jsonl")
            with open(task, "w") as fh:
                json.dump({"group": group, "entries": pending, "disable_llvm_opt": disable,
                           "env": env_extra}, fh)
            open(outp, "w").close()
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", task,
                                     "--worker-out", outp], stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"), errors="replace")
            tail = collections.deque(maxlen=40)

            def pump():  # echo the worker's stderr live and keep its end for error messages
                for line in proc.stderr:
                    sys.stderr.write(line)
                    tail.append(line.rstrip())
            pumper = threading.Thread(target=pump, daemon=True)
            pumper.start()
            current, since, timed_out = None, time.time(), False
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    cur = collect(read_jsonl(outp), rows, machine)
                    if cur != current:
                        current, since = cur, time.time()
                    elif cur is not None and time.time() - since > args.entry_timeout:
                        proc.kill()  # only this worker, through its own handle
                        proc.wait()
                        timed_out = True
            except KeyboardInterrupt:  # SIGTERM/SIGINT: stop the worker, keep what it finished
                proc.kill()
                proc.wait()
                collect(read_jsonl(outp), rows, machine)
                raise
            pumper.join(timeout=5)
            cur = collect(read_jsonl(outp), rows, machine)
        why = (f"timed out after {args.entry_timeout:.0f} s" if timed_out
               else f"worker died ({signal_name(proc.returncode)})")
        last = next((": " + line for line in reversed(tail) if line.strip()), "")
        if cur is not None:  # the entry it was running when it died
            rows[cur] = strip(dict(pending)[cur], error=f"{why}{last}"[:500])
            print(f"  [{group}] entry {cur} failed: {rows[cur]['error']}", flush=True)
        elif all(rows[i] is None for i, _ in pending):  # died before its first entry
            for i, e in pending:
                rows[i] = strip(e, error=f"{why} before running anything{last}"[:500])
        pending = [(i, e) for i, e in pending if rows[i] is None]
        if pending:
            print(f"[{group}] fresh worker for the {len(pending)} remaining entries", flush=True)


def collect(msgs, rows, machine):
    """Store finished rows; return the index of the entry still running, if any."""
    running = None
    for m in msgs:
        if "machine" in m and not machine:
            machine.update(m["machine"])
        elif "start" in m:
            running = m["start"]
        elif "done" in m:
            rows[m["done"]], running = m["row"], None
    return running


def signal_name(rc):
    if rc is not None and rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def read_jsonl(path):
    with open(path) as fh:  # a line without its newline is still being written: skip it
        return [json.loads(line) for line in fh if line.endswith("\n")]


def mark_best(rows):
    """Per TFLA variant and point, flag the chunk size with the least fwd+bwd time (else fwd)."""
    by_point = collections.defaultdict(list)
    for r in rows:
        if r.get("kind") == "bench" and r["ref"] == "tfla":
            by_point[(r["variant"], r["B"], r["S"], r["NH"], r["DQK"], r["DHV"])].append(r)
    for group in by_point.values():
        for r in group:
            r.pop("best", None)
        for key in ("fwdbwd_ms", "fwd_ms"):
            timed = [r for r in group if r.get(key)]
            if timed:
                min(timed, key=lambda r: r[key])["best"] = key
                break


def fmt_row(r):
    if r.get("kind") == "ceil":
        if r.get("error"):
            return f"ceilings: {r['error']}"
        return (f"ceilings: bf16 matmul 8192^3 {r['matmul_bf16_tflops']:.0f} TFLOP/s, "
                f"device copy {r['copy_gbps']:.0f} GB/s (read+write)")
    if r.get("kind") == "check":
        res = r.get("error") or f"rel L2 {r.get('rel_l2', float('nan')):.3e}"
        return f"check {r.get('file')} [{r.get('variant')}]: {res}"
    if r.get("kind") == "step":
        res = r.get("error") or f"{r['step_us']:8.2f} us/step {r['gbps']:6.0f} GB/s"
        return (f"step {r['ref']}:{r['variant']} B*NH={r['B'] * r['NH']:<4} DQK={r['DQK']} "
                f"DHV={r['DHV']} state {r['state_dtype']:4}: {res}")
    f_fwd, f_all = flops(r)

    def t(ms, fl):
        return (f"{ms:9.3f} {fl / (ms * 1e-3) / 1e12:6.1f}" if ms else f"{'-':>9} {'-':>6}")
    mem = f"{r['peak_mem_bytes'] / 2**30:7.2f}" if r.get("peak_mem_bytes") else f"{'-':>7}"
    note = ("best " if r.get("best") else "") + (r.get("error") or "")
    return (f"{r['ref'] + ':' + r['variant']:18} {r['B']:3} {r['S']:6} {r['NH']:3} {r['DQK']:4}"
            f" {r['DHV']:4} {r['chunk'] or '-':>5} {t(r.get('fwd_ms'), f_fwd)}"
            f" {t(r.get('fwdbwd_ms'), f_all)} {mem} {r.get('wall_s') or '-':>6}  {note[:110]}")


HEADER = (f"{'reference':18} {'B':>3} {'S':>6} {'NH':>3} {'DQK':>4} {'DHV':>4} {'chunk':>5}"
          f" {'fwd ms':>9} {'TF/s':>6} {'f+b ms':>9} {'TF/s':>6} {'peakGiB':>7} {'wall s':>6}  note")
FLOP_TEXT = ("FLOPs: mLSTM/GLA fwd = B*NH*(4*S*DQK*DHV + S*L*(DQK+DHV)), fwd+bwd = 3x fwd "
             f"(L = chunk; FLA: L = {FLA_CHUNK});\n       SDPA causal fwd = 4*B*NH*S^2*D/2, "
             "fwd+bwd = 3.5x fwd")


def workaround_lines(args, plan):
    lines = ["DISABLE_LLVM_OPT=1 is set in the TFLA exp worker (and the check worker) before "
             "Triton is imported: without it Triton 3.6 aborts (LLVM SLPVectorizer assertion) "
             "compiling the TFLA exp forward kernel; the exp backward "
             + ("compiles with them, after its forward compiled without (--exp-backward "
                "llvm-opt). " if args.exp_backward == "llvm-opt" else
                "runs without them too (--exp-backward with-forward). ")
             + "The TFLA sig and sig_nonorm kernels and FLA compile with LLVM optimizations "
             + ("OFF too (--llvm-opt-off all)." if args.llvm_opt_off == "all" else "ON.")]
    risky = sorted({(e["B"], e["S"]) for e in plan if "illegal memory" in e.get("skip", "")})
    if risky:
        lines.append(f"TFLA chunk 64 skipped at (B, S) in {risky}: it can hit an illegal memory "
                     "access, which poisons the CUDA context (--include-risky runs it).")
    lines.append("FLA refuses its gated backward (chunk_simple_gla) on Hopper with Triton < "
                 "3.7.1; the refusal is caught and recorded, the forward time is kept.")
    if any("flash backend" in e.get("skip", "") for e in plan):
        lines.append("SDPA flash runs only where DQK == DHV <= 256 (head configs with 512 "
                     "are skipped).")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="quick",
                    help="paper: B*S=65536 at S=2k..16k; quick: B=8, S=8192; long: B=1, S=16k..256k; "
                         "smoke: tiny; "
                         "none: ceilings and checks only")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--json", metavar="OUT.json", help="write every measurement here")
    ap.add_argument("--check-dir", metavar="DIR",
                    help="compare our outputs in DIR/*.safetensors with the TFLA kernels")
    ap.add_argument("--only", metavar="IDS", help="comma-separated subset of: " + ", ".join(REFS))
    ap.add_argument("--points", metavar="BxS,...",
                    help="run these (B, S) points instead of the grid's, e.g. 8x8192,4x16384")
    ap.add_argument("--heads", metavar="NH:DQK:DHV,...",
                    help="run these head configs instead of all three, e.g. 16:128:128")
    ap.add_argument("--no-ceilings", action="store_true", help="skip the matmul/copy ceilings")
    ap.add_argument("--step", action="store_true",
                    help="also time TFLA's step kernel (generation) at B*NH in "
                         f"{list(STEP_BH)}, DQK={STEP_DQK}, DHV={STEP_DHV} (default on the quick grid)")
    ap.add_argument("--no-step", action="store_true", help="skip the step kernel on the quick grid")
    ap.add_argument("--include-risky", action="store_true",
                    help="also run TFLA chunk 64 at B>=16 (may hit an illegal memory access)")
    ap.add_argument("--llvm-opt-off", choices=["tfla", "all"], default="tfla",
                    help="which workers get DISABLE_LLVM_OPT=1 (default: only the TFLA exp "
                         "and check workers, whose compile aborts without it)")
    ap.add_argument("--exp-backward", choices=["with-forward", "llvm-opt"], default="with-forward",
                    help="the TFLA exp backward's LLVM setting: without the optimizations as its "
                         "forward (default: the faster at each head's best chunk, BENCHMARKS.md), "
                         "or compiled with them after its forward compiled without (llvm-opt)")
    ap.add_argument("--chunks", metavar="L,...",
                    help="TFLA chunk sizes (default: 128,256 on the quick grid, else 64,128,256)")
    ap.add_argument("--entry-timeout", type=float, default=900.0,
                    help="seconds one entry may run (compiles included) before its worker is "
                         "killed")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and what would be skipped; touch no GPU")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker, args.worker_out)
    if args.check_dir and not os.path.isdir(args.check_dir):
        sys.exit(f"--check-dir {args.check_dir}: not a directory")

    plan = build_plan(args)
    everything = plan + extra_entries(args)
    print("== workarounds applied")
    for line in workaround_lines(args, plan):
        print("  - " + line)
    if args.dry_run:
        print("== packages (located, not imported)")
        for mod in ("torch", "triton", "mlstm_kernels", "fla", "safetensors"):
            spec = importlib.util.find_spec(mod)
            print(f"  {mod:14} {spec.origin if spec else 'NOT FOUND: its entries will report unavailable'}")
        print(f"  versions: {package_versions()}")
        print(f"== plan: grid {args.grid}, dtype {args.dtype}, {len(everything)} entries")
        for e in everything:
            if e["kind"] == "step":
                print(f"  [{e['group']:8}] step {e['ref']}:{e['variant']} B*NH={e['B'] * e['NH']} "
                      f"DQK={e['DQK']} DHV={e['DHV']} state {e['state_dtype']}")
                continue
            if e["kind"] != "bench":
                print(f"  [{e['group']:8}] {e['kind']} {e.get('path', '')}")
                continue
            tag = f"skip: {e['skip']}" if "skip" in e else "run"
            print(f"  [{e['group']:8}] {e['ref'] + ':' + e['variant']:18} B={e['B']:<3} "
                  f"S={e['S']:<6} NH={e['NH']:<3} DQK={e['DQK']:<4} DHV={e['DHV']:<4} "
                  f"chunk={e['chunk'] or '-':<4} {tag}")
        for group in ("torch", "tfla_exp", "tfla_sig", "fla", "check", "step"):
            disable, env = group_setup(group, args)
            print(f"  worker {group}: DISABLE_LLVM_OPT={'1' if disable else '(unset)'} {env or ''}")
        return 0

    rows, machine, status = [None] * len(everything), {}, "complete"

    def on_term(signum, frame):  # let `timeout` or a CI kill still leave a JSON behind
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        for group in ("torch", "tfla_exp", "tfla_sig", "fla", "check", "step"):  # cuBLAS ceilings first
            items = [(i, e) for i, e in enumerate(everything)
                     if e["group"] == group and "skip" not in e]
            if items:
                print(f"== worker group {group}: {len(items)} entries", flush=True)
                run_group(group, items, args, rows, machine)
                write_json(args, plan, everything, rows, machine, "partial")
    except KeyboardInterrupt:
        status = "interrupted"
        print("\n== interrupted: writing what has finished", flush=True)
    bench_rows, other = write_json(args, plan, everything, rows, machine, status)
    print("\n== results (" + status + ")\n  " + FLOP_TEXT)
    for r in other + [HEADER] + bench_rows:
        print("  " + (r if isinstance(r, str) else fmt_row(r)))
    if args.json:
        print(f"wrote {args.json}")
    return 0 if status == "complete" else 130


def write_json(args, plan, everything, rows, machine, status):
    """Complete the rows (skips, not-yet-run, FLOPs, best chunk) and write --json."""
    done = []
    for e, r in zip(everything, rows):
        if r is None:
            r = strip(e, skipped=e["skip"], error=f"skipped: {e['skip']}") if "skip" in e \
                else strip(e, error="not run (the benchmark was interrupted or is still running)")
        done.append(r)
    bench_rows = [r for r in done if r.get("kind") == "bench"]
    for r in bench_rows:
        for key in ("fwd_ms", "fwdbwd_ms", "peak_mem_bytes"):
            r.setdefault(key, None)
        r["flops_fwd"], r["flops_fwdbwd"] = flops(r)
    mark_best(bench_rows)
    other = [r for r in done if r.get("kind") != "bench"]
    if args.json:
        doc = {"schema": 1, "status": status, "grid": args.grid, "dtype": args.dtype,
               "machine": machine, "workarounds": workaround_lines(args, plan),
               "ceilings": next((r for r in other if r["kind"] == "ceil"), None),
               "flop_formula": FLOP_TEXT, "rows": bench_rows,
               "checks": [r for r in other if r["kind"] == "check"],
               "steps": [r for r in other if r["kind"] == "step"]}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)  # never leave a half-written file
    return bench_rows, other


if __name__ == "__main__":
    sys.exit(main())
