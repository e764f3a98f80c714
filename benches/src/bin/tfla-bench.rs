//! Times tfla's forward and forward+backward (Exact gradient) over the benchmark grid on the
//! GPU and prints one table (and, with `--json PATH`, every number). Run by `cargo xtask bench` and by the bundle on machines
//! without Rust.
//!
//! Usage: tfla-bench [--grid paper|quick|smoke|long|chooser] [--points B:S,...] [--json PATH]
//!                   [--variants exp,sig,sig_nonorm] [--chunks 64,128,...] [--heads NH:DQK:DHV,...] [--reps N]
//!                   [--dtype bf16|f16|f32] [--no-bwd] [--step | --no-step] [--varlen N]
//!                   [--recompute] [--trace] [--cool-ms MS]
//! Timing: CUDA events around each call on the runtime's stream, 3 warm-up calls, then the
//! median of 20 timed calls; inputs random (never zeros), bf16.
//! The step kernel (generation) has its own table (`step_table`): after the forward table on
//! the quick grid (unless `--no-step`), alone with `--step`. `--varlen N` adds a table of packed
//! variable-length batches (`varlen_table`): N sequences of random lengths, 65,536 tokens.
//! `--recompute` adds the backward with released chunk states (`recompute_table`).
//! `--trace` adds under each forward row its kernels as they run back to back (`trace_line`):
//! each launch's median GPU time and the gap before it over `--reps` calls, from events
//! around every launch (`Runtime::trace_launches`), and the same for forward+backward.
//! The last two columns are the card's mean SM clock while the forward and the
//! forward+backward were timed (`tfla_benches::clocks`, NVML sampled every 2 ms), `*` where the
//! driver held it down for power in at least a tenth of the samples: such a row is slower
//! than its kernels, and the chunk-size table marks a comparison that rests on one.
//! `--cool-ms MS` idles the card that long before each timed forward and forward+backward, so
//! each row starts below the power limit (a burst, as ncu times kernels); without it the rows
//! inherit what ran before them, as a training loop does.
use cust::event::{Event, EventFlags};
use cust::memory::{AsyncCopyDestination, DeviceBuffer};
use rand::Rng;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tfla::flops::{forward_backward_flops, forward_flops, state_bytes};
use tfla::{
    Dims, Dtype, GradMode, MlstmConfig, MlstmGradOutputs, MlstmGrads, MlstmOutputs, Runtime,
    StepDims, StepStates, Tensor, Variant,
};
use tfla_benches::RandomInputs;
use tfla_benches::clocks::{ClockSampler, Window};

/// The commit this binary was built from (`benches/build.rs`), in the table's header and every
/// JSON row.
const BUILD: &str = env!("TFLA_BUILD_COMMIT");
const HEADS: [(usize, usize, usize); 3] = [(8, 512, 512), (8, 256, 512), (16, 128, 128)];

fn grid(name: &str) -> Option<Vec<(usize, usize)>> {
    Some(match name {
        "paper" => vec![(32, 2048), (16, 4096), (8, 8192), (4, 16384)],
        "quick" => vec![(8, 8192)],
        "smoke" => vec![(2, 1024)],
        // One sequence, 16k to 256k tokens: time per token and memory against S
        // (`benches/compare/plot_long.py` draws them).
        "long" => vec![(1, 16384), (1, 32768), (1, 65536), (1, 131072), (1, 262144)],
        // What the automatic chunk size is fitted to (`tfla::select_chunk_size`): batches of
        // 1 to 64 sequences (8 to 1024 heads with the default head shapes), short to long.
        "chooser" => vec![
            (1, 2048),
            (1, 8192),
            (1, 32768),
            (2, 8192),
            (4, 8192),
            (8, 8192),
            (16, 8192),
            (32, 2048),
            (64, 1024),
        ],
        _ => return None,
    })
}

/// The comma-separated `a:b:…` tuples of a flag's value, each of `n` numbers (`form` names the
/// flag and its shape in the message of a malformed one).
fn tuples<'a>(text: &'a str, form: &'a str, n: usize) -> impl Iterator<Item = Vec<usize>> + 'a {
    text.split(',').map(move |t| {
        let v: Vec<usize> = t.split(':').map(|x| x.parse().expect(form)).collect();
        assert_eq!(v.len(), n, "{form}: `{t}`");
        v
    })
}

/// The clock sampler of device 0 (the runtime's), or why there is none.
fn clock_sampler() -> Result<ClockSampler, String> {
    let mut bus = [0 as std::ffi::c_char; 32];
    let dev = cust::device::Device::get_device(0).map_err(|e| e.to_string())?;
    // SAFETY: writes at most `bus.len()` bytes, NUL-terminated, into `bus`.
    let rc =
        unsafe { cust::sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, dev.as_raw()) };
    if rc != cust::sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDeviceGetPCIBusId: {rc:?}"));
    }
    // SAFETY: NUL-terminated by the driver above.
    let bus = unsafe { std::ffi::CStr::from_ptr(bus.as_ptr()) }.to_string_lossy();
    ClockSampler::start(&bus, Duration::from_millis(2))
}

/// Median time in ms of `f` over `reps` calls, after `warmup` calls.
fn time_ms(rt: &Runtime, warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    rt.synchronize().unwrap();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (start, stop) = (
            Event::new(EventFlags::DEFAULT).unwrap(),
            Event::new(EventFlags::DEFAULT).unwrap(),
        );
        start.record(rt.stream()).unwrap();
        f();
        stop.record(rt.stream()).unwrap();
        stop.synchronize().unwrap();
        times.push(stop.elapsed_time_f32(&start).unwrap() as f64);
    }
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let grid_name = opt("--grid").unwrap_or_else(|| "quick".into());
    let Some(grid_points) = grid(&grid_name) else {
        eprintln!("tfla-bench: unknown --grid `{grid_name}`: paper, quick, smoke, long or chooser");
        std::process::exit(2);
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        opt(name)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let want_variants = list("--variants", "exp,sig,sig_nonorm");
    let chunks: Vec<usize> = list("--chunks", "64,128,256,512")
        .iter()
        .map(|c| c.parse().expect("--chunks"))
        .collect();
    let heads: Vec<(usize, usize, usize)> = match opt("--heads") {
        None => HEADS.to_vec(),
        Some(h) => tuples(&h, "--heads NH:DQK:DHV", 3)
            .map(|v| (v[0], v[1], v[2]))
            .collect(),
    };
    let points: Vec<(usize, usize)> = match opt("--points") {
        None => grid_points,
        Some(p) => tuples(&p, "--points B:S", 2)
            .map(|v| (v[0], v[1]))
            .collect(),
    };
    let with_bwd = !args.iter().any(|a| a == "--no-bwd");
    let with_trace = args.iter().any(|a| a == "--trace");
    let reps: usize = opt("--reps").map_or(20, |r| r.parse().expect("--reps"));
    let cool = Duration::from_millis(opt("--cool-ms").map_or(0, |c| c.parse().expect("--cool-ms")));
    let dtype = Dtype::parse(&opt("--dtype").unwrap_or_else(|| "bf16".into()))
        .expect("--dtype: bf16, f16 or f32");
    let rt = Runtime::new().unwrap_or_else(|e| {
        eprintln!("tfla-bench: {e}");
        std::process::exit(2)
    });
    let device = format!(
        "{} ({} module)",
        rt.device_name().unwrap_or_default(),
        rt.arch().name()
    );
    let variants = [
        ("exp", Variant::Exp),
        ("sig", Variant::Sig { normalize: true }),
        ("sig_nonorm", Variant::Sig { normalize: false }),
    ];
    let clocks = clock_sampler();
    let mut table = String::new();
    let mut json = String::from("[\n");
    let step_only = args.iter().any(|a| a == "--step");
    let with_step = step_only || (grid_name == "quick" && !args.iter().any(|a| a == "--no-step"));
    writeln!(
        table,
        "tfla {BUILD}, {device}, {}; TFLOP/s of model FLOPs (README); fwd+bwd: Exact gradient, alloc: outputs, gradients and workspace; MHz: mean SM clock while timed, * held for power{}",
        dtype.name(),
        clocks.as_ref().err().map_or(String::new(), |e| format!(" (not sampled: {e})"))
    )
    .unwrap();
    let clocks = clocks.ok();
    // A row's timing: the card idle `cool`, then the median of `f` and the clock meanwhile.
    let time_row = |f: &mut dyn FnMut()| {
        std::thread::sleep(cool);
        let timed = Instant::now();
        let ms = time_ms(&rt, 3, reps, f);
        (ms, clocks.as_ref().and_then(|c| c.window_since(timed)))
    };
    writeln!(
        table,
        "{:<11} {:>3} {:>6} {:>3} {:>4} {:>4} {:>5} {:>9} {:>8} {:>10} {:>9} {:>11} {:>8} {:>9} {:>8} {:>8}",
        "variant",
        "B",
        "S",
        "NH",
        "DQK",
        "DHV",
        "L",
        "fwd ms",
        "TFLOP/s",
        "states MB",
        "alloc MB",
        "fwd+bwd ms",
        "TFLOP/s",
        "alloc MB",
        "fwd MHz",
        "f+b MHz"
    )
    .unwrap();
    if step_only {
        // The step table alone, without the forward table's header.
        table.clear();
    }
    let mut rows: Vec<Timed> = Vec::new();
    for &(nh, dqk, dhv) in heads.iter().filter(|_| !step_only) {
        for &(b, s) in &points {
            let dims = Dims { b, nh, s, dqk, dhv };
            let data = RandomInputs::new(&rt, dtype, &[b, nh, s], dqk, dhv);
            let (inputs, dh) = (data.mlstm(), &data.dh);
            for (vname, variant) in variants
                .into_iter()
                .filter(|(n, _)| want_variants.iter().any(|w| w == n))
            {
                for &chunk in &chunks {
                    let cfg = MlstmConfig {
                        row_stats: with_bwd,
                        ..MlstmConfig::new(variant).with_chunk_size(chunk)
                    };
                    let mut out = match MlstmOutputs::alloc(&rt, &dims, dtype, &cfg) {
                        Ok(o) => o,
                        Err(e) => {
                            writeln!(
                                table,
                                "{vname:<11} {b:>3} {s:>6} {nh:>3} {dqk:>4} {dhv:>4} {chunk:>5} {e}"
                            )
                            .unwrap();
                            continue;
                        }
                    };
                    let (ms, fwd_clock) = time_row(&mut || {
                        tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap()
                    });
                    let trace_fwd = with_trace.then(|| {
                        launch_trace(&rt, reps, || {
                            tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap()
                        })
                    });
                    let tflops = forward_flops(&dims, chunk) / (ms * 1e-3) / 1e12;
                    let mb = state_bytes(&dims, chunk, dtype) as f64 / 1e6;
                    let alloc_mb = out.bytes() as f64 / 1e6;
                    // Forward+backward into allocated outputs, gradients and workspace.
                    let fb = with_bwd.then(|| {
                        MlstmGrads::alloc(&rt, &inputs, &cfg).map(|mut grads| {
                            let grad_out = MlstmGradOutputs::new(dh);
                            let mut call = || {
                                tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap();
                                tfla::mlstm_bwd_into(
                                    &rt,
                                    &inputs,
                                    &out,
                                    &grad_out,
                                    &cfg,
                                    GradMode::Exact,
                                    &mut grads,
                                )
                                .unwrap();
                            };
                            let (ms, clock) = time_row(&mut call);
                            let trace = with_trace.then(|| launch_trace(&rt, reps, &mut call));
                            (ms, out.bytes() + grads.bytes(), trace, clock)
                        })
                    });
                    let (fb_text, fb_json) = match &fb {
                        Some(Ok((fb_ms, bytes, ..))) => {
                            let tf = forward_backward_flops(&dims, chunk) / (fb_ms * 1e-3) / 1e12;
                            (
                                format!("{fb_ms:>11.3} {tf:>8.1} {:>9.1}", *bytes as f64 / 1e6),
                                format!(
                                    ", \"fwdbwd_ms\": {fb_ms:.4}, \"fwdbwd_tflops\": {tf:.2}, \"fwdbwd_alloc_bytes\": {bytes}"
                                ),
                            )
                        }
                        Some(Err(e)) => (format!("  bwd: {e}"), String::new()),
                        None => (String::new(), String::new()),
                    };
                    let (fb_ms, fb_clock) = match &fb {
                        Some(Ok((fb_ms, _, _, clock))) => (Some(*fb_ms), *clock),
                        _ => (None, None),
                    };
                    rows.push(Timed {
                        variant: vname,
                        dims,
                        chunk,
                        fwd_ms: ms,
                        fwd_bwd_ms: fb_ms,
                        fwd_capped: fwd_clock.is_some_and(|w| w.capped()),
                        fwd_bwd_capped: fb_clock.is_some_and(|w| w.capped()),
                    });
                    // Blank forward+backward columns where none ran, so the clocks line up.
                    writeln!(table, "{vname:<11} {b:>3} {s:>6} {nh:>3} {dqk:>4} {dhv:>4} {chunk:>5} {ms:>9.3} {tflops:>8.1} {mb:>10.1} {alloc_mb:>9.1} {fb_text:>30} {:>8} {:>8}", Window::column(fwd_clock), Window::column(fb_clock)).unwrap();
                    let trace_fb = match &fb {
                        Some(Ok((_, _, t, _))) => t.as_deref(),
                        _ => None,
                    };
                    let mut trace_json = String::new();
                    for (pass, trace) in [("fwd", trace_fwd.as_deref()), ("fwdbwd", trace_fb)] {
                        if let Some(t) = trace {
                            trace_line(&mut table, pass, t);
                            let items: Vec<String> = t
                                .iter()
                                .map(|k| {
                                    format!(
                                        "{{\"name\": \"{}\", \"ms\": {:.4}, \"gap_ms\": {:.4}}}",
                                        k.name, k.ms, k.gap_ms
                                    )
                                })
                                .collect();
                            write!(trace_json, ", \"trace_{pass}\": [{}]", items.join(", "))
                                .unwrap();
                        }
                    }
                    writeln!(json, "  {{\"impl\": \"tfla\", \"commit\": \"{BUILD}\", \"dtype\": \"{}\", \"variant\": \"{vname}\", \"B\": {b}, \"S\": {s}, \"NH\": {nh}, \"DQK\": {dqk}, \"DHV\": {dhv}, \"chunk\": {chunk}, \"fwd_ms\": {ms:.4}, \"tflops\": {tflops:.2}, \"state_bytes\": {}, \"alloc_bytes\": {}{fb_json}{}{}{trace_json}}},", dtype.name(), state_bytes(&dims, chunk, dtype), out.bytes(), Window::json(fwd_clock, "fwd"), Window::json(fb_clock, "fwdbwd")).unwrap();
                }
            }
        }
    }
    if chunks.len() > 1 {
        chooser_table(&rows, &mut table);
    }
    if with_step {
        step_table(&rt, dtype, &want_variants, reps, &mut table, &mut json);
    }
    if args.iter().any(|a| a == "--recompute") {
        recompute_table(&rt, dtype, &heads, chunks[0], reps, &mut table, &mut json);
    }
    if let Some(n) = opt("--varlen") {
        let n: usize = n.parse().expect("--varlen N");
        let runs = VarlenRuns {
            seqs: n,
            heads: &heads,
            chunk: chunks[0],
            reps,
        };
        varlen_table(&rt, dtype, &runs, &want_variants, &mut table, &mut json);
    }
    if json.ends_with(",\n") {
        json.truncate(json.len() - 2);
        json.push('\n');
    }
    json.push_str("]\n");
    print!("{table}");
    if let Some(path) = opt("--json") {
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

/// Each launch of `f`'s calls as it runs back to back: `reps` calls traced
/// (`Runtime::trace_launches`), then per launch position the median GPU time and the median
/// gap before it (for the first launch: since the previous call's last).
fn launch_trace(rt: &Runtime, reps: usize, mut f: impl FnMut()) -> Vec<tfla::LaunchTime> {
    rt.synchronize().unwrap();
    rt.trace_launches().unwrap();
    for _ in 0..reps {
        f();
    }
    let all = rt.take_launch_trace().unwrap();
    let per = all.len() / reps;
    let median = |mut v: Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    (0..per)
        .map(|i| tfla::LaunchTime {
            name: all[i].name,
            ms: median((0..reps).map(|r| all[r * per + i].ms).collect()),
            gap_ms: median((0..reps).map(|r| all[r * per + i].gap_ms).collect()),
        })
        .collect()
}

/// A traced pass under its row: each kernel's median ms (the gap before it in brackets where
/// it is at least 1 µs), then the sums.
fn trace_line(table: &mut String, pass: &str, trace: &[tfla::LaunchTime]) {
    let mut line = format!("  {pass:<6}");
    for k in trace {
        let name = k.name.trim_start_matches("mlstm_");
        write!(line, " {name} {:.3}", k.ms).unwrap();
        if k.gap_ms >= 1e-3 {
            write!(line, " [+{:.3}]", k.gap_ms).unwrap();
        }
        line.push_str(" |");
    }
    let kernels: f32 = trace.iter().map(|k| k.ms).sum();
    let gaps: f32 = trace.iter().skip(1).map(|k| k.gap_ms).sum();
    writeln!(table, "{line} kernels {kernels:.3} + gaps {gaps:.3} ms").unwrap();
}

/// One row of the forward table, for [`chooser_table`].
struct Timed {
    variant: &'static str,
    dims: Dims,
    chunk: usize,
    fwd_ms: f64,
    fwd_bwd_ms: Option<f64>,
    /// Whether the clock was held for power while the forward, the forward+backward ran.
    fwd_capped: bool,
    fwd_bwd_capped: bool,
}

/// The automatic chunk size against the measured best, per variant and shape: the L that
/// `tfla::select_chunk_size` picks for a forward alone and for a forward that a backward
/// follows, and its time over the best measured time (1.000: it picked the best L). A pick
/// outside the measured chunk sizes prints as such.
fn chooser_table(rows: &[Timed], table: &mut String) {
    writeln!(
        table,
        "\nchunk size: automatic pick (tfla::select_chunk_size) against the best measured L (* one of the two \
         times taken with the clock held for power)\n\
         {:<11} {:>3} {:>6} {:>3} {:>4} {:>4} {:>9} {:>9} {:>7} {:>12} {:>12} {:>7}",
        "variant",
        "B",
        "S",
        "NH",
        "DQK",
        "DHV",
        "fwd best",
        "fwd auto",
        "x best",
        "fwd+bwd best",
        "fwd+bwd auto",
        "x best"
    )
    .unwrap();
    let mut seen: Vec<(&str, Dims)> = Vec::new();
    for row in rows {
        let (variant, dims) = (row.variant, row.dims);
        if seen.contains(&(variant, dims)) {
            continue;
        }
        seen.push((variant, dims));
        let cells: Vec<&Timed> = rows
            .iter()
            .filter(|r| r.variant == variant && r.dims == dims)
            .collect();
        // (best L, auto L, auto time / best time) for one column of times, `*` where one of
        // the two times was taken with the clock held for power.
        let pick = |time: fn(&Timed) -> Option<f64>, capped: fn(&Timed) -> bool, backward| {
            let best = cells
                .iter()
                .filter_map(|r| Some((*r, time(r)?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            let auto = tfla::select_chunk_size(&dims, backward) as usize;
            let ratio = cells
                .iter()
                .find(|r| r.chunk == auto)
                .and_then(|r| Some((time(r)?, capped(r) || capped(best.0))))
                .map_or("not run".to_string(), |(t, held)| {
                    format!("{:.3}{}", t / best.1, if held { "*" } else { "" })
                });
            Some((best.0.chunk, auto, ratio))
        };
        let Some((fl, fa, fr)) = pick(|r| Some(r.fwd_ms), |r| r.fwd_capped, false) else {
            continue;
        };
        let fb = pick(|r| r.fwd_bwd_ms, |r| r.fwd_bwd_capped, true)
            .map(|(bl, ba, br)| format!("{bl:>12} {ba:>12} {br:>7}"))
            .unwrap_or_default();
        let Dims { b, nh, s, dqk, dhv } = dims;
        writeln!(
            table,
            "{variant:<11} {b:>3} {s:>6} {nh:>3} {dqk:>4} {dhv:>4} {fl:>9} {fa:>9} {fr:>7} {fb}"
        )
        .unwrap();
    }
}

/// Heads of the step table (B·NH; NH = 8) at DQK = 256, DHV = 512 (issue #6).
const STEP_BH: [usize; 3] = [64, 128, 256];
const STEP_DQK: usize = 256;
const STEP_DHV: usize = 512;

/// The step kernel's table: time per step and the bandwidth it achieves, bytes moved
/// (`StepDims::bytes_moved`: C̃ and ñ read and written, each small vector once) over time, as a
/// fraction of a device-to-device copy measured in the same run, two ways:
/// - one step alone: the L2 (50 MiB on H100/H200) flushed before it (C̃ at B·NH = 64 is 32 MiB
///   of f32, so back-to-back steps of one state would partly run from L2), events around it;
/// - a decode loop: one step for each of LAYERS layers, each its own states (as in a model,
///   where every layer's states are cold again by its next step), back to back between one
///   pair of events, per step. Launch latency and the drain of the writes overlap the next
///   layer here, as they do in a served model.
///
/// Each is also set against a device copy of the same bytes (half read, half written), timed
/// the same way ("of = copy"). Each row also gives the kernel's registers and resident blocks
/// per SM as the driver compiled it, and the waves of its grid (`tfla::step::step_occupancy`).
fn step_table(
    rt: &Runtime,
    dtype: Dtype,
    want_variants: &[String],
    reps: usize,
    table: &mut String,
    json: &mut String,
) {
    const LAYERS: usize = 8;
    let stream = rt.stream();
    // 256 MiB written on the stream before each timed call evicts the L2.
    let mut flush = unsafe { DeviceBuffer::<u32>::uninitialized(64 << 20) }.expect("flush buffer");
    // Median ms of `f` (3 warm-up calls first), the L2 flushed before each timed call.
    let mut timed = |f: &mut dyn FnMut()| -> f64 {
        for _ in 0..3 {
            f();
        }
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            // SAFETY: nothing reads the flush buffer.
            unsafe { flush.set_32_async(0, stream) }.expect("flush");
            let (start, stop) = (
                Event::new(EventFlags::DEFAULT).unwrap(),
                Event::new(EventFlags::DEFAULT).unwrap(),
            );
            start.record(stream).unwrap();
            f();
            stop.record(stream).unwrap();
            stop.synchronize().unwrap();
            times.push(stop.elapsed_time_f32(&start).unwrap() as f64);
        }
        times.sort_by(f64::total_cmp);
        times[reps / 2]
    };
    // GB/s of copying `bytes` (half read, half written) in `n` back-to-back copies of distinct
    // buffers, timed by `timed`.
    let copy_gbps = |bytes: usize, n: usize, timed: &mut dyn FnMut(&mut dyn FnMut()) -> f64| {
        let half = bytes / 2;
        let bufs: Option<Vec<_>> = (0..n)
            .map(|_| {
                let src = unsafe { DeviceBuffer::<u8>::uninitialized(half) }.ok()?;
                let dst = unsafe { DeviceBuffer::<u8>::uninitialized(half) }.ok()?;
                Some((src, dst))
            })
            .collect();
        let mut bufs = bufs?;
        // SAFETY: the buffers live until `timed` has synchronized the stream.
        let ms = timed(&mut || {
            for (src, dst) in bufs.iter_mut() {
                unsafe { dst.async_copy_from(&*src, stream) }.expect("copy")
            }
        });
        Some((2 * half * n) as f64 / (ms * 1e-3) / 1e9)
    };
    // The ceiling: a 1 GiB device-to-device copy (2 GiB read + written).
    let ceiling = copy_gbps(2 << 30, 1, &mut timed);
    let device = rt.device_name().unwrap_or_default();
    let ceiling_text = ceiling.map_or("not measured".into(), |g| format!("{g:.0} GB/s"));
    writeln!(
        table,
        "\nstep (generation), {device}, inputs {}; NH = 8; device copy {ceiling_text} (read + \
         write); GB/s = bytes moved (C̃, ñ read + written, small vectors once) / time. alone: \
         one step after an L2 flush; loop: per step of {LAYERS} layers' steps back to back \
         (each layer its own states). of copy: of the device copy; of = copy: of a copy of the \
         same bytes timed the same way",
        dtype.name()
    )
    .unwrap();
    writeln!(
        table,
        "{:<11} {:>5} {:>4} {:>4} {:>5} | {:>8} {:>6} {:>7} {:>8} | {:>8} {:>6} {:>7} {:>8} | {:>5} {:>6} {:>6}",
        "variant",
        "B·NH",
        "DQK",
        "DHV",
        "state",
        "alone µs",
        "GB/s",
        "of copy",
        "of =copy",
        "loop µs",
        "GB/s",
        "of copy",
        "of =copy",
        "regs",
        "blk/SM",
        "waves"
    )
    .unwrap();
    let variants = [
        ("exp", Variant::Exp),
        ("sig", Variant::Sig { normalize: true }),
        ("sig_nonorm", Variant::Sig { normalize: false }),
    ];
    let pct = |x: f64, of: Option<f64>| of.map_or("-".into(), |c| format!("{:.0}%", 100.0 * x / c));
    let mut first = true;
    for bh in STEP_BH {
        let (b, nh) = (bh / 8, 8);
        let dims = StepDims {
            b,
            nh,
            dqk: STEP_DQK,
            dhv: STEP_DHV,
        };
        let data = RandomInputs::new(rt, dtype, &[b, nh], STEP_DQK, STEP_DHV);
        let inputs = data.step();
        let mut h = Tensor::uninit(rt, dtype, &[b, nh, STEP_DHV]).expect("h");
        for state in [Dtype::F32, Dtype::Bf16] {
            // Made after the uploads: the constructor waits for them.
            let mut layers: Vec<StepStates> = (0..LAYERS)
                .map(|_| {
                    StepStates::alloc_zeros(rt, b, nh, STEP_DQK, STEP_DHV, state).expect("states")
                })
                .collect();
            for (vname, variant) in variants
                .into_iter()
                .filter(|(n, _)| want_variants.iter().any(|w| w == n))
            {
                let cfg = MlstmConfig::new(variant);
                let bytes = dims.bytes_moved(dtype, state, variant);
                let mut alone =
                    || tfla::mlstm_step_into(rt, &inputs, &mut layers[0], &cfg, &mut h).unwrap();
                if first {
                    // The table's first timing read ~4 µs high (32.7–33.5 µs against 28.9 for
                    // the same kernel measured second, whose ncu duration is the same): a
                    // throwaway round first.
                    timed(&mut alone);
                    first = false;
                }
                let alone_ms = timed(&mut alone);
                let loop_ms = timed(&mut || {
                    for states in layers.iter_mut() {
                        tfla::mlstm_step_into(rt, &inputs, states, &cfg, &mut h).unwrap()
                    }
                }) / LAYERS as f64;
                let gbps = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
                let (alone_gbps, loop_gbps) = (gbps(alone_ms), gbps(loop_ms));
                let same_alone = copy_gbps(bytes as usize, 1, &mut timed);
                let same_loop = copy_gbps(bytes as usize, LAYERS, &mut timed);
                let occ = tfla::step::step_occupancy(rt, dims, dtype, state, variant).ok();
                let (occ_text, occ_json) = match occ {
                    Some(o) => (
                        format!(
                            "{:>5} {:>6} {:>6.2}",
                            o.registers,
                            o.blocks_per_sm,
                            o.waves()
                        ),
                        format!(
                            ", \"registers\": {}, \"blocks_per_sm\": {}, \"sms\": {}, \"blocks\": {}",
                            o.registers, o.blocks_per_sm, o.sms, o.blocks
                        ),
                    ),
                    None => ("    -      -      -".into(), String::new()),
                };
                writeln!(
                    table,
                    "{vname:<11} {bh:>5} {STEP_DQK:>4} {STEP_DHV:>4} {:>5} | {:>8.2} {alone_gbps:>6.0} {:>7} {:>8} | {:>8.2} {loop_gbps:>6.0} {:>7} {:>8} | {occ_text}",
                    state.name(),
                    alone_ms * 1e3,
                    pct(alone_gbps, ceiling),
                    pct(alone_gbps, same_alone),
                    loop_ms * 1e3,
                    pct(loop_gbps, ceiling),
                    pct(loop_gbps, same_loop),
                )
                .unwrap();
                let num = |x: Option<f64>| x.map_or("null".into(), |c| format!("{c:.1}"));
                writeln!(
                    json,
                    "  {{\"impl\": \"tfla\", \"commit\": \"{BUILD}\", \"kind\": \"step\", \"dtype\": \"{}\", \"state_dtype\": \"{}\", \"variant\": \"{vname}\", \"BH\": {bh}, \"B\": {b}, \"NH\": {nh}, \"DQK\": {STEP_DQK}, \"DHV\": {STEP_DHV}, \"bytes\": {bytes}, \"step_us\": {:.3}, \"gbps\": {alone_gbps:.1}, \"loop_layers\": {LAYERS}, \"loop_step_us\": {:.3}, \"loop_gbps\": {loop_gbps:.1}, \"copy_gbps\": {}, \"same_size_copy_gbps\": {}, \"same_size_loop_copy_gbps\": {}{occ_json}}},",
                    dtype.name(),
                    state.name(),
                    alone_ms * 1e3,
                    loop_ms * 1e3,
                    num(ceiling),
                    num(same_alone),
                    num(same_loop),
                )
                .unwrap();
            }
        }
    }
}

/// What `varlen_table` runs.
struct VarlenRuns<'a> {
    seqs: usize,
    heads: &'a [(usize, usize, usize)],
    chunk: usize,
    reps: usize,
}

/// Packed variable-length batches: `seqs` sequences of lengths drawn uniformly from
/// [1, 2·65536/seqs] and scaled to 65,536 tokens (the grid's B·S), forward and forward+backward
/// (Exact) through `tfla::varlen` into allocated outputs. Compare with the dense rows of the
/// same tokens: the difference is the padding to whole chunks and the repacking copies.
fn varlen_table(
    rt: &Runtime,
    dtype: Dtype,
    runs: &VarlenRuns,
    want_variants: &[String],
    table: &mut String,
    json: &mut String,
) {
    use rand::SeedableRng;
    const TOKENS: usize = 65_536;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let draws: Vec<f64> = (0..runs.seqs).map(|_| rng.gen_range(0.0..1.0)).collect();
    let sum: f64 = draws.iter().sum();
    let mut lens: Vec<usize> = draws
        .iter()
        .map(|d| ((d / sum * TOKENS as f64) as usize).max(1))
        .collect();
    let short = TOKENS as isize - lens.iter().sum::<usize>() as isize;
    lens[0] = (lens[0] as isize + short).max(1) as usize;
    let mut cu = vec![0u32];
    for &l in &lens {
        cu.push(cu[cu.len() - 1] + l as u32);
    }
    let total = cu[cu.len() - 1] as usize;
    let padded: usize = lens
        .iter()
        .map(|l| l.div_ceil(runs.chunk) * runs.chunk)
        .sum();
    writeln!(
        table,
        "\npacked variable-length batches: {} sequences, {total} tokens ({padded} after padding to L = {})",
        runs.seqs, runs.chunk
    )
    .unwrap();
    writeln!(
        table,
        "{:<11} {:>3} {:>4} {:>4} {:>9} {:>11}",
        "variant", "NH", "DQK", "DHV", "fwd ms", "fwd+bwd ms"
    )
    .unwrap();
    for &(nh, dqk, dhv) in runs.heads {
        let data = RandomInputs::new(rt, dtype, &[total, nh], dqk, dhv);
        let (inp, dh) = (data.varlen(&cu), &data.dh);
        for (vname, variant) in [
            ("exp", Variant::Exp),
            ("sig", Variant::Sig { normalize: true }),
            ("sig_nonorm", Variant::Sig { normalize: false }),
        ]
        .into_iter()
        .filter(|(n, _)| want_variants.iter().any(|w| w == n))
        {
            let cfg = MlstmConfig {
                row_stats: true,
                ..MlstmConfig::new(variant).with_chunk_size(runs.chunk)
            };
            let mut out = tfla::VarlenOutputs::alloc(rt, &inp, &cfg).unwrap();
            let fwd_ms = time_ms(rt, 2, runs.reps, || {
                tfla::mlstm_fwd_varlen_into(rt, &inp, &cfg, &mut out).unwrap();
            });
            let grad = tfla::MlstmGradOutputs::new(dh);
            let mut grads = tfla::VarlenGrads::alloc(rt, &inp, &out).unwrap();
            let fb_ms = time_ms(rt, 2, runs.reps, || {
                tfla::mlstm_fwd_varlen_into(rt, &inp, &cfg, &mut out).unwrap();
                tfla::mlstm_bwd_varlen_into(
                    rt,
                    &inp,
                    &out,
                    &grad,
                    &cfg,
                    GradMode::Exact,
                    &mut grads,
                )
                .unwrap();
            });
            writeln!(
                table,
                "{vname:<11} {nh:>3} {dqk:>4} {dhv:>4} {fwd_ms:>9.3} {fb_ms:>11.3}"
            )
            .unwrap();
            writeln!(json, "  {{\"impl\": \"tfla-varlen\", \"commit\": \"{BUILD}\", \"dtype\": \"{}\", \"variant\": \"{vname}\", \"seqs\": {}, \"tokens\": {total}, \"padded\": {padded}, \"NH\": {nh}, \"DQK\": {dqk}, \"DHV\": {dhv}, \"chunk\": {}, \"fwd_ms\": {fwd_ms:.4}, \"fwdbwd_ms\": {fb_ms:.4}}},", dtype.name(), runs.seqs, runs.chunk).unwrap();
        }
    }
}

/// TFLA's memory–time trade-off: the backward from kept chunk states against one that
/// recomputes them (`MlstmOutputs::release_chunk_states`), mLSTMexp at B = 8, S = 8192 and
/// `chunk`, with the memory the forward's outputs hold between the passes either way.
fn recompute_table(
    rt: &Runtime,
    dtype: Dtype,
    heads: &[(usize, usize, usize)],
    chunk: usize,
    reps: usize,
    table: &mut String,
    json: &mut String,
) {
    writeln!(
        table,
        "\nbackward from kept vs recomputed chunk states, exp, B = 8, S = 8192, L = {chunk}"
    )
    .unwrap();
    writeln!(
        table,
        "{:>3} {:>4} {:>4} {:>12} {:>15} {:>10} {:>14}",
        "NH", "DQK", "DHV", "bwd kept ms", "bwd recomp. ms", "kept MB", "released MB"
    )
    .unwrap();
    for &(nh, dqk, dhv) in heads {
        let (b, s) = (8, 8192);
        let data = RandomInputs::new(rt, dtype, &[b, nh, s], dqk, dhv);
        let (inputs, dh) = (data.mlstm(), &data.dh);
        let cfg = MlstmConfig {
            row_stats: true,
            ..MlstmConfig::new(Variant::Exp).with_chunk_size(chunk)
        };
        let grad_out = MlstmGradOutputs::new(dh);
        let mut fwd = tfla::mlstm_fwd(rt, &inputs, &cfg).unwrap();
        let mut grads = MlstmGrads::alloc(rt, &inputs, &cfg).unwrap();
        let mut bwd = |fwd: &MlstmOutputs| {
            time_ms(rt, 2, reps, || {
                tfla::mlstm_bwd_into(
                    rt,
                    &inputs,
                    fwd,
                    &grad_out,
                    &cfg,
                    GradMode::Exact,
                    &mut grads,
                )
                .unwrap()
            })
        };
        let kept_ms = bwd(&fwd);
        let kept_mb = fwd.bytes() as f64 / 1e6;
        fwd.release_chunk_states(rt).unwrap();
        let recomputed_ms = bwd(&fwd);
        let released_mb = fwd.bytes() as f64 / 1e6;
        writeln!(table, "{nh:>3} {dqk:>4} {dhv:>4} {kept_ms:>12.3} {recomputed_ms:>15.3} {kept_mb:>10.1} {released_mb:>14.1}").unwrap();
        writeln!(json, "  {{\"impl\": \"tfla-recompute\", \"commit\": \"{BUILD}\", \"dtype\": \"{}\", \"variant\": \"exp\", \"B\": {b}, \"S\": {s}, \"NH\": {nh}, \"DQK\": {dqk}, \"DHV\": {dhv}, \"chunk\": {chunk}, \"bwd_kept_ms\": {kept_ms:.4}, \"bwd_recomputed_ms\": {recomputed_ms:.4}, \"fwd_kept_bytes\": {}, \"fwd_released_bytes\": {}}},", dtype.name(), (kept_mb * 1e6) as u64, (released_mb * 1e6) as u64).unwrap();
    }
}
