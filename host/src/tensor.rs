//! Contiguous, row-major device tensors of bf16, f16 or f32. 16-bit elements travel as their
//! bits (`u16`), so the public API uses `half` 2 while cust is built against its own `half`.
pub use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceCopy};
use half::{bf16, f16};

enum Storage {
    Bits16(DeviceBuffer<u16>),
    F32(DeviceBuffer<f32>),
}

/// A device tensor. Its memory is allocated with `cuMemAlloc`, so its base is 256-byte aligned.
pub struct Tensor {
    storage: Storage,
    dtype: Dtype,
    shape: Vec<usize>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub(crate) fn alloc<T: DeviceCopy>(arg: &'static str, n: usize) -> Result<DeviceBuffer<T>> {
    // SAFETY: the buffer is written (upload, fill or kernel) before it is read through this API;
    // `Tensor::uninit` documents that its contents are unspecified.
    unsafe { DeviceBuffer::uninitialized(n.max(1)) }.map_err(|e| match e {
        cust::error::CudaError::OutOfMemory => Error::OutOfMemory {
            arg,
            bytes: n * std::mem::size_of::<T>(),
        },
        e => Error::cuda("cuMemAlloc")(e),
    })
}

/// Copies `data` into the front of `buf` (nothing for empty data), complete when it returns:
/// from pageable memory cuMemcpyHtoD may return before its DMA lands, ordered only with the
/// legacy default stream, not with the runtime's non-blocking one.
pub(crate) fn upload<T: DeviceCopy>(buf: &mut DeviceBuffer<T>, data: &[T]) -> Result<()> {
    if !data.is_empty() {
        buf.index(..data.len())
            .copy_from(data)
            .map_err(Error::cuda("cuMemcpyHtoD"))?;
        cust::context::CurrentContext::synchronize().map_err(Error::cuda("cuCtxSynchronize"))?;
    }
    Ok(())
}

impl Tensor {
    /// A tensor with unspecified contents.
    pub fn uninit(_rt: &Runtime, dtype: Dtype, shape: &[usize]) -> Result<Self> {
        let n = numel(shape);
        let storage = match dtype {
            Dtype::F32 => Storage::F32(alloc("tensor", n)?),
            _ => Storage::Bits16(alloc("tensor", n)?),
        };
        Ok(Tensor {
            storage,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(rt: &Runtime, dtype: Dtype, shape: &[usize]) -> Result<Self> {
        let mut t = Self::uninit(rt, dtype, shape)?;
        t.fill_zero()?;
        Ok(t)
    }

    fn check_len(arg: &'static str, len: usize, shape: &[usize]) -> Result<()> {
        if len != numel(shape) {
            return Err(Error::Invalid {
                arg,
                value: format!("{len} elements"),
                reason: "the data length must equal the product of the shape",
            });
        }
        Ok(())
    }

    pub fn from_bf16(rt: &Runtime, data: &[bf16], shape: &[usize]) -> Result<Self> {
        Self::check_len("data", data.len(), shape)?;
        let bits: Vec<u16> = data.iter().map(|x| x.to_bits()).collect();
        Self::from_bits(rt, Dtype::Bf16, &bits, shape)
    }

    pub fn from_f16(rt: &Runtime, data: &[f16], shape: &[usize]) -> Result<Self> {
        Self::check_len("data", data.len(), shape)?;
        let bits: Vec<u16> = data.iter().map(|x| x.to_bits()).collect();
        Self::from_bits(rt, Dtype::F16, &bits, shape)
    }

    pub fn from_f32(rt: &Runtime, data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::check_len("data", data.len(), shape)?;
        let mut t = Self::uninit(rt, Dtype::F32, shape)?;
        if let Storage::F32(b) = &mut t.storage {
            upload(b, data)?;
        }
        Ok(t)
    }

    /// Uploads f32 values converted (round to nearest even) to `dtype`.
    pub fn from_f32_as(rt: &Runtime, dtype: Dtype, data: &[f32], shape: &[usize]) -> Result<Self> {
        match dtype {
            Dtype::F32 => Self::from_f32(rt, data, shape),
            Dtype::Bf16 => {
                let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                Self::from_bf16(rt, &v, shape)
            }
            Dtype::F16 => {
                let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Self::from_f16(rt, &v, shape)
            }
        }
    }

    fn from_bits(rt: &Runtime, dtype: Dtype, bits: &[u16], shape: &[usize]) -> Result<Self> {
        let mut t = Self::uninit(rt, dtype, shape)?;
        if let Storage::Bits16(b) = &mut t.storage {
            upload(b, bits)?;
        }
        Ok(t)
    }

    /// Copies the tensor to the host as f32 (exact for every dtype), after every kernel queued
    /// so far has finished (cuMemcpyDtoH is ordered with the legacy default stream only, not
    /// with the runtime's non-blocking one).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        cust::context::CurrentContext::synchronize().map_err(Error::cuda("cuCtxSynchronize"))?;
        let n = self.numel();
        match &self.storage {
            Storage::F32(b) => {
                let mut v = vec![0f32; n];
                if n > 0 {
                    b.index(..n)
                        .copy_to(&mut v[..])
                        .map_err(Error::cuda("cuMemcpyDtoH"))?;
                }
                Ok(v)
            }
            Storage::Bits16(b) => {
                let mut bits = vec![0u16; n];
                if n > 0 {
                    b.index(..n)
                        .copy_to(&mut bits[..])
                        .map_err(Error::cuda("cuMemcpyDtoH"))?;
                }
                Ok(match self.dtype {
                    Dtype::Bf16 => bits.iter().map(|&x| bf16::from_bits(x).to_f32()).collect(),
                    _ => bits.iter().map(|&x| f16::from_bits(x).to_f32()).collect(),
                })
            }
        }
    }

    /// Fills every element with NaN (tests poison outputs before a launch with it). Complete
    /// when it returns.
    pub fn fill_nan(&mut self) -> Result<()> {
        let bits = match self.dtype {
            Dtype::Bf16 => 0x7fc0,
            Dtype::F16 => 0x7e00,
            Dtype::F32 => 0x7fc0_0000,
        };
        self.fill_bits(bits)
    }

    /// Fills every element with zeros. Complete when it returns.
    pub fn fill_zero(&mut self) -> Result<()> {
        self.fill_bits(0)
    }

    /// cuMemsetD* runs in the legacy default stream, which does not order the runtime's
    /// non-blocking stream: wait for it, so no later kernel races the fill.
    fn fill_bits(&mut self, bits: u32) -> Result<()> {
        let op = Error::cuda("cuMemsetD");
        match &mut self.storage {
            Storage::Bits16(b) => b.set_16(bits as u16).map_err(op)?,
            Storage::F32(b) => b.set_32(bits).map_err(op)?,
        }
        cust::context::CurrentContext::synchronize().map_err(Error::cuda("cuCtxSynchronize"))
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Device address of the first element.
    pub fn device_ptr(&self) -> u64 {
        match &self.storage {
            Storage::Bits16(b) => b.as_device_ptr().as_raw(),
            Storage::F32(b) => b.as_device_ptr().as_raw(),
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

pub(crate) fn expect_shape(arg: &'static str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::Shape {
            arg,
            expected: expected.to_vec(),
            got: t.shape().to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn expect_dtype(arg: &'static str, t: &Tensor, dtype: Dtype) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::Dtype {
            arg,
            expected: dtype.name(),
            got: t.dtype(),
        });
    }
    Ok(())
}
