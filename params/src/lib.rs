//! The one owner of tfla's launch configuration, compiled into both the device crate (`kernels/`,
//! nvptx64) and the host crate: kernel parameter structs (`#[repr(C)]`, passed by value), tile
//! shapes, shared-memory sizes and grids. The host never repeats a kernel constant.
//!
//! Notation: B batch, NH heads, S sequence length, DQK query/key head dim, DHV value head dim,
//! L chunk size, NC = ceil(S / L) chunks, BH = B·NH.
#![no_std]

#[cfg(test)]
extern crate std;

#[macro_use]
mod unroll;

pub mod bwd;
pub mod entries;
pub mod fragment;
pub mod fwd;
pub mod seqs;
pub mod step;

/// Threads in a warp.
pub const WARP: u32 = 32;

/// Granularity of the head dims: every head dim is a multiple of this (the `mma.sync` k-step).
pub const HEAD_DIM_MULTIPLE: u32 = 16;
/// Largest supported head dim (DQK and DHV), bounded by the chunk-output kernel's shared memory.
pub const MAX_HEAD_DIM: u32 = 512;
/// Chunk sizes the kernels support: multiples of the row tile, powers of two.
pub const CHUNK_SIZES: [u32; 5] = [64, 128, 256, 512, 1024];

/// What the launch plan needs to know of the device a module runs on: the shared memory a
/// block may opt in to, and whether the loaded PTX has the `wgmma` kernels (the sm_90a module,
/// on compute capability 9.0). Every kernel choice that depends on the card goes through this
/// ([`fwd::state_kernel`], [`fwd::output_kernel`], [`fwd::use_fused`], [`bwd::use_state_wg`],
/// [`bwd::use_chunk`]), so a card with less shared memory gets the kernels that fit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// Maximum dynamic shared memory per block after opting in, in bytes.
    pub smem_optin: u32,
    /// The sm_90a module is loaded (its `wgmma` kernels exist, and the kernels that read the
    /// state-gradient dots were compiled for the `wgmma` tile where it applies).
    pub wgmma: bool,
}

impl Device {
    /// H100 and H200 (compute capability 9.0) with the sm_90a module.
    pub const HOPPER: Device = Device::new(227 * 1024, true);
    /// The portable sm_80 module on a card with 227 KB per block: Hopper forced onto the
    /// portable path, B200 (10.0).
    pub const PORTABLE_227K: Device = Device::new(227 * 1024, false);
    /// A100 (8.0): 163 KB per block.
    pub const AMPERE_A100: Device = Device::new(163 * 1024, false);
    /// A10, RTX 30 (8.6), L4, L40, RTX 40 (8.9), RTX 50 (12.0): 99 KB per block.
    pub const SMALL_SMEM_99K: Device = Device::new(99 * 1024, false);
    /// The limit sets the plan is tested against (and the GPU tests can force with
    /// `TFLA_SMEM_LIMIT_KB`).
    pub const LIMIT_SETS: [Device; 4] = [
        Device::HOPPER,
        Device::PORTABLE_227K,
        Device::AMPERE_A100,
        Device::SMALL_SMEM_99K,
    ];

    pub const fn new(smem_optin: u32, wgmma: bool) -> Self {
        Device { smem_optin, wgmma }
    }

    /// Whether a block of `smem` bytes of dynamic shared memory can launch.
    pub const fn fits(&self, smem: u32) -> bool {
        smem <= self.smem_optin
    }
}

/// One kernel launch of a pass's plan: the entry point, the grid, threads per block and the
/// dynamic shared memory in bytes. The plans ([`fwd::plan`], [`bwd::plan`]) are the one place
/// launches are spelled; the host checks them against the device and launches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub name: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub smem: u32,
}

impl Launch {
    /// Whether the grid is within CUDA's limits: x below 2^31, y and z at most 65535, none 0
    /// (a very long S puts its row tiles on y, B·NH goes on y or z).
    pub const fn grid_fits(&self) -> bool {
        let (x, y, z) = self.grid;
        x > 0 && y > 0 && z > 0 && x <= i32::MAX as u32 && y <= 65_535 && z <= 65_535
    }
}

/// A pass's launches in order: at most [`Plan::MAX`], no allocation (the crate is `no_std`).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    launches: [Launch; Plan::MAX],
    len: usize,
}

impl Plan {
    /// The backward's longest plan: rows, state, scores, dq, dk, dv, gates, max path.
    pub const MAX: usize = 8;
    const NONE: Launch = Launch {
        name: "",
        grid: (0, 0, 0),
        threads: 0,
        smem: 0,
    };

    pub const fn new() -> Self {
        Plan {
            launches: [Plan::NONE; Plan::MAX],
            len: 0,
        }
    }

    /// Appends a launch (a plan of more than [`Plan::MAX`] is a bug of this crate).
    pub fn push(&mut self, launch: Launch) {
        self.launches[self.len] = launch;
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[Launch] {
        &self.launches[..self.len]
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan::new()
    }
}

/// A device pointer of a pass's parameters as its kernels use it: the field's name, its
/// address (0: absent), whether the pass needs it, and the alignment in bytes its widest
/// access needs. The passes list theirs ([`fwd::pointers`], [`bwd::pointers`],
/// [`step::pointers`]); the host checks every launch's list before it launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    pub name: &'static str,
    pub addr: u64,
    pub required: bool,
    pub align: u64,
}

impl Pointer {
    pub const fn required(name: &'static str, addr: u64, align: u64) -> Self {
        Pointer {
            name,
            addr,
            required: true,
            align,
        }
    }

    pub const fn optional(name: &'static str, addr: u64, align: u64) -> Self {
        Pointer {
            name,
            addr,
            required: false,
            align,
        }
    }

    /// Required when `needed`, optional otherwise.
    pub const fn required_if(needed: bool, name: &'static str, addr: u64, align: u64) -> Self {
        Pointer {
            name,
            addr,
            required: needed,
            align,
        }
    }
}

/// A pass's pointer struct (`fwd::FwdPointers`, `bwd::BwdPointers`, `step::StepPointers`),
/// whose fields its pass's list names: the list is the one place a field's name is spelled,
/// so callers that hold buffers by name (the Python binding) set them through it.
///
/// # Safety
/// The type is `#[repr(C)]` and made only of `u64` fields.
pub unsafe trait PointerStruct: Copy + Default {
    /// Calls `f` with each pointer the pass's list gives for `p`.
    fn each(p: &Self, f: &mut dyn FnMut(Pointer));

    /// The struct with every field the list names set to `addr(name)` (0 where that gives
    /// none), and how many names `addr` answered: fewer than the caller holds means it holds
    /// names the list lacks. One probe and one walk of the list, whatever the count.
    fn from_names(addr: impl Fn(&str) -> Option<u64>) -> (Self, usize) {
        let words = core::mem::size_of::<Self>() / 8;
        // A probe whose every field holds its own index + 1: the list then says which field
        // carries each name.
        let mut probe = Self::default();
        let base = &mut probe as *mut Self as *mut u64;
        for w in 0..words {
            // SAFETY: the type is `words` u64 fields (the trait's contract).
            unsafe { base.add(w).write(w as u64 + 1) };
        }
        let mut out = Self::default();
        let out_base = &mut out as *mut Self as *mut u64;
        let mut answered = 0;
        Self::each(&probe, &mut |p| {
            if let Some(a) = addr(p.name) {
                // SAFETY: as above; the probe's value is the field's index + 1 < words + 1.
                unsafe { out_base.add(p.addr as usize - 1).write(a) };
                answered += 1;
            }
        });
        (out, answered)
    }
}

/// Which kernels a pass runs for its inputs: q, k, v in 16 bits on the tensor cores, or f32
/// on the CUDA cores (tensor-core products would round them to 16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    TensorCores(Dtype),
    F32,
}

/// Element type of q, k, v, h (gates and states are always f32).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16 = 0,
    F16 = 1,
}

/// Gate variant as the kernels see it (the host's `Variant` maps onto this).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gates {
    /// mLSTMexp: exponential input gate, max-state stabilizer, normalizer.
    Exp = 0,
    /// mLSTMsig with the normalizer.
    Sig = 1,
    /// mLSTMsig without the normalizer (h = Cᵀq̂, n never formed).
    SigNoNorm = 2,
}

/// Registers per thread left to a kernel of `threads` threads per block when `blocks` blocks
/// share one SM (65,536 registers; allocated per thread in units of 8).
pub const fn register_budget(threads: u32, blocks: u32) -> u32 {
    65536 / (threads * blocks) / 8 * 8
}

/// `ceil(a / b)` for the grid arithmetic.
pub const fn div_ceil(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// Round `a` up to a multiple of `b`.
pub const fn round_up(a: u32, b: u32) -> u32 {
    div_ceil(a, b) * b
}

#[cfg(test)]
mod pointer_struct_tests {
    use super::*;
    use std::vec::Vec;

    /// Every name of a pass's list sets its own field and nothing else; an unknown name sets
    /// nothing and is not counted.
    fn round_trip<T: PointerStruct + PartialEq + core::fmt::Debug>() {
        let mut names = Vec::new();
        T::each(&T::default(), &mut |p| names.push(p.name));
        assert!(!names.is_empty());
        for (n, name) in names.iter().enumerate() {
            let (p, answered) = T::from_names(|q| (q == *name).then_some(0x1000 + n as u64));
            assert_eq!(answered, 1, "{name}");
            let mut seen = Vec::new();
            T::each(&p, &mut |q| seen.push((q.name, q.addr)));
            for (other, addr) in seen {
                let want = if other == *name { 0x1000 + n as u64 } else { 0 };
                assert_eq!(addr, want, "setting {name} changed {other}");
            }
        }
        let (p, answered) = T::from_names(|q| (q == "no_such_buffer").then_some(1));
        assert_eq!(answered, 0);
        assert_eq!(p, T::default());
    }

    #[test]
    fn every_listed_pointer_is_set_by_its_name() {
        round_trip::<fwd::FwdPointers>();
        round_trip::<bwd::BwdPointers>();
        round_trip::<step::StepPointers>();
    }
}
