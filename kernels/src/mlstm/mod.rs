//! The mLSTM kernels. Each kernel body is generic over the element type (`Elem`) and the gate
//! variant (`GateKind`); `entry!` instantiates the PTX entry points under the names that
//! `tfla_params::fwd::entry_name` lists.
mod backward;
mod common;
mod forward;
mod generation;

use crate::arch::convert::{Bf16, F16, F32};
use backward::bwd_combine::{Dk, Dq, Dv};
#[cfg(target_feature = "sm_90a")]
use backward::bwd_state_wg;
use backward::{
    bwd_chunk, bwd_combine, bwd_gates, bwd_max_path, bwd_recurrent_f32, bwd_rows, bwd_scores,
    bwd_state,
};
use common::gates::{ExpGates, SigGates, SigNoNormGates};
use common::pack;
#[cfg(target_feature = "sm_90a")]
use forward::{chunk_output_wg, chunk_state_wg};
use forward::{
    chunk_fused, chunk_gates, chunk_output, chunk_state, chunk_state_wide, recurrent_f32,
};
use generation::step::{self, StateBf16, StateF32};
use tfla_params::bwd::BwdParams;
use tfla_params::fwd::FwdParams;
use tfla_params::seqs::PackParams;
use tfla_params::step::StepParams;

macro_rules! entry {
    ($params:ty; $($name:ident = $body:ident<$($t:ty),+>;)*) => {$(
        /// PTX entry point (see `tfla_params::fwd::entry_name`, `recurrent::entry_name` and
        /// `tfla_params::bwd::entry_name`).
        ///
        /// # Safety
        /// As the generic body.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $params) {
            unsafe { $body::$body::<$($t),+>(&p) }
        }
    )*};
}

entry! {
    FwdParams;
    // The gate math has no element type and ignores the normalizer.
    mlstm_fwd_chunk_gates_exp = chunk_gates<ExpGates>;
    mlstm_fwd_chunk_gates_sig = chunk_gates<SigGates>;
    mlstm_fwd_chunk_state_exp_bf16 = chunk_state<Bf16, ExpGates>;
    mlstm_fwd_chunk_state_exp_f16 = chunk_state<F16, ExpGates>;
    mlstm_fwd_chunk_state_sig_bf16 = chunk_state<Bf16, SigGates>;
    mlstm_fwd_chunk_state_sig_f16 = chunk_state<F16, SigGates>;
    mlstm_fwd_chunk_state_signn_bf16 = chunk_state<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_state_signn_f16 = chunk_state<F16, SigNoNormGates>;
    mlstm_fwd_chunk_state_wide_exp_bf16 = chunk_state_wide<Bf16, ExpGates>;
    mlstm_fwd_chunk_state_wide_exp_f16 = chunk_state_wide<F16, ExpGates>;
    mlstm_fwd_chunk_state_wide_sig_bf16 = chunk_state_wide<Bf16, SigGates>;
    mlstm_fwd_chunk_state_wide_sig_f16 = chunk_state_wide<F16, SigGates>;
    mlstm_fwd_chunk_state_wide_signn_bf16 = chunk_state_wide<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_state_wide_signn_f16 = chunk_state_wide<F16, SigNoNormGates>;
    mlstm_fwd_chunk_output_exp_bf16 = chunk_output<Bf16, ExpGates>;
    mlstm_fwd_chunk_output_exp_f16 = chunk_output<F16, ExpGates>;
    mlstm_fwd_chunk_output_sig_bf16 = chunk_output<Bf16, SigGates>;
    mlstm_fwd_chunk_output_sig_f16 = chunk_output<F16, SigGates>;
    mlstm_fwd_chunk_output_signn_bf16 = chunk_output<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_output_signn_f16 = chunk_output<F16, SigNoNormGates>;
    mlstm_fwd_chunk_fused_exp_bf16 = chunk_fused<Bf16, ExpGates>;
    mlstm_fwd_chunk_fused_exp_f16 = chunk_fused<F16, ExpGates>;
    mlstm_fwd_chunk_fused_sig_bf16 = chunk_fused<Bf16, SigGates>;
    mlstm_fwd_chunk_fused_sig_f16 = chunk_fused<F16, SigGates>;
    mlstm_fwd_chunk_fused_signn_bf16 = chunk_fused<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_fused_signn_f16 = chunk_fused<F16, SigNoNormGates>;
    // f32 inputs: the recurrence on the CUDA cores.
    mlstm_fwd_recurrent_exp_f32 = recurrent_f32<ExpGates>;
    mlstm_fwd_recurrent_sig_f32 = recurrent_f32<SigGates>;
    mlstm_fwd_recurrent_signn_f32 = recurrent_f32<SigNoNormGates>;
}

// The `wgmma` kernels, in sm_90a builds only (`tfla_params::fwd::state_wg`, `output_wg`).
#[cfg(target_feature = "sm_90a")]
entry! {
    FwdParams;
    mlstm_fwd_chunk_state_wg_exp_bf16 = chunk_state_wg<Bf16, ExpGates>;
    mlstm_fwd_chunk_state_wg_exp_f16 = chunk_state_wg<F16, ExpGates>;
    mlstm_fwd_chunk_state_wg_sig_bf16 = chunk_state_wg<Bf16, SigGates>;
    mlstm_fwd_chunk_state_wg_sig_f16 = chunk_state_wg<F16, SigGates>;
    mlstm_fwd_chunk_state_wg_signn_bf16 = chunk_state_wg<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_state_wg_signn_f16 = chunk_state_wg<F16, SigNoNormGates>;
    mlstm_fwd_chunk_output_wg_exp_bf16 = chunk_output_wg<Bf16, ExpGates>;
    mlstm_fwd_chunk_output_wg_exp_f16 = chunk_output_wg<F16, ExpGates>;
    mlstm_fwd_chunk_output_wg_sig_bf16 = chunk_output_wg<Bf16, SigGates>;
    mlstm_fwd_chunk_output_wg_sig_f16 = chunk_output_wg<F16, SigGates>;
    mlstm_fwd_chunk_output_wg_signn_bf16 = chunk_output_wg<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_output_wg_signn_f16 = chunk_output_wg<F16, SigNoNormGates>;
}

// The backward's `wgmma` kernel, in sm_90a builds only (`tfla_params::bwd::state_wg`).
#[cfg(target_feature = "sm_90a")]
entry! {
    BwdParams;
    mlstm_bwd_state_wg_exp_bf16 = bwd_state_wg<Bf16, ExpGates>;
    mlstm_bwd_state_wg_exp_f16 = bwd_state_wg<F16, ExpGates>;
    mlstm_bwd_state_wg_sig_bf16 = bwd_state_wg<Bf16, SigGates>;
    mlstm_bwd_state_wg_sig_f16 = bwd_state_wg<F16, SigGates>;
    mlstm_bwd_state_wg_signn_bf16 = bwd_state_wg<Bf16, SigNoNormGates>;
    mlstm_bwd_state_wg_signn_f16 = bwd_state_wg<F16, SigNoNormGates>;
}

entry! {
    BwdParams;
    mlstm_bwd_rows_exp_bf16 = bwd_rows<Bf16, ExpGates>;
    mlstm_bwd_rows_exp_f16 = bwd_rows<F16, ExpGates>;
    mlstm_bwd_rows_sig_bf16 = bwd_rows<Bf16, SigGates>;
    mlstm_bwd_rows_sig_f16 = bwd_rows<F16, SigGates>;
    mlstm_bwd_rows_signn_bf16 = bwd_rows<Bf16, SigNoNormGates>;
    mlstm_bwd_rows_signn_f16 = bwd_rows<F16, SigNoNormGates>;
    mlstm_bwd_state_exp_bf16 = bwd_state<Bf16, ExpGates>;
    mlstm_bwd_state_exp_f16 = bwd_state<F16, ExpGates>;
    mlstm_bwd_state_sig_bf16 = bwd_state<Bf16, SigGates>;
    mlstm_bwd_state_sig_f16 = bwd_state<F16, SigGates>;
    mlstm_bwd_state_signn_bf16 = bwd_state<Bf16, SigNoNormGates>;
    mlstm_bwd_state_signn_f16 = bwd_state<F16, SigNoNormGates>;
    // The score kernel's gate terms come from the rows kernel: one body per element type.
    mlstm_bwd_scores_exp_bf16 = bwd_scores<Bf16>;
    mlstm_bwd_scores_exp_f16 = bwd_scores<F16>;
    mlstm_bwd_scores_sig_bf16 = bwd_scores<Bf16>;
    mlstm_bwd_scores_sig_f16 = bwd_scores<F16>;
    mlstm_bwd_scores_signn_bf16 = bwd_scores<Bf16>;
    mlstm_bwd_scores_signn_f16 = bwd_scores<F16>;
    mlstm_bwd_dq_exp_bf16 = bwd_combine<Bf16, ExpGates, Dq>;
    mlstm_bwd_dq_exp_f16 = bwd_combine<F16, ExpGates, Dq>;
    mlstm_bwd_dq_sig_bf16 = bwd_combine<Bf16, SigGates, Dq>;
    mlstm_bwd_dq_sig_f16 = bwd_combine<F16, SigGates, Dq>;
    mlstm_bwd_dq_signn_bf16 = bwd_combine<Bf16, SigNoNormGates, Dq>;
    mlstm_bwd_dq_signn_f16 = bwd_combine<F16, SigNoNormGates, Dq>;
    mlstm_bwd_dk_exp_bf16 = bwd_combine<Bf16, ExpGates, Dk>;
    mlstm_bwd_dk_exp_f16 = bwd_combine<F16, ExpGates, Dk>;
    mlstm_bwd_dk_sig_bf16 = bwd_combine<Bf16, SigGates, Dk>;
    mlstm_bwd_dk_sig_f16 = bwd_combine<F16, SigGates, Dk>;
    mlstm_bwd_dk_signn_bf16 = bwd_combine<Bf16, SigNoNormGates, Dk>;
    mlstm_bwd_dk_signn_f16 = bwd_combine<F16, SigNoNormGates, Dk>;
    mlstm_bwd_dv_exp_bf16 = bwd_combine<Bf16, ExpGates, Dv>;
    mlstm_bwd_dv_exp_f16 = bwd_combine<F16, ExpGates, Dv>;
    mlstm_bwd_dv_sig_bf16 = bwd_combine<Bf16, SigGates, Dv>;
    mlstm_bwd_dv_sig_f16 = bwd_combine<F16, SigGates, Dv>;
    mlstm_bwd_dv_signn_bf16 = bwd_combine<Bf16, SigNoNormGates, Dv>;
    mlstm_bwd_dv_signn_f16 = bwd_combine<F16, SigNoNormGates, Dv>;
    mlstm_bwd_chunk_exp_bf16 = bwd_chunk<Bf16, ExpGates>;
    mlstm_bwd_chunk_exp_f16 = bwd_chunk<F16, ExpGates>;
    mlstm_bwd_chunk_sig_bf16 = bwd_chunk<Bf16, SigGates>;
    mlstm_bwd_chunk_sig_f16 = bwd_chunk<F16, SigGates>;
    mlstm_bwd_chunk_signn_bf16 = bwd_chunk<Bf16, SigNoNormGates>;
    mlstm_bwd_chunk_signn_f16 = bwd_chunk<F16, SigNoNormGates>;
    mlstm_bwd_gates_exp = bwd_gates<ExpGates>;
    mlstm_bwd_gates_sig = bwd_gates<SigGates>;
    mlstm_bwd_gates_signn = bwd_gates<SigNoNormGates>;
    // f32 inputs: the rows kernel (which also zeroes what the walk accumulates), then the
    // reverse recurrence on the CUDA cores (`tfla_params::bwd::recurrent`).
    mlstm_bwd_rows_exp_f32 = bwd_rows<F32, ExpGates>;
    mlstm_bwd_rows_sig_f32 = bwd_rows<F32, SigGates>;
    mlstm_bwd_rows_signn_f32 = bwd_rows<F32, SigNoNormGates>;
    mlstm_bwd_recurrent_exp_f32 = bwd_recurrent_f32<ExpGates>;
    mlstm_bwd_recurrent_sig_f32 = bwd_recurrent_f32<SigGates>;
    mlstm_bwd_recurrent_signn_f32 = bwd_recurrent_f32<SigNoNormGates>;
}

/// PTX entry point of the max-state path (mLSTMexp only; see `tfla_params::bwd::entry_name`).
///
/// # Safety
/// As the body.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn mlstm_bwd_max_path_exp(p: BwdParams) {
    unsafe { bwd_max_path::bwd_max_path(&p) }
}

entry! {
    StepParams;
    // Generation: one step per (gates, input dtype, state dtype); `tfla_params::step::entry_name`.
    mlstm_step_exp_bf16_state_f32 = step<Bf16, StateF32, ExpGates>;
    mlstm_step_exp_f16_state_f32 = step<F16, StateF32, ExpGates>;
    mlstm_step_exp_f32_state_f32 = step<F32, StateF32, ExpGates>;
    mlstm_step_exp_bf16_state_bf16 = step<Bf16, StateBf16, ExpGates>;
    mlstm_step_exp_f16_state_bf16 = step<F16, StateBf16, ExpGates>;
    mlstm_step_exp_f32_state_bf16 = step<F32, StateBf16, ExpGates>;
    mlstm_step_sig_bf16_state_f32 = step<Bf16, StateF32, SigGates>;
    mlstm_step_sig_f16_state_f32 = step<F16, StateF32, SigGates>;
    mlstm_step_sig_f32_state_f32 = step<F32, StateF32, SigGates>;
    mlstm_step_sig_bf16_state_bf16 = step<Bf16, StateBf16, SigGates>;
    mlstm_step_sig_f16_state_bf16 = step<F16, StateBf16, SigGates>;
    mlstm_step_sig_f32_state_bf16 = step<F32, StateBf16, SigGates>;
    mlstm_step_signn_bf16_state_f32 = step<Bf16, StateF32, SigNoNormGates>;
    mlstm_step_signn_f16_state_f32 = step<F16, StateF32, SigNoNormGates>;
    mlstm_step_signn_f32_state_f32 = step<F32, StateF32, SigNoNormGates>;
    mlstm_step_signn_bf16_state_bf16 = step<Bf16, StateBf16, SigNoNormGates>;
    mlstm_step_signn_f16_state_bf16 = step<F16, StateBf16, SigNoNormGates>;
    mlstm_step_signn_f32_state_bf16 = step<F32, StateBf16, SigNoNormGates>;
}

/// PTX entry point of the variable-length repacking (`tfla_params::seqs::pack::ENTRY`).
///
/// # Safety
/// As the body.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn mlstm_varlen_pack(p: PackParams) {
    unsafe { pack::varlen_pack(&p) }
}
