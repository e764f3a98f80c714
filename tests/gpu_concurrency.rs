//! One runtime shared by threads, each launching on its own stream; the state pool served by
//! concurrent requests; out of memory in the middle of a forward+backward. Results must be
//! bit-equal to the same calls made one after another, and device memory must come back to
//! where it started.
mod common;

use common::*;
use cust::stream::{Stream, StreamFlags};
use tfla::reference::{RefInputs, Shape};
use tfla::{
    DeviceInputs, Dims, Dtype, Error, GradMode, MlstmConfig, MlstmGrads, MlstmOutputs, Runtime,
    StatePool, Tensor, Variant,
};

/// What the types promise: a runtime, a tensor and a state pool may be shared between threads
/// (launches through `&Runtime` lock only the entry-point map).
#[test]
fn runtime_tensor_and_pool_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Runtime>();
    shared::<Tensor>();
    shared::<StatePool>();
    shared::<MlstmOutputs>();
    shared::<MlstmGrads>();
}

fn free_bytes() -> usize {
    cust::memory::mem_get_info().unwrap().0
}

/// Every output of one forward+backward, as bits: h, the final states and the five gradients.
type Bits = Vec<Vec<u32>>;

struct Job {
    inputs: DeviceInputs,
    dh: Tensor,
    dims: Dims,
}

fn job(rt: &Runtime, shape: Shape, seed: u64) -> Job {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut inp = RefInputs::random(shape, true, &mut rng);
    round_inputs(&mut inp, Dtype::Bf16);
    let inputs = upload(rt, &inp, Dtype::Bf16);
    let Shape { b, nh, s, dqk, dhv } = shape;
    let dh: Vec<f32> = (0..b * nh * s * dhv)
        .map(|_| normal(&mut rng) as f32)
        .collect();
    Job {
        inputs,
        dh: Tensor::from_f32_as(rt, Dtype::Bf16, &dh, &[b, nh, s, dhv]).unwrap(),
        dims: Dims { b, nh, s, dqk, dhv },
    }
}

/// One forward+backward of `job` on `stream`, through the raw entry points (which take any
/// stream of the device's primary context), waiting only for that stream.
fn run_on(rt: &Runtime, stream: &Stream, job: &Job, cfg: &MlstmConfig, mode: GradMode) -> Bits {
    let inputs = job.inputs.as_inputs();
    let grad_out = tfla::MlstmGradOutputs {
        dh: &job.dh,
        dc: None,
        dn: None,
        dm: None,
    };
    let out = MlstmOutputs::alloc(rt, &job.dims, Dtype::Bf16, cfg).unwrap();
    let grads = MlstmGrads::alloc(rt, &inputs, cfg).unwrap();
    let fp = tfla::fwd_pointers(&inputs, &out);
    let bp = tfla::bwd_pointers(&inputs, &out, &grad_out, &grads);
    // SAFETY: every pointer is a live allocation shaped for `job.dims` (alloc above, inputs
    // uploaded for the same shape); nothing else uses them until the stream is synchronized.
    unsafe {
        tfla::mlstm_fwd_raw(rt, stream.as_inner(), &fp, job.dims, Dtype::Bf16, cfg).unwrap();
        tfla::mlstm_bwd_raw(rt, stream.as_inner(), &bp, job.dims, Dtype::Bf16, cfg, mode).unwrap();
    }
    stream.synchronize().unwrap();
    let mut all = vec![bits(&out.h), bits(&out.c), bits(&out.n), bits(&out.m)];
    all.extend([&grads.dq, &grads.dk, &grads.dv, &grads.di, &grads.df].map(bits));
    all
}

#[test]
#[ignore = "needs a GPU"]
fn threads_on_their_own_streams_equal_the_same_calls_in_turn() {
    let rt = runtime();
    let shapes = [
        Shape {
            b: 2,
            nh: 4,
            s: 1000,
            dqk: 128,
            dhv: 128,
        },
        Shape {
            b: 1,
            nh: 8,
            s: 777,
            dqk: 256,
            dhv: 512,
        },
        Shape {
            b: 3,
            nh: 2,
            s: 300,
            dqk: 64,
            dhv: 64,
        },
        Shape {
            b: 1,
            nh: 2,
            s: 2049,
            dqk: 512,
            dhv: 512,
        },
    ];
    let cases: Vec<(Shape, Variant, GradMode)> = shapes
        .iter()
        .zip([
            Variant::Exp,
            Variant::Sig { normalize: true },
            Variant::Sig { normalize: false },
            Variant::Exp,
        ])
        .zip([
            GradMode::Exact,
            GradMode::DetachedNormalizer,
            GradMode::Exact,
            GradMode::DetachedNormalizer,
        ])
        .map(|((&s, v), m)| (s, v, m))
        .collect();
    let jobs: Vec<Job> = cases
        .iter()
        .enumerate()
        .map(|(n, &(shape, ..))| job(&rt, shape, 1000 + n as u64))
        .collect();
    let cfgs: Vec<MlstmConfig> = cases
        .iter()
        .map(|&(_, variant, _)| MlstmConfig {
            row_stats: true,
            ..MlstmConfig::new(variant)
        })
        .collect();
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    // Warm-up (entry points looked up) and the results to match.
    let in_turn: Vec<Bits> = (0..jobs.len())
        .map(|n| run_on(&rt, &stream, &jobs[n], &cfgs[n], cases[n].2))
        .collect();
    const ROUNDS: usize = 5;
    // The baseline is taken after one round of the same threads: the driver keeps 2 MiB for
    // the first streams made on new threads (measured on an H100; not tfla's allocations).
    let mut start = 0;
    for pass in 0..2 {
        if pass == 1 {
            start = free_bytes();
        }
        threads(&rt, &jobs, &cfgs, &cases, &in_turn, ROUNDS);
    }
    rt.synchronize().unwrap();
    assert_eq!(free_bytes(), start, "device memory after the threads");
}

/// One thread per job, each on its own stream, `rounds` calls each: bit-equal to `in_turn`.
fn threads(
    rt: &Runtime,
    jobs: &[Job],
    cfgs: &[MlstmConfig],
    cases: &[(Shape, Variant, GradMode)],
    in_turn: &[Bits],
    rounds: usize,
) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs.len())
            .map(|n| {
                let (job, cfg, mode) = (&jobs[n], &cfgs[n], cases[n].2);
                scope.spawn(move || {
                    rt.make_current().unwrap();
                    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
                    (0..rounds)
                        .map(|_| run_on(rt, &stream, job, cfg, mode))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (n, h) in handles.into_iter().enumerate() {
            for (round, got) in h.join().unwrap().into_iter().enumerate() {
                assert!(
                    got == in_turn[n],
                    "case {n}, round {round}: results differ from in turn"
                );
            }
        }
    });
}

#[test]
#[ignore = "needs a GPU"]
fn state_pool_served_by_concurrent_requests_equals_requests_in_turn() {
    let rt = runtime();
    let (nh, dqk, dhv, slots) = (4, 128, 256, 16);
    let variant = Variant::Exp;
    let cfg = MlstmConfig::new(variant);
    let pool_of = |rt: &Runtime| StatePool::alloc_zeros(rt, slots, nh, dqk, dhv).unwrap();
    // Eight requests, each a B = 2 prefill into its own two slots.
    let reqs: Vec<(Job, Vec<u32>)> = (0..8u32)
        .map(|r| {
            let shape = Shape {
                b: 2,
                nh,
                s: 100 + 37 * r as usize,
                dqk,
                dhv,
            };
            (job(&rt, shape, 7 + r as u64), vec![2 * r, 2 * r + 1])
        })
        .collect();
    let serve = |rt: &Runtime, pool: &StatePool, (job, slots): &(Job, Vec<u32>)| {
        let slots = tfla::Slots::new(rt, slots).unwrap();
        let inputs = tfla::MlstmInputs {
            c0: None,
            n0: None,
            m0: None,
            ..job.inputs.as_inputs()
        }
        .with_pool(pool, &slots);
        let out = tfla::mlstm_fwd(rt, &inputs, &cfg).unwrap();
        rt.synchronize().unwrap();
        bits(&out.h)
    };
    let pool = pool_of(&rt);
    let in_turn: Vec<_> = reqs.iter().map(|r| serve(&rt, &pool, r)).collect();
    let want = [bits(&pool.c), bits(&pool.n), bits(&pool.m)];
    let pool = pool_of(&rt);
    let start = free_bytes();
    std::thread::scope(|scope| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (rt, pool) = (&rt, &pool);
                scope.spawn(move || {
                    rt.make_current().unwrap();
                    serve(rt, pool, r)
                })
            })
            .collect();
        for (n, h) in handles.into_iter().enumerate() {
            assert!(h.join().unwrap() == in_turn[n], "request {n}: h differs");
        }
    });
    assert!(
        [bits(&pool.c), bits(&pool.n), bits(&pool.m)] == want,
        "pool states differ"
    );
    assert_eq!(free_bytes(), start, "device memory after the requests");
}

#[test]
#[ignore = "needs a GPU"]
fn out_of_memory_mid_forward_backward_is_a_typed_error_and_the_runtime_recovers() {
    let rt = runtime();
    let shape = Shape {
        b: 4,
        nh: 8,
        s: 8192,
        dqk: 256,
        dhv: 512,
    };
    let big = job(&rt, shape, 3);
    let small = job(
        &rt,
        Shape {
            s: 512,
            b: 1,
            ..shape
        },
        4,
    );
    let cfg = MlstmConfig::new(Variant::Exp);
    fn dh(j: &Job) -> tfla::MlstmGradOutputs<'_> {
        tfla::MlstmGradOutputs {
            dh: &j.dh,
            dc: None,
            dn: None,
            dm: None,
        }
    }
    let grads_of = |j: &Job| {
        let (out, grads) =
            tfla::mlstm_fwd_bwd(&rt, &j.inputs.as_inputs(), &dh(j), &cfg, GradMode::Exact)?;
        rt.synchronize()?;
        Ok::<_, Error>((out.bytes(), grads.bytes(), bits(&grads.dq)))
    };
    // What one call allocates, then the baseline with nothing of it held.
    let (fwd_bytes, bwd_bytes, _) = grads_of(&big).unwrap();
    let want_small = grads_of(&small).unwrap().2;
    let start = free_bytes();
    // Leave room for the forward's outputs and half the backward's: the forward runs, the
    // backward's allocations fail part way.
    let room = fwd_bytes + bwd_bytes / 2;
    let ballast = start
        .checked_sub(room)
        .map(|n| cust::memory::DeviceBuffer::<u8>::zeroed(n).unwrap())
        .expect("the card holds one call");
    match grads_of(&big) {
        Err(Error::OutOfMemory { arg, bytes }) => {
            eprintln!("out of memory allocating `{arg}` ({bytes} bytes), as planned")
        }
        other => panic!(
            "expected Error::OutOfMemory, got {:?}",
            other.map(|r| (r.0, r.1))
        ),
    }
    // Usable at once, with the ballast still held: a smaller call gives the same bits.
    assert!(
        grads_of(&small).unwrap().2 == want_small,
        "small call after the failure"
    );
    drop(ballast);
    assert_eq!(
        free_bytes(),
        start,
        "nothing of the failed call is left allocated"
    );
}
