//! The forward pass: chunk states, then chunk outputs (TFLA).
//!
//! Notation: B batch, NH heads, S steps, DQK / DHV head dims, L chunk size, NC = ceil(S/L).
//! Inputs q, k (B, NH, S, DQK), v (B, NH, S, DHV) in bf16 or f16 (tensor-core kernels) or f32
//! (the f32 recurrence: slower, no 16-bit rounding); gate pre-activations ĩ, f̃
//! (B, NH, S) f32; optional initial states C̃0 (B, NH, DQK, DHV), ñ0 (B, NH, DQK), m0 (B, NH)
//! f32. Outputs h (B, NH, S, DHV) in the input dtype and the final states in f32.
//!
//! State pool (serving engines, [`crate::slots`]): instead of c0, n0, m0, a pool of states
//! (num_slots, NH, …) and one slot per batch row; row b starts from slot `slots[b]` and its final
//! states overwrite that slot (the output's c, n, m are then not written). The kernels read
//! and write the pool in place, race-free: each thread of the state kernel reads its elements
//! of C̃0 before it writes the same elements of the final C̃, and ñ0, m0 (which every block of
//! a head needs, but one block writes at the end) are copied into the chunk states at chunk 0
//! by the launch before (`kernels/src/mlstm/common/slots.rs`).
use crate::config::MlstmConfig;
use crate::error::Result;
use crate::runtime::Runtime;
use crate::slots::PoolSlots;
use crate::tensor::Tensor;
pub use tfla_params::fwd::FwdPointers;

mod inputs;
mod outputs;
mod raw;
pub use inputs::{CheckedInputs, DeviceInputs, MlstmInputs};
pub(crate) use outputs::chunk_states_optional;
pub use outputs::{
    ChunkGates, ChunkStates, MlstmOutputs, RowStats, forward_workspace_layout, output_layout,
};
#[cfg(test)]
pub(crate) use raw::fwd_params;
pub use raw::mlstm_fwd_raw;
pub(crate) use raw::{kernel_gates, launch_fwd, path_of};

/// Runs the forward pass, allocating the outputs (with a state pool, c, n, m empty: the final
/// states go to the pool).
pub fn mlstm_fwd(rt: &Runtime, inputs: &MlstmInputs, cfg: &MlstmConfig) -> Result<MlstmOutputs> {
    fwd_checked(rt, &inputs.check()?, cfg)
}

/// [`mlstm_fwd`] on checked inputs.
pub(crate) fn fwd_checked(
    rt: &Runtime,
    inputs: &CheckedInputs,
    cfg: &MlstmConfig,
) -> Result<MlstmOutputs> {
    let finals = inputs.inputs().pool.is_none();
    let mut out = MlstmOutputs::alloc_with(rt, &inputs.dims(), inputs.dtype(), cfg, finals)?;
    fwd_into_checked(rt, inputs, cfg, &mut out)?;
    Ok(out)
}

/// Runs the forward pass into caller-allocated outputs (see [`MlstmOutputs::alloc`]). With a
/// state pool, c, n, m are neither checked nor written.
pub fn mlstm_fwd_into(
    rt: &Runtime,
    inputs: &MlstmInputs,
    cfg: &MlstmConfig,
    out: &mut MlstmOutputs,
) -> Result<()> {
    fwd_into_checked(rt, &inputs.check()?, cfg, out)
}

/// [`mlstm_fwd_into`] on checked inputs.
fn fwd_into_checked(
    rt: &Runtime,
    checked: &CheckedInputs,
    cfg: &MlstmConfig,
    out: &mut MlstmOutputs,
) -> Result<()> {
    // Every check (the pool's shapes and slots included) before anything is written.
    let (inputs, dims, dtype) = (checked.inputs(), checked.dims(), checked.dtype());
    let optional = chunk_states_optional(&rt.plan_device(), &dims, dtype, cfg)?;
    out.check_shapes(&dims, dtype, cfg, inputs.pool.is_none(), optional)?;
    let ptrs = fwd_pointers(inputs, out);
    out.pooled = inputs.pool.is_some();
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked
    // against `dims` (inputs and the pool by `MlstmInputs::check`, outputs by `check_shapes`);
    // cuMemAlloc aligns them; the slots were checked against B and the pool (in range,
    // distinct), so the pool is read and written in place, one slot per row.
    unsafe { mlstm_fwd_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, cfg) }
}

/// The device addresses of `inputs` and `out`, as [`mlstm_fwd_raw`] takes them. With a state
/// pool the initial and the final states are the pool's tensors, indexed by `slots`.
pub fn fwd_pointers(inputs: &MlstmInputs, out: &MlstmOutputs) -> FwdPointers {
    let stats =
        |f: fn(&RowStats) -> &Tensor| out.row_stats.as_ref().map_or(0, |r| f(r).device_ptr());
    if let Some(PoolSlots { pool, slots }) = inputs.pool {
        let (c, n, m) = (
            pool.c.device_ptr(),
            pool.n.device_ptr(),
            pool.m.device_ptr(),
        );
        return FwdPointers {
            c0: c,
            n0: n,
            m0: m,
            c_final: c,
            n_final: n,
            m_final: m,
            slots: slots.device_ptr(),
            ..fwd_pointers(
                &MlstmInputs {
                    pool: None,
                    ..*inputs
                },
                out,
            )
        };
    }
    let [q, k, v, i, f, c0, n0, m0] = inputs.device_ptrs();
    FwdPointers {
        q,
        k,
        v,
        i,
        f,
        c0,
        n0,
        m0,
        // Outputs without chunk states (`ChunkStates::released`): the forward stores none.
        c_states: if out.states.released() {
            0
        } else {
            out.states.c.device_ptr()
        },
        n_states: out.states.n.device_ptr(),
        m_states: out.states.m.device_ptr(),
        c_final: out.c.device_ptr(),
        n_final: out.n.device_ptr(),
        m_final: out.m.device_ptr(),
        h: out.h.device_ptr(),
        gate_b: out.gates.b.device_ptr(),
        gate_u: out.gates.u.device_ptr(),
        gate_cm: out.gates.cm.device_ptr(),
        gate_g: out.gates.g.device_ptr(),
        m_rows: stats(|r| &r.m),
        norm_rows: stats(|r| &r.norm),
        slots: 0,
        seq_chunks: 0,
    }
}
