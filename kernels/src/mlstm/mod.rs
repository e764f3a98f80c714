//! The mLSTM kernels. Each kernel body is generic over the element type (`Elem`) and the gate
//! variant (`GateKind`); `entry!` instantiates the PTX entry points under the names that
//! `tfla_params::fwd::entry_name` lists.
mod block;
mod chunk_gates;
mod chunk_output;
mod chunk_state;
mod gates;
mod recurrent_f32;
mod stage;

use crate::arch::convert::{Bf16, F16};
use gates::{ExpGates, SigGates, SigNoNormGates};
use tfla_params::fwd::FwdParams;

macro_rules! entry {
    ($($name:ident = $body:ident<$($t:ty),+>;)*) => {$(
        /// PTX entry point (see `tfla_params::fwd::entry_name` and `recurrent::entry_name`).
        ///
        /// # Safety
        /// As the generic body.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: FwdParams) {
            unsafe { $body::$body::<$($t),+>(&p) }
        }
    )*};
}

entry! {
    // The gate math has no element type and ignores the normalizer.
    mlstm_fwd_chunk_gates_exp = chunk_gates<ExpGates>;
    mlstm_fwd_chunk_gates_sig = chunk_gates<SigGates>;
    mlstm_fwd_chunk_state_exp_bf16 = chunk_state<Bf16, ExpGates>;
    mlstm_fwd_chunk_state_exp_f16 = chunk_state<F16, ExpGates>;
    mlstm_fwd_chunk_state_sig_bf16 = chunk_state<Bf16, SigGates>;
    mlstm_fwd_chunk_state_sig_f16 = chunk_state<F16, SigGates>;
    mlstm_fwd_chunk_state_signn_bf16 = chunk_state<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_state_signn_f16 = chunk_state<F16, SigNoNormGates>;
    mlstm_fwd_chunk_output_exp_bf16 = chunk_output<Bf16, ExpGates>;
    mlstm_fwd_chunk_output_exp_f16 = chunk_output<F16, ExpGates>;
    mlstm_fwd_chunk_output_sig_bf16 = chunk_output<Bf16, SigGates>;
    mlstm_fwd_chunk_output_sig_f16 = chunk_output<F16, SigGates>;
    mlstm_fwd_chunk_output_signn_bf16 = chunk_output<Bf16, SigNoNormGates>;
    mlstm_fwd_chunk_output_signn_f16 = chunk_output<F16, SigNoNormGates>;
    // f32 inputs: the recurrence on the CUDA cores.
    mlstm_fwd_recurrent_exp_f32 = recurrent_f32<ExpGates>;
    mlstm_fwd_recurrent_sig_f32 = recurrent_f32<SigGates>;
    mlstm_fwd_recurrent_signn_f32 = recurrent_f32<SigNoNormGates>;
}
