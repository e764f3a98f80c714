//! `tfla._tfla`: the Python extension over the `tfla` host crate.
//!
//! Buffers stay the caller's: the Python side (`tfla/torch/_ops.py`) allocates every output and
//! workspace tensor with PyTorch's allocator from the layouts these functions return, and
//! passes device addresses by name together with the CUDA stream to launch on (PyTorch's
//! current stream, in the device's primary context, which the runtime shares). Nothing here
//! allocates device memory. Errors keep the host's messages: `ValueError` for arguments,
//! `MemoryError` for out of memory, `RuntimeError` for the device and the driver.
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tfla::reference::{self, RefGradOutputs, RefInputs, RefParams, Shape};
use tfla::{
    BwdPointers, CUstream, Dims, Dtype, Error, FwdPointers, GradMode, MlstmConfig, Runtime,
    StepDims, StepPointers, Variant,
};
use tfla_params::PointerStruct;

fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NoDevice(_) | Error::Cuda { .. } | Error::Driver { .. } => {
            PyRuntimeError::new_err(msg)
        }
        Error::OutOfMemory { .. } => PyMemoryError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

fn invalid(arg: &str, value: impl std::fmt::Display, reason: &str) -> PyErr {
    PyValueError::new_err(format!("`{arg}` = {value} is invalid: {reason}"))
}

fn dtype(name: &str) -> PyResult<Dtype> {
    Dtype::parse(name).ok_or_else(|| invalid("dtype", name, "expected bf16, f16 or f32"))
}

fn variant(name: &str, normalize: bool) -> PyResult<Variant> {
    match (name, normalize) {
        ("exp", true) => Ok(Variant::Exp),
        ("exp", false) => Err(invalid(
            "normalize",
            false,
            "mLSTMexp is always normalized (its max state needs the normalizer)",
        )),
        ("sig", normalize) => Ok(Variant::Sig { normalize }),
        (other, _) => Err(invalid("variant", other, "expected \"exp\" or \"sig\"")),
    }
}

fn grad_mode(name: &str) -> PyResult<GradMode> {
    GradMode::parse(name)
        .ok_or_else(|| invalid("grad_mode", name, "expected \"exact\" or \"detached\""))
}

/// The forward configuration, as the Python side describes it. `chunk_size` 0 lets tfla
/// choose (the ops take a plain int, so that `torch.compile` traces them without calling
/// into the extension).
fn config(
    variant_name: &str,
    normalize: bool,
    eps: f32,
    chunk_size: usize,
    row_stats: bool,
) -> PyResult<MlstmConfig> {
    let mut cfg = MlstmConfig::new(variant(variant_name, normalize)?);
    cfg.eps = eps;
    cfg.chunk_size = (chunk_size != 0).then_some(chunk_size);
    cfg.row_stats = row_stats;
    Ok(cfg)
}

fn dims(b: usize, nh: usize, s: usize, dqk: usize, dhv: usize) -> PyResult<Dims> {
    let dims = Dims { b, nh, s, dqk, dhv };
    dims.validate().map_err(py_err)?;
    Ok(dims)
}

type Layout = Vec<(String, String, Vec<usize>)>;

/// The dims and a config of the layout and chunk-size queries: what they return depends on the
/// shape, the chunk size and `row_stats`, not on the variant or eps.
#[allow(clippy::too_many_arguments)]
fn shape_config(
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    chunk_size: usize,
    row_stats: bool,
) -> PyResult<(Dims, MlstmConfig)> {
    Ok((
        dims(b, nh, s, dqk, dhv)?,
        config("exp", true, 1e-6, chunk_size, row_stats)?,
    ))
}

/// The device of a plan = (shared memory per block, `wgmma`), as [`device_plan`] gives it.
fn plan_device(plan: (u32, bool)) -> tfla_params::Device {
    tfla_params::Device::new(plan.0, plan.1)
}

fn layout(entries: impl IntoIterator<Item = (&'static str, Dtype, Vec<usize>)>) -> Layout {
    entries
        .into_iter()
        .map(|(name, dt, shape)| (name.to_string(), dt.name().to_string(), shape))
        .collect()
}

/// The chunk size a call with these arguments runs (`chunk_size` validated, or chosen: 0),
/// for a forward alone or (`backward`) a forward with row statistics and its backward.
#[pyfunction]
#[pyo3(signature = (b, nh, s, dqk, dhv, chunk_size=0, backward=false))]
#[allow(clippy::too_many_arguments)]
fn chunk_size(
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    chunk_size: usize,
    backward: bool,
) -> PyResult<usize> {
    let (d, cfg) = shape_config(b, nh, s, dqk, dhv, chunk_size, backward)?;
    cfg.chunk_for(&d).map_err(py_err)
}

/// What the forward writes: [(name, dtype, shape)], `tfla::output_layout`.
#[pyfunction]
#[pyo3(signature = (b, nh, s, dqk, dhv, dtype, chunk_size, row_stats))]
#[allow(clippy::too_many_arguments)]
fn output_layout(
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    chunk_size: usize,
    row_stats: bool,
) -> PyResult<Layout> {
    let (d, cfg) = shape_config(b, nh, s, dqk, dhv, chunk_size, row_stats)?;
    let entries = tfla::output_layout(&d, self::dtype(dtype)?, &cfg, true).map_err(py_err)?;
    Ok(layout(entries))
}

/// What a forward needs beside its outputs on a device whose plan is `plan` (as
/// [`device_plan`] gives it): [(name, dtype, shape)], `tfla::forward_workspace_layout` (the
/// chunk states where the outputs leave them out but the device runs two kernels; else empty).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn forward_workspace_layout(
    plan: (u32, bool),
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    chunk_size: usize,
    row_stats: bool,
) -> PyResult<Layout> {
    let (d, cfg) = shape_config(b, nh, s, dqk, dhv, chunk_size, row_stats)?;
    let entries = tfla::forward_workspace_layout(&plan_device(plan), &d, self::dtype(dtype)?, &cfg)
        .map_err(py_err)?;
    Ok(layout(entries))
}

/// The backward's scratch: [(name, dtype, shape)], `tfla::workspace_layout`, for a device
/// whose plan is `plan` = (shared memory per block, `wgmma`), as [`device_plan`] gives it.
/// `chunk_size` 0 resolves as [`backward`] resolves it: as a forward with row statistics.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn workspace_layout(
    plan: (u32, bool),
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    chunk_size: usize,
) -> PyResult<Layout> {
    let (d, cfg) = shape_config(b, nh, s, dqk, dhv, chunk_size, true)?;
    let chunk = cfg.chunk_for(&d).map_err(py_err)?;
    Ok(layout(tfla::workspace_layout(
        &plan_device(plan),
        &d,
        self::dtype(dtype)?,
        chunk,
        1,
    )))
}

/// One runtime (module loaded, entry points cached) per device, shared by every call.
fn runtime(device: u32) -> PyResult<Arc<Runtime>> {
    static RUNTIMES: OnceLock<Mutex<HashMap<u32, Arc<Runtime>>>> = OnceLock::new();
    let mut map = RUNTIMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = map.get(&device) {
        rt.make_current().map_err(py_err)?;
        return Ok(rt.clone());
    }
    let rt = Arc::new(Runtime::with_device(device).map_err(py_err)?);
    map.insert(device, rt.clone());
    Ok(rt)
}

/// The name of `device` and the architecture of the PTX module its runtime runs (`sm_90a` on
/// Hopper, else `sm_80`; `TFLA_PORTABLE=1` forces `sm_80`).
#[pyfunction]
fn device_info(device: u32) -> PyResult<(String, String)> {
    let rt = runtime(device)?;
    let name = rt.device_name().map_err(py_err)?;
    Ok((name, rt.arch().name().to_string()))
}

/// What the launch plan knows of `device`: (shared memory per block, `wgmma`), the `plan`
/// [`workspace_layout`] takes.
#[pyfunction]
fn device_plan(device: u32) -> PyResult<(u32, bool)> {
    let dev = runtime(device)?.plan_device();
    Ok((dev.smem_optin, dev.wgmma))
}

/// The pass's pointer struct from device addresses by name: the names are those of the pass's
/// pointer list in `tfla_params` (one place), an unknown name is a `ValueError`.
fn named_pointers<T: PointerStruct>(map: &HashMap<String, u64>, of: &'static str) -> PyResult<T> {
    let (p, answered) = T::from_names(|name| map.get(name).copied());
    if answered < map.len() {
        let mut listed = Vec::new();
        T::each(&T::default(), &mut |p| listed.push(p.name));
        let unknown = map.keys().find(|k| !listed.contains(&k.as_str()));
        return Err(invalid("pointers", unknown.map_or("?", |k| k.as_str()), of));
    }
    Ok(p)
}

/// Runs `launch` with the runtime of `device` and the driver handle of `stream`, the GIL
/// released (the launches only queue work).
fn on_device(
    py: Python<'_>,
    device: u32,
    stream: usize,
    launch: impl FnOnce(&Runtime, CUstream) -> tfla::Result<()> + Send,
) -> PyResult<()> {
    let rt = runtime(device)?;
    // The handle crosses into the closure as an integer (a raw pointer is not Send).
    py.detach(|| launch(&rt, stream as CUstream))
        .map_err(py_err)
}

/// The forward pass on the caller's buffers (`pointers`: name → device address, 0 or absent
/// for an absent optional buffer), queued on `stream`.
///
/// Safety contract (kept by `tfla/torch/_ops.py`): every address is a live, contiguous
/// allocation of the device's primary context with the shape and dtype its layout gives.
#[pyfunction]
#[pyo3(signature = (device, stream, pointers, b, nh, s, dqk, dhv, dtype, variant, normalize, eps, chunk_size, row_stats))]
#[allow(clippy::too_many_arguments)]
fn forward(
    py: Python<'_>,
    device: u32,
    stream: usize,
    pointers: HashMap<String, u64>,
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    variant: &str,
    normalize: bool,
    eps: f32,
    chunk_size: usize,
    row_stats: bool,
) -> PyResult<()> {
    let ptrs = named_pointers::<FwdPointers>(&pointers, "not a buffer of FwdPointers")?;
    let cfg = config(variant, normalize, eps, chunk_size, row_stats)?;
    let d = dims(b, nh, s, dqk, dhv)?;
    let dt = self::dtype(dtype)?;
    // SAFETY: this function's contract.
    on_device(py, device, stream, |rt, st| unsafe {
        tfla::mlstm_fwd_raw(rt, st, &ptrs, d, dt, &cfg)
    })
}

/// The backward pass on the caller's buffers, queued on `stream` (contract as [`forward`];
/// the forward buffers hold what a forward with `row_stats` wrote for these inputs).
#[pyfunction]
#[pyo3(signature = (device, stream, pointers, b, nh, s, dqk, dhv, dtype, variant, normalize, eps, chunk_size, grad_mode))]
#[allow(clippy::too_many_arguments)]
fn backward(
    py: Python<'_>,
    device: u32,
    stream: usize,
    pointers: HashMap<String, u64>,
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    variant: &str,
    normalize: bool,
    eps: f32,
    chunk_size: usize,
    grad_mode: &str,
) -> PyResult<()> {
    let ptrs = named_pointers::<BwdPointers>(&pointers, "not a buffer of BwdPointers")?;
    let cfg = config(variant, normalize, eps, chunk_size, true)?;
    let d = dims(b, nh, s, dqk, dhv)?;
    let dt = self::dtype(dtype)?;
    let mode = self::grad_mode(grad_mode)?;
    // SAFETY: this function's contract.
    on_device(py, device, stream, |rt, st| unsafe {
        tfla::mlstm_bwd_raw(rt, st, &ptrs, d, dt, &cfg, mode)
    })
}

/// One generation step on the caller's buffers, the states updated in place, queued on
/// `stream` (contract as [`forward`]; `tiles_done` B·NH (pool: num_slots·NH) u32 zeros).
#[pyfunction]
#[pyo3(signature = (device, stream, pointers, b, nh, dqk, dhv, dtype, state_dtype, variant, normalize, eps))]
#[allow(clippy::too_many_arguments)]
fn step(
    py: Python<'_>,
    device: u32,
    stream: usize,
    pointers: HashMap<String, u64>,
    b: usize,
    nh: usize,
    dqk: usize,
    dhv: usize,
    dtype: &str,
    state_dtype: &str,
    variant: &str,
    normalize: bool,
    eps: f32,
) -> PyResult<()> {
    let ptrs = named_pointers::<StepPointers>(&pointers, "not a buffer of StepPointers")?;
    let cfg = config(variant, normalize, eps, 0, false)?;
    let sd = StepDims { b, nh, dqk, dhv };
    sd.validate().map_err(py_err)?;
    let (dt, st) = (self::dtype(dtype)?, self::dtype(state_dtype)?);
    // SAFETY: this function's contract.
    on_device(py, device, stream, |rt, stream| unsafe {
        tfla::mlstm_step_raw(rt, stream, &ptrs, sd, dt, st, &cfg)
    })
}

/// Checks a state-pool slot list on the host: every slot below `num_slots`, none twice.
#[pyfunction]
fn check_slots(slots: Vec<u32>, batch: usize, num_slots: usize) -> PyResult<()> {
    tfla::check_slots(&slots, batch, num_slots).map_err(py_err)
}

// ---------------------------------------------------------------- the float64 reference

/// float64 values from little-endian bytes, `expected` of them.
fn f64s(arg: &str, bytes: &[u8], expected: usize) -> PyResult<Vec<f64>> {
    if bytes.len() != expected * 8 {
        return Err(invalid(
            arg,
            format!("{} float64 values", bytes.len() / 8),
            &format!("expected {expected}"),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn opt_f64s(arg: &str, bytes: Option<&[u8]>, expected: usize) -> PyResult<Option<Vec<f64>>> {
    bytes.map(|b| f64s(arg, b, expected)).transpose()
}

fn to_bytes<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyBytes> {
    let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    PyBytes::new(py, &raw)
}

#[allow(clippy::too_many_arguments)]
fn ref_inputs(
    shape: (usize, usize, usize, usize, usize),
    q: &[u8],
    k: &[u8],
    v: &[u8],
    i: &[u8],
    f: &[u8],
    c0: Option<&[u8]>,
    n0: Option<&[u8]>,
    m0: Option<&[u8]>,
) -> PyResult<RefInputs> {
    let (b, nh, s, dqk, dhv) = shape;
    if dqk == 0 || dhv == 0 {
        return Err(invalid(
            "shape",
            format!("{shape:?}"),
            "head dims must be positive",
        ));
    }
    let bh = b * nh;
    Ok(RefInputs {
        shape: Shape { b, nh, s, dqk, dhv },
        q: f64s("q", q, bh * s * dqk)?,
        k: f64s("k", k, bh * s * dqk)?,
        v: f64s("v", v, bh * s * dhv)?,
        i: f64s("i", i, bh * s)?,
        f: f64s("f", f, bh * s)?,
        c0: opt_f64s("c_initial", c0, bh * dqk * dhv)?,
        n0: opt_f64s("n_initial", n0, bh * dqk)?,
        m0: opt_f64s("m_initial", m0, bh)?,
    })
}

fn ref_params(
    variant_name: &str,
    normalize: bool,
    eps: f64,
    scale: Option<f64>,
    dqk: usize,
) -> PyResult<RefParams> {
    let mut p = RefParams::new(variant(variant_name, normalize)?, dqk);
    p.eps = eps;
    if let Some(scale) = scale {
        p.scale = scale;
    }
    Ok(p)
}

/// The float64 forward (the recurrence, step by step) on little-endian float64 bytes of
/// contiguous (B, NH, S, ·) tensors: returns the bytes of h, c, n, m.
#[pyfunction]
#[pyo3(signature = (shape, q, k, v, i, f, c0, n0, m0, variant, normalize, eps, scale))]
#[allow(clippy::too_many_arguments)]
fn reference_forward<'py>(
    py: Python<'py>,
    shape: (usize, usize, usize, usize, usize),
    q: &[u8],
    k: &[u8],
    v: &[u8],
    i: &[u8],
    f: &[u8],
    c0: Option<&[u8]>,
    n0: Option<&[u8]>,
    m0: Option<&[u8]>,
    variant: &str,
    normalize: bool,
    eps: f64,
    scale: Option<f64>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let inp = ref_inputs(shape, q, k, v, i, f, c0, n0, m0)?;
    let p = ref_params(variant, normalize, eps, scale, shape.3)?;
    let out = py.detach(|| reference::recurrent(&inp, &p));
    Ok([&out.h, &out.c, &out.n, &out.m]
        .map(|t| to_bytes(py, t))
        .into())
}

/// The float64 backward (the reverse recurrence) on float64 bytes: returns the bytes of dq,
/// dk, dv, di, df, dc0, dn0, dm0. `dh` as h; `dc`, `dn`, `dm` the final states' gradients.
#[pyfunction]
#[pyo3(signature = (shape, q, k, v, i, f, c0, n0, m0, dh, dc, dn, dm, variant, normalize, eps, scale, grad_mode))]
#[allow(clippy::too_many_arguments)]
fn reference_backward<'py>(
    py: Python<'py>,
    shape: (usize, usize, usize, usize, usize),
    q: &[u8],
    k: &[u8],
    v: &[u8],
    i: &[u8],
    f: &[u8],
    c0: Option<&[u8]>,
    n0: Option<&[u8]>,
    m0: Option<&[u8]>,
    dh: &[u8],
    dc: Option<&[u8]>,
    dn: Option<&[u8]>,
    dm: Option<&[u8]>,
    variant: &str,
    normalize: bool,
    eps: f64,
    scale: Option<f64>,
    grad_mode: &str,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let inp = ref_inputs(shape, q, k, v, i, f, c0, n0, m0)?;
    let p = ref_params(variant, normalize, eps, scale, shape.3)?;
    let (b, nh, s, dqk, dhv) = shape;
    let bh = b * nh;
    let g = RefGradOutputs {
        dh: f64s("dh", dh, bh * s * dhv)?,
        dc: opt_f64s("dc", dc, bh * dqk * dhv)?,
        dn: opt_f64s("dn", dn, bh * dqk)?,
        dm: opt_f64s("dm", dm, bh)?,
    };
    let mode = self::grad_mode(grad_mode)?;
    let grads = py.detach(|| reference::backward(&inp, &p, &g, mode));
    Ok([
        &grads.dq, &grads.dk, &grads.dv, &grads.di, &grads.df, &grads.dc0, &grads.dn0, &grads.dm0,
    ]
    .map(|t| to_bytes(py, t))
    .into())
}

#[pymodule]
fn _tfla(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PTX_ARCHES", vec!["sm_90a", "sm_80"])?;
    m.add(
        "LIMIT_SETS",
        tfla_params::Device::LIMIT_SETS
            .iter()
            .map(|d| (d.smem_optin, d.wgmma))
            .collect::<Vec<_>>(),
    )?;
    m.add("CHUNK_SIZES", tfla_params::CHUNK_SIZES.to_vec())?;
    m.add_function(wrap_pyfunction!(chunk_size, m)?)?;
    m.add_function(wrap_pyfunction!(output_layout, m)?)?;
    m.add_function(wrap_pyfunction!(forward_workspace_layout, m)?)?;
    m.add_function(wrap_pyfunction!(workspace_layout, m)?)?;
    m.add_function(wrap_pyfunction!(device_info, m)?)?;
    m.add_function(wrap_pyfunction!(device_plan, m)?)?;
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(step, m)?)?;
    m.add_function(wrap_pyfunction!(check_slots, m)?)?;
    m.add_function(wrap_pyfunction!(reference_forward, m)?)?;
    m.add_function(wrap_pyfunction!(reference_backward, m)?)?;
    Ok(())
}
