//! The two PTX modules the host embeds (sm_90a for Hopper with the `wgmma` kernels, sm_80 for
//! every card from Ampere on): every registered entry point is present, nothing is left
//! unresolved, and every kernel assembles with no spills and no stack frame (a register tile
//! in local memory shows up as one), the step kernels within the registers of four blocks per
//! SM — the Hopper module for sm_90a, the portable one for each card family from sm_80 to
//! sm_120.
use tfla::runtime::PtxArch;
use tfla_params::bwd::BwdKernel;
use tfla_params::fwd::{FwdKernel, entry_name};
use tfla_params::{Dtype, Gates};
use tfla_ptx_build::{Arch, entry_points, ptxas, ptxas_report, unresolved_externs};

const GATES: [Gates; 3] = [Gates::Exp, Gates::Sig, Gates::SigNoNorm];

/// Every backward entry point (the gate-gradient kernel has one name per gate variant), the
/// f32 path's included.
fn bwd_entry_names(arch: PtxArch) -> Vec<&'static str> {
    let mut names = Vec::new();
    for kernel in BwdKernel::ALL {
        for gates in GATES {
            for dtype in [Dtype::Bf16, Dtype::F16] {
                names.push(tfla_params::bwd::entry_name(kernel, gates, dtype));
            }
        }
    }
    for gates in GATES {
        names.push(tfla_params::bwd::recurrent::rows_entry(gates));
        names.push(tfla_params::bwd::recurrent::entry(gates));
        if arch == PtxArch::Sm90a {
            for kernel in BwdKernel::WGMMA {
                for dtype in [Dtype::Bf16, Dtype::F16] {
                    names.push(tfla_params::bwd::entry_name(kernel, gates, dtype));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every forward entry point.
fn fwd_entry_names(arch: PtxArch) -> Vec<&'static str> {
    let mut names = Vec::new();
    for kernel in [
        FwdKernel::ChunkGates,
        FwdKernel::ChunkState,
        FwdKernel::ChunkStateWide,
        FwdKernel::ChunkOutput,
        FwdKernel::ChunkFused,
    ] {
        for gates in GATES {
            for dtype in [Dtype::Bf16, Dtype::F16] {
                names.push(entry_name(kernel, gates, dtype));
            }
        }
    }
    for gates in GATES {
        names.push(tfla_params::fwd::recurrent::entry_name(gates));
        if arch == PtxArch::Sm90a {
            for dtype in [Dtype::Bf16, Dtype::F16] {
                names.push(entry_name(FwdKernel::ChunkOutputWg, gates, dtype));
                names.push(entry_name(FwdKernel::ChunkStateWg, gates, dtype));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn all_entry_names(arch: PtxArch) -> Vec<&'static str> {
    let mut names = fwd_entry_names(arch);
    names.extend(bwd_entry_names(arch));
    names.extend(tfla_params::step::entry_names());
    names.push(tfla_params::seqs::pack::ENTRY);
    names
}

const MODULES: [PtxArch; 2] = [PtxArch::Sm90a, PtxArch::Sm80];

#[test]
fn embedded_ptx_has_every_entry_point_and_no_externs() {
    for arch in MODULES {
        let ptx = arch.ptx();
        let entries = entry_points(ptx);
        let names = all_entry_names(arch);
        for name in &names {
            assert!(
                entries.iter().any(|e| e == name),
                "entry point {name} missing from the {arch:?} PTX"
            );
        }
        // No entry the plan cannot launch (in particular no `wgmma` kernel in the sm_80 one).
        assert_eq!(entries.len(), names.len(), "{arch:?}: unlisted entries");
        assert!(unresolved_externs(ptx).is_empty());
        for instr in [
            "mma.sync.aligned.m16n8k16",
            "ldmatrix.sync.aligned",
            "cp.async.cg.shared.global",
        ] {
            assert!(ptx.contains(instr), "the kernels are meant to use {instr}");
        }
        let wgmma = ptx.contains("wgmma.mma_async.sync.aligned.m64n256k16");
        assert_eq!(wgmma, arch == PtxArch::Sm90a, "{arch:?}");
        assert!(
            ptx.contains(&format!(".target {}", arch.name())),
            "{arch:?}"
        );
    }
}

/// The one place the portable module spills, as (target, entry-name prefix, most bytes of
/// stack, spill stores and spill loads each): dq and dk of the normalizing variants on consumer Blackwell. Their register
/// cap (`bwd::combine::BLOCKS_PER_SM`, three blocks of 128 threads: 168) is what Hopper and B200
/// run fastest with, and one PTX module carries one cap for every card; sm_120's allocator keeps
/// one row index across the walk in local memory there (one 4-byte store and two loads per
/// thread, against ~10⁴ instructions). Listed with its size so a larger spill still fails, and
/// checked to still occur so the list cannot go stale.
const KNOWN_SPILLS: [(&str, &str, u32); 4] = [
    ("sm_120", "mlstm_bwd_dq_exp_", 8),
    ("sm_120", "mlstm_bwd_dq_sig_", 8),
    ("sm_120", "mlstm_bwd_dk_exp_", 8),
    ("sm_120", "mlstm_bwd_dk_sig_", 8),
];

/// Assembles `arch`'s module for `target` and checks every kernel's resources.
fn assemble_without_spills(arch: PtxArch, target: &str) {
    // Found on the machine or fetched into target/ (pip); never skipped: a missing ptxas is a
    // failure, not a check that passed without checking anything.
    let ptxas = ptxas().unwrap_or_else(|e| panic!("no ptxas: {e}"));
    let report = ptxas_report(&ptxas, arch.ptx(), target).expect("ptxas failed");
    for name in all_entry_names(arch) {
        let k = report
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("{name} not in ptxas report"));
        eprintln!(
            "{target} {name}: {} registers, {} B stack, {} B spilled",
            k.registers, k.stack_bytes, k.spill_store_bytes
        );
        let known = KNOWN_SPILLS.iter().find(|(t, prefix, _)| {
            arch == PtxArch::Sm80 && *t == target && name.starts_with(prefix)
        });
        if let Some((_, _, most)) = known {
            let worst = k
                .stack_bytes
                .max(k.spill_store_bytes)
                .max(k.spill_load_bytes);
            assert!(
                worst > 0 && worst <= *most,
                "{target}: {name}: {} B stack, {} B stored, {} B loaded, listed in KNOWN_SPILLS \
                 with at most {most} B (grown, or gone: update the list)",
                k.stack_bytes,
                k.spill_store_bytes,
                k.spill_load_bytes
            );
            continue;
        }
        assert_eq!(
            (k.spill_store_bytes, k.spill_load_bytes),
            (0, 0),
            "{target}: {name} spills"
        );
        assert_eq!(
            k.stack_bytes, 0,
            "{target}: {name} has a stack frame (a register tile went to local memory)"
        );
        assert!(k.registers <= 255, "{name}: {} registers", k.registers);
    }
    // The step's grid runs B·NH = 64 at DHV = 512 (512 blocks) in one wave only with four
    // blocks of 256 threads per SM: at most 64 registers per thread (`params::step` docs). The
    // driver compiles the PTX itself; `tfla-bench --step` prints what it allocated.
    for name in tfla_params::step::entry_names() {
        let k = report.iter().find(|k| k.name == name).unwrap();
        assert!(
            k.registers <= tfla_params::step::MAX_REGISTERS,
            "{target}: {name}: {} registers, more than {} (four blocks per SM)",
            k.registers,
            tfla_params::step::MAX_REGISTERS
        );
    }
}

#[test]
fn hopper_module_assembles_without_spills() {
    assemble_without_spills(PtxArch::Sm90a, Arch::DEFAULT.name());
}

/// The portable module as each card family's driver would compile it: Ampere (A100; A10,
/// RTX 30), Ada (L4, L40, RTX 40), Hopper, Blackwell (B200; RTX 50).
#[test]
fn portable_module_assembles_without_spills_for_every_card_from_ampere_on() {
    std::thread::scope(|scope| {
        for target in Arch::PORTABLE_TARGETS {
            scope.spawn(move || assemble_without_spills(PtxArch::Sm80, target));
        }
    });
}

/// The size of `name`'s one parameter in the PTX (`.param .align 8 .b8 NAME_param_0[SIZE]`);
/// fails if the entry has none or a second one.
fn param_bytes(name: &str) -> usize {
    let decl = format!("{name}_param_0[");
    let line = tfla::runtime::PTX_HOPPER
        .lines()
        .find(|l| l.contains(&decl))
        .unwrap_or_else(|| panic!("{name}: no parameter"));
    assert!(
        !tfla::runtime::PTX_HOPPER.contains(&format!("{name}_param_1")),
        "{name} takes a second parameter"
    );
    line.split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn every_entry_takes_the_parameter_struct_the_host_passes() {
    // SIZE must be the host's size_of the params struct (the struct is shared, but this catches
    // a kernel taking anything else by value).
    let checks = [
        (
            fwd_entry_names(PtxArch::Sm90a),
            std::mem::size_of::<tfla_params::fwd::FwdParams>(),
            "FwdParams",
        ),
        (
            bwd_entry_names(PtxArch::Sm90a),
            std::mem::size_of::<tfla_params::bwd::BwdParams>(),
            "BwdParams",
        ),
        (
            tfla_params::step::entry_names().collect(),
            std::mem::size_of::<tfla_params::step::StepParams>(),
            "StepParams",
        ),
        (
            vec![tfla_params::seqs::pack::ENTRY],
            std::mem::size_of::<tfla_params::seqs::PackParams>(),
            "PackParams",
        ),
    ];
    for (names, size, what) in checks {
        for name in names {
            let bytes = param_bytes(name);
            assert_eq!(
                bytes, size,
                "{name}: PTX parameter is {bytes} bytes, {what} is {size}"
            );
        }
    }
}

/// The PTX body of entry `name` (from its `.entry` line to the closing brace).
fn entry_body(name: &str) -> &'static str {
    let ptx = tfla::runtime::PTX_HOPPER;
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("{name} missing"));
    let end = ptx[start..].find("\n}").map_or(ptx.len(), |e| start + e);
    &ptx[start..end]
}

#[test]
fn step_kernels_move_the_state_in_16_byte_vectors() {
    // The step is memory-bound: C̃ must travel as 16-byte vectors, and ñ, m are handed over
    // through the per-head arrival counter (one acquire-release atomic per block).
    for name in tfla_params::step::entry_names() {
        let body = entry_body(name);
        for instr in [
            "ld.global.v4.b32",
            "st.global.v4.b32",
            "atom.acq_rel.gpu.global.add.u32",
        ] {
            assert!(body.contains(instr), "{name} lacks {instr}");
        }
    }
}
