//! The PTX the host embeds: every registered entry point is present, nothing is left
//! unresolved, and (where ptxas is installed) every kernel assembles for sm_90 with no spills
//! and no stack frame (a register tile in local memory shows up as one).
use tfla_params::fwd::{FwdKernel, entry_name};
use tfla_params::{Dtype, Gates};
use tfla_ptx_build::{Arch, entry_points, find_ptxas, ptxas_report, unresolved_externs};

fn all_entry_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    for kernel in [
        FwdKernel::ChunkGates,
        FwdKernel::ChunkState,
        FwdKernel::ChunkOutput,
    ] {
        for gates in [Gates::Exp, Gates::Sig, Gates::SigNoNorm] {
            for dtype in [Dtype::Bf16, Dtype::F16] {
                names.push(entry_name(kernel, gates, dtype));
            }
        }
    }
    for gates in [Gates::Exp, Gates::Sig, Gates::SigNoNorm] {
        names.push(tfla_params::fwd::recurrent::entry_name(gates));
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn embedded_ptx_has_every_entry_point_and_no_externs() {
    let entries = entry_points(tfla::runtime::PTX);
    for name in all_entry_names() {
        assert!(
            entries.iter().any(|e| e == name),
            "entry point {name} missing from the PTX"
        );
    }
    assert!(unresolved_externs(tfla::runtime::PTX).is_empty());
    for instr in [
        "mma.sync.aligned.m16n8k16",
        "ldmatrix.sync.aligned",
        "cp.async.cg.shared.global",
    ] {
        assert!(
            tfla::runtime::PTX.contains(instr),
            "the kernels are meant to use {instr}"
        );
    }
}

#[test]
fn ptxas_assembles_every_kernel_without_spills() {
    let Some(ptxas) = find_ptxas() else {
        // Not a pass in disguise: the message is printed and the test name says what it checks.
        eprintln!(
            "SKIPPED ptxas_assembles_every_kernel_without_spills: no ptxas on PATH or in CUDA_PATH"
        );
        return;
    };
    let report = ptxas_report(&ptxas, tfla::runtime::PTX, Arch::Sm90).expect("ptxas failed");
    for name in all_entry_names() {
        let k = report
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("{name} not in ptxas report"));
        eprintln!(
            "{name}: {} registers, {} B stack, {} B spilled",
            k.registers, k.stack_bytes, k.spill_store_bytes
        );
        assert_eq!(
            (k.spill_store_bytes, k.spill_load_bytes),
            (0, 0),
            "{name} spills"
        );
        assert_eq!(
            k.stack_bytes, 0,
            "{name} has a stack frame (a register tile went to local memory)"
        );
        assert!(k.registers <= 255, "{name}: {} registers", k.registers);
    }
}

#[test]
fn every_entry_takes_the_parameter_struct_the_host_passes() {
    // Each entry is declared `.param .align 8 .b8 NAME_param_0[SIZE]`: SIZE must be the host's
    // size_of::<FwdParams>() (the struct is shared, but this catches a kernel taking anything
    // else by value).
    let size = std::mem::size_of::<tfla_params::fwd::FwdParams>();
    for name in all_entry_names() {
        let decl = format!("{name}_param_0[");
        let line = tfla::runtime::PTX
            .lines()
            .find(|l| l.contains(&decl))
            .unwrap_or_else(|| panic!("{name}: no parameter"));
        let bytes: usize = line
            .split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(
            bytes, size,
            "{name}: PTX parameter is {bytes} bytes, FwdParams is {size}"
        );
        assert!(
            !tfla::runtime::PTX.contains(&format!("{name}_param_1")),
            "{name} takes a second parameter"
        );
    }
}
