//! The forward pass's inputs: borrowed ([`MlstmInputs`]), checked once ([`CheckedInputs`]),
//! or owned ([`DeviceInputs`]).
use crate::config::Dims;
use crate::error::{Error, Result};
use crate::slots::{PoolSlots, Slots, StatePool};
use crate::tensor::{Dtype, Tensor, expect_dtype, expect_shape};

/// The forward pass's inputs.
#[derive(Clone, Copy)]
pub struct MlstmInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// Input-gate pre-activations ĩ.
    pub i: &'a Tensor,
    /// Forget-gate pre-activations f̃.
    pub f: &'a Tensor,
    pub c0: Option<&'a Tensor>,
    pub n0: Option<&'a Tensor>,
    /// Initial max state (mLSTMexp only; ignored by mLSTMsig, which has none).
    pub m0: Option<&'a Tensor>,
    /// A state pool and the slot of each batch row, instead of c0, n0, m0 (giving both is an
    /// error): the initial states come from the rows' slots and the final states overwrite
    /// them, in place through this shared borrow (device memory, like every tensor a kernel
    /// writes). Nothing else may use those slots until the forward's kernels have run.
    pub pool: Option<PoolSlots<'a>>,
}

impl<'a> MlstmInputs<'a> {
    /// Inputs without initial states.
    pub fn new(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, i: &'a Tensor, f: &'a Tensor) -> Self {
        MlstmInputs {
            q,
            k,
            v,
            i,
            f,
            c0: None,
            n0: None,
            m0: None,
            pool: None,
        }
    }

    /// These inputs with a state pool: batch row b starts from slot `slots[b]` of `pool` and
    /// its final states overwrite that slot.
    pub fn with_pool(self, pool: &'a StatePool, slots: &'a Slots) -> Self {
        MlstmInputs {
            pool: Some(PoolSlots { pool, slots }),
            ..self
        }
    }

    /// The device addresses of q, k, v, ĩ, f̃, c0, n0, m0 (0 for an absent initial state), as
    /// the forward's and the backward's pointer lists take them.
    pub(crate) fn device_ptrs(&self) -> [u64; 8] {
        let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
        [
            self.q.device_ptr(),
            self.k.device_ptr(),
            self.v.device_ptr(),
            self.i.device_ptr(),
            self.f.device_ptr(),
            ptr(self.c0),
            ptr(self.n0),
            ptr(self.m0),
        ]
    }

    /// Checks every shape and dtype once; the passes below the public entry points take the
    /// result instead of checking again.
    pub fn check(&self) -> Result<CheckedInputs<'a>> {
        Ok(CheckedInputs {
            inputs: *self,
            dims: self.dims()?,
            dtype: self.q.dtype(),
        })
    }

    /// Dimensions implied by the inputs, after checking every shape and dtype.
    pub fn dims(&self) -> Result<Dims> {
        let q = self.q.shape();
        if q.len() != 4 {
            return Err(Error::Invalid {
                arg: "q",
                value: format!("shape {q:?}"),
                reason: "expected rank 4: (B, NH, S, DQK)",
            });
        }
        let v = self.v.shape();
        let dhv = if v.len() == 4 { v[3] } else { 0 };
        let dims = Dims {
            b: q[0],
            nh: q[1],
            s: q[2],
            dqk: q[3],
            dhv,
        };
        dims.validate()?;
        let (b, nh, s) = (dims.b, dims.nh, dims.s);
        expect_shape("k", self.k, &[b, nh, s, dims.dqk])?;
        expect_shape("v", self.v, &[b, nh, s, dims.dhv])?;
        expect_shape("i", self.i, &[b, nh, s])?;
        expect_shape("f", self.f, &[b, nh, s])?;
        let dtype = self.q.dtype();
        for (arg, t) in [("k", self.k), ("v", self.v)] {
            expect_dtype(arg, t, dtype)?;
        }
        for (arg, t) in [
            ("i", Some(self.i)),
            ("f", Some(self.f)),
            ("c0", self.c0),
            ("n0", self.n0),
            ("m0", self.m0),
        ] {
            if let Some(t) = t {
                expect_dtype(arg, t, Dtype::F32)?;
            }
        }
        if let Some(c0) = self.c0 {
            expect_shape("c0", c0, &[b, nh, dims.dqk, dims.dhv])?;
        }
        if let Some(n0) = self.n0 {
            expect_shape("n0", n0, &[b, nh, dims.dqk])?;
        }
        if let Some(m0) = self.m0 {
            expect_shape("m0", m0, &[b, nh])?;
        }
        if let Some(pool) = &self.pool {
            let given: Vec<&str> = [("c0", self.c0), ("n0", self.n0), ("m0", self.m0)]
                .iter()
                .filter_map(|(name, t)| t.map(|_| *name))
                .collect();
            if !given.is_empty() {
                return Err(Error::Invalid {
                    arg: "pool",
                    value: format!("given with {}", given.join(", ")),
                    reason: "the pool supplies the initial states: give a pool or c0, n0, m0, \
                             not both",
                });
            }
            pool.check(b, nh, dims.dqk, dims.dhv)?;
        }
        Ok(dims)
    }
}

/// Inputs whose shapes and dtypes [`MlstmInputs::check`] has checked, with the dimensions and
/// the input dtype they imply.
#[derive(Clone, Copy)]
pub struct CheckedInputs<'a> {
    inputs: MlstmInputs<'a>,
    dims: Dims,
    dtype: Dtype,
}

impl<'a> CheckedInputs<'a> {
    pub fn inputs(&self) -> &MlstmInputs<'a> {
        &self.inputs
    }
    pub fn dims(&self) -> Dims {
        self.dims
    }
    /// The dtype of q, k, v.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// Owned device tensors for the forward pass's inputs (what [`MlstmInputs`] borrows), for
/// callers that upload host data: the file entry (`io`) and the tests.
#[derive(Debug)]
pub struct DeviceInputs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub i: Tensor,
    pub f: Tensor,
    pub c0: Option<Tensor>,
    pub n0: Option<Tensor>,
    pub m0: Option<Tensor>,
}

impl DeviceInputs {
    /// The borrowed view the forward calls take.
    pub fn as_inputs(&self) -> MlstmInputs<'_> {
        MlstmInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            i: &self.i,
            f: &self.f,
            c0: self.c0.as_ref(),
            n0: self.n0.as_ref(),
            m0: self.m0.as_ref(),
            pool: None,
        }
    }
}
