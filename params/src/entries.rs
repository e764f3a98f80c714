//! The one list of the module's kernel entry points. Both crates expand it: the device crate
//! into the `extern "ptx-kernel"` functions (`kernels/src/mlstm/mod.rs`), this one into the
//! name tables below, which `fwd::entry_name`, `bwd::entry_name`, `step::entry_name` and the
//! others index. A name is spelled nowhere else.
//!
//! Each line: a kind (which variants it is instantiated for, and so the shape of its name
//! table), the pass's parameter struct, the name after `mlstm_`, and the body in the device
//! crate (module and function of that name) with any extra generic argument. Kinds:
//! - `gd`: `[gates][dtype]`, the 16-bit kernels: `{name}_{exp|sig|signn}_{bf16|f16}`, body
//!   `<E, G>`; `gd_wg` the same in sm_90a builds only (`wgmma`); `gd_e` a body of `<E>` only
//!   (the gates do not enter it, the names still do); `gd_x` a body of `<E, G, X>`, `gd_wgx`
//!   the same in sm_90a builds only; `gd_mma` as `gd`, for an `mma.sync` kernel the launch plan
//!   takes only where the module has no `wgmma` (a `gd_wg` twin runs there instead: see
//!   [`mma_only`]).
//! - `g`: `[gates]`, `{name}_{exp|sig|signn}`, body `<G>`; `g_f32`: `{name}_{…}_f32`, body
//!   `<G>`; `g_f32e`: the same names, body `<F32, G>`; `g2`: `{name}_{exp|sig}` only (the
//!   normalizer does not enter it), body `<G>`.
//! - `step`: `[gates][state dtype][input dtype]`, `{name}_{g}_{d}_state_{s}`, body `<E, S, G>`.
//! - `one`: a single entry, the body a function path.
//!
//! The order is the PTX module's.

/// Calls `$cb!` with the list (see the module docs).
#[macro_export]
macro_rules! tfla_entries {
    ($cb:path) => {
        $cb! {
            g2 FwdParams fwd_chunk_gates = chunk_gates;
            gd FwdParams fwd_chunk_state = chunk_state;
            gd_mma FwdParams fwd_chunk_state_wide = chunk_state_wide;
            gd FwdParams fwd_chunk_output = chunk_output;
            gd FwdParams fwd_chunk_fused = chunk_fused;
            g_f32 FwdParams fwd_recurrent = recurrent_f32;
            gd_wg FwdParams fwd_chunk_state_wg = chunk_state_wg;
            gd_wg FwdParams fwd_chunk_output_wg = chunk_output_wg;
            gd_wg BwdParams bwd_state_wg = bwd_state_wg;
            gd BwdParams bwd_rows = bwd_rows;
            gd BwdParams bwd_state = bwd_state;
            gd_e BwdParams bwd_scores = bwd_scores;
            gd_x BwdParams bwd_dq = bwd_combine<Dq>;
            gd_x BwdParams bwd_dk = bwd_combine<Dk>;
            gd_x BwdParams bwd_dv = bwd_combine<Dv>;
            gd_wgx BwdParams bwd_dq_wg = bwd_combine_wg<Dq>;
            gd_wgx BwdParams bwd_dk_wg = bwd_combine_wg<Dk>;
            gd_wgx BwdParams bwd_dv_wg = bwd_combine_wg<Dv>;
            gd_mma BwdParams bwd_chunk = bwd_chunk;
            gd_wg BwdParams bwd_chunk_wg = bwd_chunk_wg;
            g BwdParams bwd_gates = bwd_gates;
            g_f32e BwdParams bwd_rows = bwd_rows;
            g_f32 BwdParams bwd_recurrent = bwd_recurrent_f32;
            one BwdParams bwd_max_path_exp = bwd_max_path::bwd_max_path;
            step StepParams step = step;
            one PackParams varlen_pack = pack::varlen_pack;
        }
    };
}

/// An entry's name from the pieces after `mlstm_`: `tfla_entry_name!(fwd_chunk_state _exp_bf16)`
/// is "mlstm_fwd_chunk_state_exp_bf16". Both crates name entries with it.
#[macro_export]
macro_rules! tfla_entry_name {
    ($name:ident $($suffix:ident)*) => {
        concat!("mlstm_", stringify!($name) $(, stringify!($suffix))*)
    };
}

/// The name tables: one per line of the list, named after it (`names::fwd_chunk_state`:
/// `[gates][dtype]`, …; the f32 kinds `names::bwd_rows::f32`: `[gates]`).
#[allow(non_upper_case_globals)]
pub mod names {
    macro_rules! tables {
        ($($kind:ident $params:ident $name:ident = $($body:ident)::+ $(<$x:ident>)?;)*) => {
            $(tables!(@ $kind $name);)*
        };
        (@ gd $name:ident) => {
            pub const $name: [[&str; 2]; 3] = [
                [tables!(@n $name _exp_bf16), tables!(@n $name _exp_f16)],
                [tables!(@n $name _sig_bf16), tables!(@n $name _sig_f16)],
                [tables!(@n $name _signn_bf16), tables!(@n $name _signn_f16)],
            ];
        };
        (@ gd_wg $name:ident) => { tables!(@ gd $name); };
        (@ gd_mma $name:ident) => { tables!(@ gd $name); };
        (@ gd_e $name:ident) => { tables!(@ gd $name); };
        (@ gd_x $name:ident) => { tables!(@ gd $name); };
        (@ gd_wgx $name:ident) => { tables!(@ gd $name); };
        (@ g $name:ident) => {
            pub const $name: [&str; 3] =
                [tables!(@n $name _exp), tables!(@n $name _sig), tables!(@n $name _signn)];
        };
        (@ g2 $name:ident) => {
            pub const $name: [&str; 2] = [tables!(@n $name _exp), tables!(@n $name _sig)];
        };
        (@ g_f32 $name:ident) => {
            // A module beside any 16-bit table of the same name (modules and consts live in
            // different namespaces): `names::bwd_rows` and `names::bwd_rows::f32`.
            pub mod $name {
                pub const f32: [&str; 3] = [
                    tables!(@n $name _exp_f32),
                    tables!(@n $name _sig_f32),
                    tables!(@n $name _signn_f32),
                ];
            }
        };
        (@ g_f32e $name:ident) => { tables!(@ g_f32 $name); };
        (@ step $name:ident) => {
            pub const $name: [[[&str; 3]; 2]; 3] = [
                tables!(@s $name _exp),
                tables!(@s $name _sig),
                tables!(@s $name _signn),
            ];
        };
        (@s $name:ident $g:ident) => {
            [
                [
                    tables!(@n $name $g _bf16_state_f32),
                    tables!(@n $name $g _f16_state_f32),
                    tables!(@n $name $g _f32_state_f32),
                ],
                [
                    tables!(@n $name $g _bf16_state_bf16),
                    tables!(@n $name $g _f16_state_bf16),
                    tables!(@n $name $g _f32_state_bf16),
                ],
            ]
        };
        (@ one $name:ident) => {
            pub const $name: &str = tables!(@n $name);
        };
        (@n $($piece:ident)+) => {
            $crate::tfla_entry_name!($($piece)+)
        };
    }
    crate::tfla_entries!(tables);
}

/// `mma_only`, from the list.
macro_rules! mma_only {
    ($($kind:ident $params:ident $name:ident = $($body:ident)::+ $(<$x:ident>)?;)*) => {
        /// Whether `entry` is a `gd_mma` kernel: one the launch plan never takes where the
        /// module has `wgmma` (its `wgmma` twin runs there), so a run on such a module cannot
        /// launch it.
        pub fn mma_only(entry: &str) -> bool {
            false $(|| mma_only!(@ $kind $name entry))*
        }
    };
    (@ gd_mma $name:ident $entry:ident) => {
        names::$name.iter().flatten().any(|n| *n == $entry)
    };
    (@ $other:ident $name:ident $entry:ident) => {
        false
    };
}
crate::tfla_entries!(mma_only);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mma_only_names_the_kernels_with_wgmma_twins() {
        for g in 0..3 {
            for d in 0..2 {
                assert!(mma_only(names::bwd_chunk[g][d]));
                assert!(mma_only(names::fwd_chunk_state_wide[g][d]));
                assert!(!mma_only(names::bwd_chunk_wg[g][d]));
                assert!(!mma_only(names::fwd_chunk_state_wg[g][d]));
                assert!(!mma_only(names::fwd_chunk_state[g][d]));
                assert!(!mma_only(names::fwd_chunk_fused[g][d]));
            }
        }
        assert!(!mma_only(names::bwd_max_path_exp));
        assert!(!mma_only("mlstm_bwd_chunk"));
    }
}
