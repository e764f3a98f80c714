//! State pools for serving engines: the recurrent states of many sequences in one tensor per
//! state, each batch row of a call reading and writing its own slot.
//!
//! Layout: the per-(slot, head) layout of the forward's initial and final states,
//!   C̃ (num_slots, NH, DQK, DHV), ñ (num_slots, NH, DQK), m (num_slots, NH), all f32.
//! A call on B batch rows takes B slot indices (u32): row b reads its initial states from slot
//! `slots[b]` and writes its final states to the same slot; every other slot is left untouched.
//! So a sequence's state stays in its slot between calls, whichever row it has in each batch.
//!
//! Checks (before any launch, nothing written on error): B slots, each below num_slots, and no
//! two rows with one slot (both would write it, in an unspecified order).
//!
//! Why the slots are a host slice: the kernels read them on the device, but the checks need the
//! values on the host. Taking them from the caller's host memory ([`Slots::new`] uploads once)
//! costs one synchronous upload per slot assignment and nothing per call, where checking a
//! device tensor would copy it back, a synchronization on every call (every token, for the
//! step). A serving engine's scheduler holds its slot assignment on the host anyway; it builds
//! a new [`Slots`] when the batch changes and reuses it for every call until then.
//!
//! Used by the forward ([`crate::forward`], `MlstmInputs::pool`) and the step
//! ([`crate::step::mlstm_step_pool`]), with the same checks and errors.
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{self, Dtype, Tensor, expect_dtype, expect_shape};
use cust::memory::DeviceBuffer;
use std::collections::HashMap;

/// Checks B = `batch` slot indices against a pool of `num_slots` slots: exactly `batch` of
/// them, each below `num_slots`, no two equal. Errors name `slots` and the offending row and
/// value (the first such row).
pub fn check_slots(slots: &[u32], batch: usize, num_slots: usize) -> Result<()> {
    if slots.len() != batch {
        return Err(Error::Shape {
            arg: "slots",
            expected: vec![batch],
            got: vec![slots.len()],
        });
    }
    // First row of each slot seen so far (O(B); num_slots may be far larger than B).
    let mut first = HashMap::with_capacity(slots.len());
    for (row, &slot) in slots.iter().enumerate() {
        if slot as usize >= num_slots {
            return Err(Error::Invalid {
                arg: "slots",
                value: format!("slots[{row}] = {slot} (pool of {num_slots} slots)"),
                reason: "slot out of range: every slot must be below the pool's num_slots",
            });
        }
        if let Some(other) = first.insert(slot, row) {
            return Err(Error::Invalid {
                arg: "slots",
                value: format!("slots[{other}] = slots[{row}] = {slot}"),
                reason: "two batch rows would write one slot: slots must be distinct",
            });
        }
    }
    Ok(())
}

/// Slot indices of a batch (one u32 per row): the caller's host values and their device copy,
/// uploaded once by [`Slots::new`] and immutable after, so the host checks what the kernels
/// read. Checked against a pool at every call ([`check_slots`]: host only, no device access).
pub struct Slots {
    host: Vec<u32>,
    dev: DeviceBuffer<u32>,
}

impl Slots {
    /// Uploads `slots` (complete when it returns). Their range and distinctness are checked
    /// against the pool of each call that uses them.
    pub fn new(_rt: &Runtime, slots: &[u32]) -> Result<Self> {
        let mut dev = tensor::alloc("slots", slots.len())?;
        tensor::upload(&mut dev, slots)?;
        Ok(Slots {
            host: slots.to_vec(),
            dev,
        })
    }

    /// The slot of each batch row.
    pub fn as_slice(&self) -> &[u32] {
        &self.host
    }

    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Device address of the first index ((B,) u32, as `FwdPointers::slots` takes it).
    pub fn device_ptr(&self) -> u64 {
        self.dev.as_device_ptr().as_raw()
    }

    /// [`check_slots`] on these indices.
    pub fn check(&self, batch: usize, num_slots: usize) -> Result<()> {
        check_slots(&self.host, batch, num_slots)
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({:?})", self.host)
    }
}

/// A state pool: C̃ (num_slots, NH, DQK, DHV), ñ (num_slots, NH, DQK), m (num_slots, NH), f32.
/// Made by [`StatePool::alloc_zeros`] or from the caller's tensors ([`StatePool::new`]); a
/// call checks the tensors' shapes and dtypes again, so the fields may be swapped.
#[derive(Debug)]
pub struct StatePool {
    pub c: Tensor,
    pub n: Tensor,
    pub m: Tensor,
    /// The step's arrival counters (`StepPointers::tiles_done`, one per state head:
    /// (num_slots·NH,) u32 zeros, stored as f32 zeros), made by the first step on this pool
    /// ([`crate::step::mlstm_step_pool`]) and left zero by every step.
    pub(crate) tiles_done: Option<Tensor>,
}

impl StatePool {
    /// A pool of zero states (m = 0, the forward's default initial state): a slot that has not
    /// been written yet starts a sequence from scratch.
    pub fn alloc_zeros(
        rt: &Runtime,
        num_slots: usize,
        nh: usize,
        dqk: usize,
        dhv: usize,
    ) -> Result<Self> {
        check_pool_dims(num_slots, nh, dqk, dhv)?;
        let zeros = |shape: &[usize]| Tensor::zeros(rt, Dtype::F32, shape);
        Ok(StatePool {
            c: zeros(&[num_slots, nh, dqk, dhv])?,
            n: zeros(&[num_slots, nh, dqk])?,
            m: zeros(&[num_slots, nh])?,
            tiles_done: None,
        })
    }

    /// A pool from tensors the caller filled (taken over, not copied): c (num_slots, NH, DQK,
    /// DHV), n (num_slots, NH, DQK), m (num_slots, NH), f32.
    pub fn new(c: Tensor, n: Tensor, m: Tensor) -> Result<Self> {
        let cs = c.shape();
        if cs.len() != 4 {
            return Err(Error::Invalid {
                arg: "pool.c",
                value: format!("shape {cs:?}"),
                reason: "expected rank 4: (num_slots, NH, DQK, DHV)",
            });
        }
        let (nh, dqk, dhv) = (cs[1], cs[2], cs[3]);
        check_pool_dims(cs[0], nh, dqk, dhv)?;
        let pool = StatePool {
            c,
            n,
            m,
            tiles_done: None,
        };
        pool.check(nh, dqk, dhv)?;
        Ok(pool)
    }

    /// Slots in the pool (the first dimension of C̃; 0 if it has none).
    pub fn num_slots(&self) -> usize {
        self.c.shape().first().copied().unwrap_or(0)
    }

    /// Checks the pool against a call's heads and head dims (shapes and f32); returns
    /// num_slots.
    pub fn check(&self, nh: usize, dqk: usize, dhv: usize) -> Result<usize> {
        let s = self.num_slots();
        if s == 0 {
            return Err(Error::Invalid {
                arg: "pool.c",
                value: format!("shape {:?}", self.c.shape()),
                reason: "a pool has at least one slot",
            });
        }
        for (arg, t, shape) in [
            ("pool.c", &self.c, vec![s, nh, dqk, dhv]),
            ("pool.n", &self.n, vec![s, nh, dqk]),
            ("pool.m", &self.m, vec![s, nh]),
        ] {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
        Ok(s)
    }
}

/// num_slots ≥ 1, and NH, DQK, DHV as the kernels support them (as for one batch row).
fn check_pool_dims(num_slots: usize, nh: usize, dqk: usize, dhv: usize) -> Result<()> {
    if num_slots == 0 {
        return Err(Error::Invalid {
            arg: "num_slots",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    crate::config::Dims {
        b: 1,
        nh,
        s: 1,
        dqk,
        dhv,
    }
    .validate()
}

/// A state pool and the slot of each batch row: where a call reads its initial states and
/// writes its final states (`MlstmInputs::pool`).
#[derive(Clone, Copy, Debug)]
pub struct PoolSlots<'a> {
    pub pool: &'a StatePool,
    pub slots: &'a Slots,
}

impl PoolSlots<'_> {
    /// Checks the pool against the call's NH, DQK, DHV and the slots against its B and the
    /// pool's num_slots (host only).
    pub fn check(&self, b: usize, nh: usize, dqk: usize, dhv: usize) -> Result<()> {
        let num_slots = self.pool.check(nh, dqk, dhv)?;
        self.slots.check(b, num_slots)
    }
}
