//! `.safetensors` files in and out: how users and other languages hand tfla inputs and check
//! its outputs against their own references (`tfla-fwd`, the command-line entry).
//!
//! Input file: `q`, `k` (B, NH, S, DQK), `v` (B, NH, S, DHV), `i`, `f` (B, NH, S), optionally
//! `c0` (B, NH, DQK, DHV), `n0` (B, NH, DQK), `m0` (B, NH); any of bf16, f16, f32. Output file:
//! `h` (B, NH, S, DHV) in the compute dtype, `c`, `n`, `m` (final states) in f32, with the
//! variant, chunk size, eps and dtype in the metadata.
//!
//! With `dh` (B, NH, S, DHV) in the input file (and optionally the final-state gradients `dc`
//! (B, NH, DQK, DHV), `dn` (B, NH, DQK), `dm` (B, NH)), [`run_file`] also runs the backward pass
//! and writes `dq`, `dk`, `dv` (compute dtype), `di`, `df` and, for the initial states the file
//! has, `dc0`, `dn0`, `dm0` (f32); the gradient mode goes into the metadata.
use crate::backward::{MlstmGradOutputs, mlstm_fwd_bwd};
use crate::config::MlstmConfig;
use crate::error::{Error, Result};
use crate::forward::{DeviceInputs, MlstmOutputs, mlstm_fwd};
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor};
use crate::variant::GradMode;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// A tensor on the host: its values (exact as f32 for every supported dtype), shape, and the
/// dtype it had in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The forward pass's inputs as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct FileInputs {
    pub q: HostTensor,
    pub k: HostTensor,
    pub v: HostTensor,
    pub i: HostTensor,
    pub f: HostTensor,
    pub c0: Option<HostTensor>,
    pub n0: Option<HostTensor>,
    pub m0: Option<HostTensor>,
    /// Upstream gradients: with `dh` the file asks for the backward pass.
    pub dh: Option<HostTensor>,
    pub dc: Option<HostTensor>,
    pub dn: Option<HostTensor>,
    pub dm: Option<HostTensor>,
}

/// Owned device copies of the upstream gradients of a file.
struct DeviceGradOutputs {
    dh: Tensor,
    dc: Option<Tensor>,
    dn: Option<Tensor>,
    dm: Option<Tensor>,
}

impl DeviceGradOutputs {
    fn as_grad_outputs(&self) -> MlstmGradOutputs<'_> {
        MlstmGradOutputs {
            dh: &self.dh,
            dc: self.dc.as_ref(),
            dn: self.dn.as_ref(),
            dm: self.dm.as_ref(),
        }
    }
}

impl FileInputs {
    /// Uploads q, k, v as `dtype` (values rounded to it) and everything else as f32.
    pub fn upload(&self, rt: &Runtime, dtype: Dtype) -> Result<DeviceInputs> {
        let up = |t: &HostTensor, dt: Dtype| Tensor::from_f32_as(rt, dt, &t.data, &t.shape);
        let opt = |t: &Option<HostTensor>| t.as_ref().map(|t| up(t, Dtype::F32)).transpose();
        Ok(DeviceInputs {
            q: up(&self.q, dtype)?,
            k: up(&self.k, dtype)?,
            v: up(&self.v, dtype)?,
            i: up(&self.i, Dtype::F32)?,
            f: up(&self.f, Dtype::F32)?,
            c0: opt(&self.c0)?,
            n0: opt(&self.n0)?,
            m0: opt(&self.m0)?,
        })
    }

    /// Uploads the upstream gradients (dh as `dtype`, the rest as f32), or `None` without `dh`.
    fn upload_grads(&self, rt: &Runtime, dtype: Dtype) -> Result<Option<DeviceGradOutputs>> {
        let up = |t: &HostTensor, dt: Dtype| Tensor::from_f32_as(rt, dt, &t.data, &t.shape);
        let opt = |t: &Option<HostTensor>| t.as_ref().map(|t| up(t, Dtype::F32)).transpose();
        let Some(dh) = &self.dh else {
            return Ok(None);
        };
        Ok(Some(DeviceGradOutputs {
            dh: up(dh, dtype)?,
            dc: opt(&self.dc)?,
            dn: opt(&self.dn)?,
            dm: opt(&self.dm)?,
        }))
    }
}

fn file_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn decode(path: &Path, name: &str, view: &TensorView<'_>) -> Result<HostTensor> {
    let bytes = view.data();
    let (dtype, data) = match view.dtype() {
        StDtype::BF16 => (
            Dtype::Bf16,
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        StDtype::F16 => (
            Dtype::F16,
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        StDtype::F32 => (
            Dtype::F32,
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        other => {
            return Err(file_err(
                path,
                format!("tensor `{name}` has dtype {other:?}; expected BF16, F16 or F32"),
            ));
        }
    };
    Ok(HostTensor {
        dtype,
        shape: view.shape().to_vec(),
        data,
    })
}

/// Reads and checks an input file: required tensors present, float dtypes, ranks right.
/// Shapes across tensors are checked by the forward pass itself (with typed errors).
pub fn read_inputs(path: &Path) -> Result<FileInputs> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(path, format!("not a valid .safetensors file: {e}")))?;
    let get = |name: &str, rank: usize, required: bool| -> Result<Option<HostTensor>> {
        let view = match st.tensor(name) {
            Ok(v) => v,
            Err(_) if !required => return Ok(None),
            Err(_) => {
                let found: Vec<&String> = st.names();
                return Err(file_err(
                    path,
                    format!("missing tensor `{name}` (found: {found:?})"),
                ));
            }
        };
        let t = decode(path, name, &view)?;
        if t.shape.len() != rank {
            return Err(file_err(
                path,
                format!(
                    "tensor `{name}` has shape {:?}; expected rank {rank}",
                    t.shape
                ),
            ));
        }
        Ok(Some(t))
    };
    let need = |name: &str, rank: usize| -> Result<HostTensor> {
        get(name, rank, true)?.ok_or_else(|| file_err(path, format!("missing tensor `{name}`")))
    };
    Ok(FileInputs {
        q: need("q", 4)?,
        k: need("k", 4)?,
        v: need("v", 4)?,
        i: need("i", 3)?,
        f: need("f", 3)?,
        c0: get("c0", 4, false)?,
        n0: get("n0", 3, false)?,
        m0: get("m0", 2, false)?,
        dh: get("dh", 4, false)?,
        dc: get("dc", 4, false)?,
        dn: get("dn", 3, false)?,
        dm: get("dm", 2, false)?,
    })
}

/// Writes f32 host tensors (each stored in its `dtype`) plus string metadata.
pub fn write_tensors(
    path: &Path,
    tensors: &[(&str, HostTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let encoded: Vec<(&str, StDtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dt, bytes) = match t.dtype {
                Dtype::Bf16 => (
                    StDtype::BF16,
                    t.data
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                Dtype::F16 => (
                    StDtype::F16,
                    t.data
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                Dtype::F32 => (
                    StDtype::F32,
                    t.data.iter().flat_map(|&x| x.to_le_bytes()).collect(),
                ),
            };
            (*name, dt, t.shape.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| file_err(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| file_err(path, e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| file_err(path, e.to_string()))
}

/// Runs the forward pass on a file's inputs and writes `h` and the final states. q, k, v are
/// computed in `dtype` (bf16 or f16 on the tensor cores, values from the file rounded to it; or
/// f32 through the f32 recurrence); gates and states in f32. Upstream gradients in the file
/// are ignored (see [`run_file`]).
pub fn run_forward_file(
    rt: &Runtime,
    input: &Path,
    output: &Path,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<()> {
    let file = FileInputs {
        dh: None,
        ..read_inputs(input)?
    };
    run(rt, &file, output, dtype, cfg, None)
}

/// [`run_forward_file`], and when the file holds `dh` also the backward pass in `mode` (16-bit
/// `dtype` only), writing the gradients next to the forward's outputs.
pub fn run_file(
    rt: &Runtime,
    input: &Path,
    output: &Path,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<()> {
    run(rt, &read_inputs(input)?, output, dtype, cfg, Some(mode))
}

fn run(
    rt: &Runtime,
    file: &FileInputs,
    output: &Path,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: Option<GradMode>,
) -> Result<()> {
    let dev = file.upload(rt, dtype)?;
    let inputs = dev.as_inputs();
    let grads_in = match mode {
        Some(_) => file.upload_grads(rt, dtype)?,
        None => None,
    };
    let host = |t: &Tensor, dt: Dtype| -> Result<HostTensor> {
        Ok(HostTensor {
            dtype: dt,
            shape: t.shape().to_vec(),
            data: t.to_f32_vec()?,
        })
    };
    let variant = match cfg.variant {
        crate::Variant::Exp => "exp",
        crate::Variant::Sig { normalize: true } => "sig",
        crate::Variant::Sig { normalize: false } => "sig_nonorm",
    };
    let mut metadata = HashMap::from([
        ("variant".to_string(), variant.to_string()),
        ("eps".to_string(), cfg.eps.to_string()),
        ("dtype".to_string(), dtype.name().to_string()),
    ]);
    let (out, grads) = match (&grads_in, mode) {
        (Some(g), Some(mode)) => {
            let (out, grads) = mlstm_fwd_bwd(rt, &inputs, &g.as_grad_outputs(), cfg, mode)?;
            metadata.insert("grad_mode".to_string(), mode.name().to_string());
            (out, Some(grads))
        }
        _ => (mlstm_fwd(rt, &inputs, cfg)?, None),
    };
    rt.synchronize()?;
    // The chunk size that ran: with `dh` the forward ran before a backward, whose automatic L
    // can differ from a forward alone's (`select_chunk_size`).
    metadata.insert("chunk".to_string(), out.states.chunk_size.to_string());
    let MlstmOutputs { h, c, n, m, .. } = &out;
    let mut tensors = vec![
        ("h", host(h, dtype)?),
        ("c", host(c, Dtype::F32)?),
        ("n", host(n, Dtype::F32)?),
        ("m", host(m, Dtype::F32)?),
    ];
    if let Some(g) = &grads {
        tensors.extend([
            ("dq", host(&g.dq, dtype)?),
            ("dk", host(&g.dk, dtype)?),
            ("dv", host(&g.dv, dtype)?),
            ("di", host(&g.di, Dtype::F32)?),
            ("df", host(&g.df, Dtype::F32)?),
        ]);
        for (name, t) in [("dc0", &g.dc0), ("dn0", &g.dn0), ("dm0", &g.dm0)] {
            if let Some(t) = t {
                tensors.push((name, host(t, Dtype::F32)?));
            }
        }
    }
    write_tensors(output, &tensors, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: Dtype, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor {
            dtype,
            shape: shape.to_vec(),
            data: (0..n).map(|x| (x % 7) as f32 - 3.0).collect(),
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tfla-io-{}-{name}.safetensors", std::process::id()))
    }

    fn valid(dtype: Dtype) -> Vec<(&'static str, HostTensor)> {
        vec![
            ("q", t(dtype, &[1, 2, 5, 16])),
            ("k", t(dtype, &[1, 2, 5, 16])),
            ("v", t(dtype, &[1, 2, 5, 32])),
            ("i", t(Dtype::F32, &[1, 2, 5])),
            ("f", t(Dtype::F32, &[1, 2, 5])),
        ]
    }

    #[test]
    fn round_trips_every_dtype() {
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            let path = tmp(dtype.name());
            let mut tensors = valid(dtype);
            tensors.push(("m0", t(Dtype::F32, &[1, 2])));
            write_tensors(&path, &tensors, HashMap::new()).unwrap();
            let back = read_inputs(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(back.q, tensors[0].1);
            assert_eq!(back.v, tensors[2].1);
            assert_eq!(back.m0.as_ref(), Some(&tensors[5].1));
            assert!(back.c0.is_none() && back.n0.is_none());
            assert!(back.dh.is_none() && back.dc.is_none());
        }
    }

    #[test]
    fn reads_upstream_gradients_when_present() {
        let path = tmp("grads");
        let mut tensors = valid(Dtype::Bf16);
        tensors.push(("dh", t(Dtype::Bf16, &[1, 2, 5, 32])));
        tensors.push(("dm", t(Dtype::F32, &[1, 2])));
        write_tensors(&path, &tensors, HashMap::new()).unwrap();
        let back = read_inputs(&path).unwrap();
        assert_eq!(back.dh.as_ref(), Some(&tensors[5].1));
        assert_eq!(back.dm.as_ref(), Some(&tensors[6].1));
        assert!(back.dc.is_none() && back.dn.is_none());
        let mut bad = valid(Dtype::Bf16);
        bad.push(("dh", t(Dtype::Bf16, &[2, 5, 32])));
        write_tensors(&path, &bad, HashMap::new()).unwrap();
        let err = read_inputs(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.contains("tensor `dh` has shape [2, 5, 32]; expected rank 4"),
            "{err}"
        );
    }

    #[test]
    fn rejects_malformed_files_with_a_clear_message() {
        let check = |name: &str, tensors: Vec<(&str, HostTensor)>, expect: &str| {
            let path = tmp(name);
            write_tensors(&path, &tensors, HashMap::new()).unwrap();
            let err = read_inputs(&path).unwrap_err().to_string();
            std::fs::remove_file(&path).unwrap();
            assert!(err.contains(expect), "{name}: {err}");
        };
        let mut missing = valid(Dtype::Bf16);
        missing.remove(3);
        check("missing", missing, "missing tensor `i`");
        let mut rank = valid(Dtype::Bf16);
        rank[4].1 = t(Dtype::F32, &[2, 5]);
        check("rank", rank, "tensor `f` has shape [2, 5]; expected rank 3");

        let path = tmp("garbage");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = read_inputs(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("not a valid .safetensors file"), "{err}");
        let err = read_inputs(Path::new("/nonexistent/tfla.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tfla.safetensors"), "{err}");
    }

    #[test]
    fn rejects_integer_tensors() {
        let path = tmp("int");
        let (ints, floats) = (vec![0u8; 4 * 160], vec![0u8; 4 * 320]);
        let views = [
            (
                "q",
                TensorView::new(StDtype::I32, vec![1, 2, 5, 16], &ints).unwrap(),
            ),
            (
                "k",
                TensorView::new(StDtype::F32, vec![1, 2, 5, 16], &ints).unwrap(),
            ),
            (
                "v",
                TensorView::new(StDtype::F32, vec![1, 2, 5, 32], &floats).unwrap(),
            ),
            (
                "i",
                TensorView::new(StDtype::F32, vec![1, 2, 5], &ints[..40]).unwrap(),
            ),
            (
                "f",
                TensorView::new(StDtype::F32, vec![1, 2, 5], &ints[..40]).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
        let err = read_inputs(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("tensor `q` has dtype I32"), "{err}");
    }
}
