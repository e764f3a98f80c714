//! The mLSTM kernels. Each kernel body is generic over the element type (`Elem`) and the gate
//! variant (`GateKind`); the PTX entry points are the instances that `tfla_params::tfla_entries`
//! lists (the one list of entries, whose names the host's tables are made from too),
//! instantiated by `instantiate!` below.
mod backward;
mod common;
mod forward;
mod generation;

use crate::arch::convert::{Bf16, F16, F32};
use backward::bwd_combine::{Dk, Dq, Dv};
use backward::{
    bwd_chunk, bwd_combine, bwd_gates, bwd_max_path, bwd_recurrent_f32, bwd_rows, bwd_scores,
    bwd_state,
};
#[cfg(target_feature = "sm_90a")]
use backward::{bwd_chunk_wg, bwd_combine_wg, bwd_state_wg};
use common::gates::{ExpGates, SigGates, SigNoNormGates};
use common::pack;
use forward::{
    chunk_fused, chunk_gates, chunk_output, chunk_state, chunk_state_wide, recurrent_f32,
};
#[cfg(target_feature = "sm_90a")]
use forward::{chunk_output_wg, chunk_state_wg};
use generation::step::{self, StateBf16, StateF32};
use tfla_params::bwd::BwdParams;
use tfla_params::fwd::FwdParams;
use tfla_params::seqs::PackParams;
use tfla_params::step::StepParams;

/// One PTX entry point: `$name` the name's pieces after `mlstm_` (`tfla_params::tfla_entry_name`),
/// `$params` the parameter struct, `$body` the call.
macro_rules! entry {
    ($params:ident, [$($name:ident)+], $($body:tt)+) => {
        // Each entry in its own block, so every function may be called `entry`: only the
        // exported name, from the list, tells them apart.
        const _: () = {
            /// # Safety
            /// As the generic body.
            #[unsafe(export_name = tfla_params::tfla_entry_name!($($name)+))]
            unsafe extern "ptx-kernel" fn entry(p: $params) {
                unsafe { $($body)+(&p) }
            }
        };
    };
}

/// The device crate's expansion of `tfla_params::tfla_entries` (kinds in `tfla_params::entries`).
macro_rules! instantiate {
    ($($kind:ident $params:ident $name:ident = $($body:ident)::+ $(<$x:ident>)?;)*) => {
        $(instantiate!(@ $kind $params $name [$($body)::+] $($x)?);)*
    };
    (@ gd $params:ident $name:ident [$($body:tt)+]) => {
        instantiate!(@gd2 $params $name [$($body)+] [] _exp ExpGates);
        instantiate!(@gd2 $params $name [$($body)+] [] _sig SigGates);
        instantiate!(@gd2 $params $name [$($body)+] [] _signn SigNoNormGates);
    };
    (@ gd_mma $params:ident $name:ident [$($body:tt)+]) => {
        instantiate!(@ gd $params $name [$($body)+]);
    };
    (@ gd_wg $params:ident $name:ident [$($body:tt)+]) => {
        #[cfg(target_feature = "sm_90a")]
        const _: () = {
            instantiate!(@ gd $params $name [$($body)+]);
        };
    };
    (@ gd_wgx $params:ident $name:ident [$($body:tt)+] $x:ident) => {
        #[cfg(target_feature = "sm_90a")]
        const _: () = {
            instantiate!(@ gd_x $params $name [$($body)+] $x);
        };
    };
    (@ gd_x $params:ident $name:ident [$($body:tt)+] $x:ident) => {
        instantiate!(@gd2 $params $name [$($body)+] [, $x] _exp ExpGates);
        instantiate!(@gd2 $params $name [$($body)+] [, $x] _sig SigGates);
        instantiate!(@gd2 $params $name [$($body)+] [, $x] _signn SigNoNormGates);
    };
    (@gd2 $params:ident $name:ident [$($body:tt)+] [$($x:tt)*] $g:ident $gt:ident) => {
        entry!($params, [$name $g _bf16], $($body)+::$($body)+::<Bf16, $gt $($x)*>);
        entry!($params, [$name $g _f16], $($body)+::$($body)+::<F16, $gt $($x)*>);
    };
    (@ gd_e $params:ident $name:ident [$($body:tt)+]) => {
        instantiate!(@gde $params $name [$($body)+] _exp);
        instantiate!(@gde $params $name [$($body)+] _sig);
        instantiate!(@gde $params $name [$($body)+] _signn);
    };
    (@gde $params:ident $name:ident [$($body:tt)+] $g:ident) => {
        entry!($params, [$name $g _bf16], $($body)+::$($body)+::<Bf16>);
        entry!($params, [$name $g _f16], $($body)+::$($body)+::<F16>);
    };
    (@ g $params:ident $name:ident [$($body:tt)+]) => {
        entry!($params, [$name _exp], $($body)+::$($body)+::<ExpGates>);
        entry!($params, [$name _sig], $($body)+::$($body)+::<SigGates>);
        entry!($params, [$name _signn], $($body)+::$($body)+::<SigNoNormGates>);
    };
    (@ g2 $params:ident $name:ident [$($body:tt)+]) => {
        entry!($params, [$name _exp], $($body)+::$($body)+::<ExpGates>);
        entry!($params, [$name _sig], $($body)+::$($body)+::<SigGates>);
    };
    (@ g_f32 $params:ident $name:ident [$($body:tt)+]) => {
        entry!($params, [$name _exp_f32], $($body)+::$($body)+::<ExpGates>);
        entry!($params, [$name _sig_f32], $($body)+::$($body)+::<SigGates>);
        entry!($params, [$name _signn_f32], $($body)+::$($body)+::<SigNoNormGates>);
    };
    (@ g_f32e $params:ident $name:ident [$($body:tt)+]) => {
        entry!($params, [$name _exp_f32], $($body)+::$($body)+::<F32, ExpGates>);
        entry!($params, [$name _sig_f32], $($body)+::$($body)+::<F32, SigGates>);
        entry!($params, [$name _signn_f32], $($body)+::$($body)+::<F32, SigNoNormGates>);
    };
    (@ step $params:ident $name:ident [$($body:tt)+]) => {
        instantiate!(@step2 $params $name [$($body)+] _exp ExpGates);
        instantiate!(@step2 $params $name [$($body)+] _sig SigGates);
        instantiate!(@step2 $params $name [$($body)+] _signn SigNoNormGates);
    };
    (@step2 $params:ident $name:ident [$($body:tt)+] $g:ident $gt:ident) => {
        entry!($params, [$name $g _bf16_state_f32], $($body)+::$($body)+::<Bf16, StateF32, $gt>);
        entry!($params, [$name $g _f16_state_f32], $($body)+::$($body)+::<F16, StateF32, $gt>);
        entry!($params, [$name $g _f32_state_f32], $($body)+::$($body)+::<F32, StateF32, $gt>);
        entry!($params, [$name $g _bf16_state_bf16], $($body)+::$($body)+::<Bf16, StateBf16, $gt>);
        entry!($params, [$name $g _f16_state_bf16], $($body)+::$($body)+::<F16, StateBf16, $gt>);
        entry!($params, [$name $g _f32_state_bf16], $($body)+::$($body)+::<F32, StateBf16, $gt>);
    };
    (@ one $params:ident $name:ident [$($body:tt)+]) => {
        entry!($params, [$name], $($body)+);
    };
}

tfla_params::tfla_entries!(instantiate);
