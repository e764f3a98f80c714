//! Forward pass: the chunk-state kernel (inter-chunk recurrence, writes C, n, m at every chunk
//! boundary) and the chunk-output kernel (H of one row tile of one chunk, TFLA's second level of
//! parallelism). Both take [`FwdParams`] by value.

use crate::{Device, Dtype, Gates, Launch, Path, Plan, Pointer, WARP, div_ceil};

/// Device addresses of every tensor the forward kernels read or write (0 where absent); every
/// tensor is contiguous, row-major, in the shape its comment gives. Part of [`FwdParams`];
/// also the host's raw-pointer entry point takes it as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FwdPointers {
    /// (BH, S, DQK) in the input dtype.
    pub q: u64,
    /// (BH, S, DQK) in the input dtype.
    pub k: u64,
    /// (BH, S, DHV) in the input dtype.
    pub v: u64,
    /// Input-gate pre-activations ĩ: (BH, S) f32.
    pub i: u64,
    /// Forget-gate pre-activations f̃: (BH, S) f32.
    pub f: u64,
    /// Initial state C̃0: (BH, DQK, DHV) f32, or 0 for zeros. With `slots`, a state pool
    /// (num_slots·NH, DQK, DHV) instead; likewise ñ0, m0 and the final states, all indexed by
    /// the *state head* (see `slots`). Read by chunk_state (recurrent_f32), each thread its own
    /// elements once, before it writes the same elements of `c_final`: so `c_final` may be this
    /// very memory (in place).
    pub c0: u64,
    /// Initial normalizer ñ0: (BH, DQK) f32, or 0 for zeros. Read only by chunk_gates, which
    /// copies it into `n_states` at chunk 0 (where the later kernels read it), so `n_final` may
    /// be this memory. Ignored without the normalizer (the host passes 0).
    pub n0: u64,
    /// Initial max state m0: (BH,) f32, or 0 for zeros (exp gates only). Read only by
    /// chunk_gates, which copies it into `m_states` at chunk 0, so `m_final` may be this memory.
    pub m0: u64,
    /// States before each chunk, C̃_k: (BH, NC, DQK, DHV) in the input dtype (the output
    /// kernel's `mma` consumes it rounded to that dtype anyway). Written by chunk_state.
    /// Every chunk-state tensor is required, except that C̃_k may be 0 where the forward runs
    /// as one kernel ([`use_fused`]): `chunk_fused` then stores no C̃_k, which only a backward
    /// reads (the host allows it for a forward no backward follows).
    pub c_states: u64,
    /// ñ_k: (BH, NC, DQK) f32. Written by chunk_state.
    pub n_states: u64,
    /// m_k: (BH, NC) f32. Written by chunk_state.
    pub m_states: u64,
    /// Final states after the last step, all three or none (0): (BH, DQK, DHV), (BH, DQK),
    /// (BH,) f32, indexed by the state head as c0 (with `slots`, the pool). Without the
    /// normalizer the kernels write ñ_final = 0 and no ñ in the chunk states after chunk 0.
    pub c_final: u64,
    pub n_final: u64,
    pub m_final: u64,
    /// Output h: (BH, S, DHV) in the input dtype. Written by chunk_output.
    pub h: u64,
    /// Gate vectors written by chunk_gates, read by the other kernels (and kept for the
    /// backward pass): per step, inside its chunk, b = Σλ (inclusive), u = ι − b and
    /// cm = running max of u (stabilized variant only): (BH, NC·L) f32 each, rows padded to
    /// whole chunks so every chunk starts 16-byte aligned; per chunk g = b at the chunk's last
    /// step: (BH, NC) f32.
    pub gate_b: u64,
    pub gate_u: u64,
    pub gate_cm: u64,
    pub gate_g: u64,
    /// Per-row max state m_i: (BH, S) f32, or 0 (kept for the backward pass).
    pub m_rows: u64,
    /// Per-row signed normalizer readout s_i = ñ_iᵀq̂_i (the denominator is
    /// max(|s_i|, floor_i) + eps): (BH, S) f32, or 0; the backward pass needs it.
    pub norm_rows: u64,
    /// State-pool slot of each batch row: (B,) u32, or 0 for none. Head bh = b·NH + h reads
    /// its initial states from and writes its final states to *state head* `slots[b]·NH + h` of
    /// c0, n0, m0, c_final, n_final, m_final (without slots: state head bh). The host checks
    /// that every slot is below the pool's slot count and that no two rows share one (two
    /// rows writing one slot would race).
    pub slots: u64,
    /// Packed variable-length batch (`crate::seqs`): the first chunk of each of the
    /// `FwdParams::seqs` sequences and the end, (seqs + 1,) u32; 0 for one sequence per head.
    /// With it, B = 1, sequence n's initial and final states are those of batch row n (of the
    /// slot of row n, with `slots`).
    pub seq_chunks: u64,
}

/// Parameters of every forward kernel, passed by value. Built only from validated host
/// arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FwdParams {
    pub ptr: FwdPointers,
    pub bh: u32,
    /// NH: heads per batch row (maps a head to its batch row's slot).
    pub nh: u32,
    pub s: u32,
    pub dqk: u32,
    pub dhv: u32,
    /// Chunk size L (one of `CHUNK_SIZES`).
    pub chunk: u32,
    /// NC = ceil(S / L).
    pub num_chunks: u32,
    /// q̂ = q·scale.
    pub scale: f32,
    pub eps: f32,
    /// Sequences per head (1 unless `ptr.seq_chunks` is set).
    pub seqs: u32,
}

/// Padding, in elements, added to every shared-memory row of 16-bit elements: rows then start
/// 16 bytes apart modulo 128, so the 8 row addresses of one `ldmatrix` 8×8 load hit 8 different
/// 16-byte bank groups.
pub const SMEM_ROW_PAD: u32 = 8;

/// Chunk-state kernel: one block owns a TILE_QK × TILE_HV tile of one head's state and walks
/// the chunks in order; each warp owns 16 rows (DQK) of the tile.
pub mod state {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Rows (DQK) of the state tile: 16 per warp.
    pub const TILE_QK: u32 = 16 * WARPS;
    /// Columns (DHV) of the state tile, all of them held by every warp (register accumulator
    /// 16 × TILE_HV per warp).
    pub const TILE_HV: u32 = 128;
    /// Time steps of K and V staged in shared memory per step of the chunk loop.
    pub const SUB_L: u32 = 64;
    /// Sub-tiles in flight: the next one loads while this one multiplies.
    pub const STAGES: u32 = 2;
    pub const TILES: StateTiles = StateTiles {
        qk: TILE_QK,
        hv: TILE_HV,
        sub_l: SUB_L,
        stages: STAGES,
    };
}

/// The chunk-state kernel's wide shape, for large states: 8 warps as WARPS_M (DQK) × WARPS_N
/// (DHV), each owning a 64 × 64 sub-tile (4 m-tiles × 8 n-blocks) of a 128 × 256 state tile.
/// Each staged K and V sub-tile feeds 4× the state of the narrow shape (half the L2 bytes per
/// FLOP), and each B fragment loaded from shared memory feeds 4 m-tiles instead of one. One
/// block per SM (~245 registers × 256 threads), so the pipeline is three stages deep.
pub mod state_wide {
    use super::*;
    pub const WARPS_M: u32 = 2;
    pub const WARPS_N: u32 = 4;
    pub const WARPS: u32 = WARPS_M * WARPS_N;
    pub const THREADS: u32 = WARPS * WARP;
    /// Rows (DQK) and columns (DHV) of one warp's sub-tile.
    pub const WARP_QK: u32 = 64;
    pub const WARP_HV: u32 = 64;
    pub const TILE_QK: u32 = WARPS_M * WARP_QK;
    pub const TILE_HV: u32 = WARPS_N * WARP_HV;
    pub const SUB_L: u32 = 64;
    pub const STAGES: u32 = 3;
    pub const TILES: StateTiles = StateTiles {
        qk: TILE_QK,
        hv: TILE_HV,
        sub_l: SUB_L,
        stages: STAGES,
    };
}

/// Alignment of the tiles the `wgmma` kernels stage in the 128-byte swizzle (one 8-row atom,
/// whose XOR pattern follows the address bits); those kernels round the dynamic shared memory
/// up to it, so their `smem_bytes` count it once more.
pub const SW128_ALIGN: u32 = 1024;

/// The wide chunk-state shape on `wgmma` (sm_90a builds; `chunk_state_wg`), taken wherever
/// [`wide_state`] picks the wide shape: the same 128 × 256 state tile, held by two warpgroups
/// of 64 rows each as m64n256 accumulators. Per 16 steps a warp weights one A fragment of K̃ᵀ
/// (its 16 rows) and its warpgroup issues one `wgmma` with V read from shared memory (128-byte
/// swizzle), where the `mma.sync` shape loads 4 A and 8 B fragments and issues 32 `mma`s per
/// warp.
pub mod state_wg {
    use super::*;
    pub const WARPGROUPS: u32 = 2;
    pub const WARPS: u32 = 4 * WARPGROUPS;
    pub const THREADS: u32 = WARPS * WARP;
    /// The state tile: 64 DQK rows per warpgroup (the M of `wgmma`) × 256 DHV columns (N).
    pub const TILE_QK: u32 = 64 * WARPGROUPS;
    pub const TILE_HV: u32 = 256;
    pub const SUB_L: u32 = 64;
    pub const STAGES: u32 = 3;
    pub use super::SW128_ALIGN as ALIGN;
    /// One V sub-tile, SUB_L × TILE_HV, swizzled (panels of 64 columns).
    pub const fn v_bytes() -> u32 {
        SUB_L * TILE_HV * 2
    }
    /// One K sub-tile, SUB_L × TILE_QK, padded rows (read with `ldmatrix.trans`).
    pub const fn k_bytes() -> u32 {
        SUB_L * (TILE_QK + SMEM_ROW_PAD) * 2
    }
    /// ALIGN, STAGES × V sub-tile, STAGES × (K sub-tile, its u: SUB_L f32), the tile of C̃_k
    /// staged for its store (TILE_QK × TILE_HV, 16-bit, padded rows).
    pub const fn smem_bytes() -> u32 {
        ALIGN
            + STAGES * (v_bytes() + k_bytes() + SUB_L * 4)
            + TILE_QK * (TILE_HV + SMEM_ROW_PAD) * 2
    }
    const _: () = assert!(
        TILE_QK == state_wide::TILE_QK && TILE_HV == state_wide::TILE_HV,
        "the grid of `state_wide::TILES` serves both wide kernels"
    );
}

/// A chunk-state tile shape (`state`, `state_wide`) and what follows from it: shared memory,
/// STAGES × (K sub-tile sub_l × qk, V sub-tile sub_l × hv, 16-bit, padded rows; the
/// sub-tile's u, sub_l f32), then the tile of C̃_k staged for its store (qk × hv, 16-bit,
/// padded rows); and the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTiles {
    /// Rows (DQK) and columns (DHV) of the state tile of one block.
    pub qk: u32,
    pub hv: u32,
    /// Time steps per staged sub-tile, and sub-tiles in flight.
    pub sub_l: u32,
    pub stages: u32,
}

impl StateTiles {
    pub const fn k_bytes(&self) -> u32 {
        self.sub_l * (self.qk + SMEM_ROW_PAD) * 2
    }
    pub const fn v_bytes(&self) -> u32 {
        self.sub_l * (self.hv + SMEM_ROW_PAD) * 2
    }
    pub const fn stage_bytes(&self) -> u32 {
        self.k_bytes() + self.v_bytes() + self.sub_l * 4
    }
    pub const fn staging_bytes(&self) -> u32 {
        self.qk * (self.hv + SMEM_ROW_PAD) * 2
    }
    pub const fn smem_bytes(&self) -> u32 {
        self.stages * self.stage_bytes() + self.staging_bytes()
    }
    /// (tiles of the state, BH, sequences): x enumerates (DQK tile, DHV tile) with the DHV
    /// tile fastest; each block walks the chunks of one sequence.
    pub const fn grid(&self, p: &FwdParams) -> (u32, u32, u32) {
        (
            div_ceil(p.dqk, self.qk) * div_ceil(p.dhv, self.hv),
            p.bh,
            p.seqs,
        )
    }
}

/// Which chunk-state shape a head shape runs: the wide one where its tile is mostly inside
/// the state (DQK ≥ 128 and DHV ≥ 256: the 512/512 and 256/512 heads), the narrow one
/// otherwise (at 128/128 a wide tile would be half empty, and the grid too small to fill the
/// SMs: 128 heads give 128 blocks).
pub const fn wide_state(dqk: u32, dhv: u32) -> bool {
    dqk >= state_wide::TILE_QK && dhv >= state_wide::TILE_HV
}

/// The chunk-state kernel's shape for the head dims on `dev`: the wide tile where
/// [`wide_state`] wants it (on `wgmma` in the sm_90a module, else the `mma.sync` wide kernel
/// where its shared memory fits), the narrow one otherwise.
pub const fn state_kernel(dev: &Device, dqk: u32, dhv: u32) -> FwdKernel {
    if !wide_state(dqk, dhv) {
        FwdKernel::ChunkState
    } else if dev.wgmma {
        FwdKernel::ChunkStateWg
    } else if dev.fits(state_wide::TILES.smem_bytes()) {
        FwdKernel::ChunkStateWide
    } else {
        FwdKernel::ChunkState
    }
}

/// The chunk-output kernel on `dev`: on `wgmma` in the sm_90a module where its tile suits the
/// shape ([`output_wg::applies`]), else the `mma.sync` kernel (which fits 99 KB at every shape).
pub const fn output_kernel(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> FwdKernel {
    if dev.wgmma && output_wg::applies(chunk, dqk, dhv) {
        FwdKernel::ChunkOutputWg
    } else {
        FwdKernel::ChunkOutput
    }
}

/// Whether the forward runs states and outputs in one kernel on `dev` ([`fused::applies`],
/// where its ~200 KB of shared memory fit).
pub const fn use_fused(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> bool {
    fused::applies(chunk, dqk, dhv) && dev.fits(fused::smem_bytes())
}

/// The chunk-state launch in the shape [`state_kernel`] picks for the head dims on `dev`.
fn state_launch(dev: &Device, p: &FwdParams, gates: Gates, dtype: Dtype) -> Launch {
    let kernel = state_kernel(dev, p.dqk, p.dhv);
    let name = entry_name(kernel, gates, dtype);
    match kernel {
        FwdKernel::ChunkStateWg => Launch {
            name,
            grid: state_wide::TILES.grid(p),
            threads: state_wg::THREADS,
            smem: state_wg::smem_bytes(),
        },
        FwdKernel::ChunkStateWide => Launch {
            name,
            grid: state_wide::TILES.grid(p),
            threads: state_wide::THREADS,
            smem: state_wide::TILES.smem_bytes(),
        },
        _ => Launch {
            name,
            grid: state::TILES.grid(p),
            threads: state::THREADS,
            smem: state::TILES.smem_bytes(),
        },
    }
}

/// The chunk-output launch [`output_kernel`] picks on `dev`.
fn output_launch(dev: &Device, p: &FwdParams, gates: Gates, dtype: Dtype) -> Launch {
    let kernel = output_kernel(dev, p.chunk, p.dqk, p.dhv);
    let name = entry_name(kernel, gates, dtype);
    if matches!(kernel, FwdKernel::ChunkOutputWg) {
        Launch {
            name,
            grid: output_wg::grid(p),
            threads: output_wg::THREADS,
            smem: output_wg::smem_bytes(p.chunk, p.dqk),
        }
    } else {
        Launch {
            name,
            grid: output::grid(p),
            threads: output::THREADS,
            smem: output::smem_bytes(p.chunk, p.dqk),
        }
    }
}

/// The launches of the forward pass on `dev`, in order: the gate vectors, then for 16-bit
/// inputs the chunk states and chunk outputs on the tensor cores (in one kernel for the small
/// heads where [`use_fused`]), for f32 inputs the f32 recurrence (which writes the same
/// outputs). With `states_only`, the one launch that writes the chunk states (a state kernel
/// or the recurrence): the gate vectors are still there.
pub fn plan(dev: &Device, p: &FwdParams, gates: Gates, path: Path, states_only: bool) -> Plan {
    let chunk_gates = Launch {
        // The gate kernel has no element type; its name does not depend on the one passed.
        name: entry_name(FwdKernel::ChunkGates, gates, Dtype::Bf16),
        grid: self::gates::grid(p),
        threads: self::gates::THREADS,
        smem: self::gates::smem_bytes(p.chunk),
    };
    let mut plan = Plan::new();
    match path {
        Path::F32 => {
            if !states_only {
                plan.push(chunk_gates);
            }
            plan.push(Launch {
                name: recurrent::entry_name(gates),
                grid: recurrent::grid(p),
                threads: recurrent::THREADS,
                smem: recurrent::smem_bytes(p.dqk),
            });
        }
        Path::TensorCores(dtype) if states_only => plan.push(state_launch(dev, p, gates, dtype)),
        Path::TensorCores(dtype) if use_fused(dev, p.chunk, p.dqk, p.dhv) => {
            plan.push(chunk_gates);
            plan.push(Launch {
                name: entry_name(FwdKernel::ChunkFused, gates, dtype),
                grid: fused::grid(p),
                threads: fused::THREADS,
                smem: fused::smem_bytes(),
            });
        }
        Path::TensorCores(dtype) => {
            plan.push(chunk_gates);
            plan.push(state_launch(dev, p, gates, dtype));
            plan.push(output_launch(dev, p, gates, dtype));
        }
    }
    plan
}

/// The forward's pointers: q, k, v and the gates in, h, the chunk states and the gate vectors
/// out are required; initial and final states, row statistics and slots are optional (the
/// host checks that the final states come all three or none, and where C̃_k may be left
/// out: [`FwdPointers::c_states`]). Alignments: 16 bytes where a kernel moves 16-byte vectors
/// (q, k, v, C̃0, the C̃ states, u), 8 for pairs of f32 (the final C̃), 4 for the rest.
pub const fn pointers(p: &FwdPointers) -> [Pointer; 22] {
    use Pointer as P;
    [
        P::required("q", p.q, 16),
        P::required("k", p.k, 16),
        P::required("v", p.v, 16),
        P::required("i", p.i, 4),
        P::required("f", p.f, 4),
        P::required("h", p.h, 4),
        P::optional("c_states", p.c_states, 16),
        P::required("n_states", p.n_states, 4),
        P::required("m_states", p.m_states, 4),
        P::required("gate_b", p.gate_b, 4),
        P::required("gate_u", p.gate_u, 16),
        P::required("gate_cm", p.gate_cm, 4),
        P::required("gate_g", p.gate_g, 4),
        P::optional("c0", p.c0, 16),
        P::optional("n0", p.n0, 4),
        P::optional("m0", p.m0, 4),
        P::optional("c_final", p.c_final, 8),
        P::optional("n_final", p.n_final, 4),
        P::optional("m_final", p.m_final, 4),
        P::optional("m_rows", p.m_rows, 4),
        P::optional("norm_rows", p.norm_rows, 4),
        P::optional("slots", p.slots, 4),
    ]
}

/// The grid of a chunk-output kernel with tiles of `tile_q` rows × `tile_hv` value columns:
/// (DHV tiles, NC · L / tile_q row tiles, BH); the DHV tiles of one row tile run side by side,
/// so its Q and K tiles are read from L2 while still there.
pub const fn output_grid(p: &FwdParams, tile_q: u32, tile_hv: u32) -> (u32, u32, u32) {
    (
        div_ceil(p.dhv, tile_hv),
        p.num_chunks * (p.chunk / tile_q),
        p.bh,
    )
}

/// Chunk-output kernel: one block owns TILE_Q rows of one chunk and TILE_HV value columns;
/// it adds the inter-chunk term Q·C̃_k and then walks the key tiles of the chunk up to the
/// diagonal, streaming KD-wide slices of Q with slices of C̃_k or K, and V tiles, through a
/// STAGES-deep ring (shared memory independent of DQK).
pub mod output {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Query rows per block: 16 per warp.
    pub const TILE_Q: u32 = 16 * WARPS;
    /// Key rows per step of the intra-chunk loop (equal to TILE_Q, so the diagonal tile is one).
    pub const TILE_K: u32 = TILE_Q;
    /// Value columns per block (register accumulator 16 × TILE_HV per warp).
    pub const TILE_HV: u32 = 128;
    /// Rows of C̃_k per item of the inter-chunk part.
    pub const TILE_C: u32 = 64;
    /// Columns (DQK) of K per item of the intra-chunk part.
    pub const KD: u32 = 64;
    /// Items in flight: the next one loads while the current one multiplies.
    pub const STAGES: u32 = 2;

    /// One stage of the Q ring: a KD-wide slice of the Q tile (TILE_Q × KD, 16-bit, padded).
    pub const fn q_bytes() -> u32 {
        TILE_Q * (KD + SMEM_ROW_PAD) * 2
    }
    /// One stage of the B-operand ring: a C̃_k slice (TILE_C × TILE_HV) or a K slice
    /// (TILE_K × KD), whichever is larger.
    pub const fn ring_bytes() -> u32 {
        let c = TILE_C * (TILE_HV + SMEM_ROW_PAD) * 2;
        let k = TILE_K * (KD + SMEM_ROW_PAD) * 2;
        if c > k { c } else { k }
    }
    /// One stage of the V ring (TILE_K × TILE_HV).
    pub const fn v_bytes() -> u32 {
        TILE_K * (TILE_HV + SMEM_ROW_PAD) * 2
    }
    /// f32 vectors: column gate terms (L), and per row: row gate term, inter-chunk scale,
    /// normalizer floor (3 × TILE_Q); ñ_k (DQK, zero-padded to whole TILE_C slices: the
    /// slice loop reads whole slices).
    pub const fn gate_bytes(chunk: u32, dqk: u32) -> u32 {
        (chunk + 3 * TILE_Q + div_ceil(dqk, TILE_C) * TILE_C) * 4
    }
    pub const fn smem_bytes(chunk: u32, dqk: u32) -> u32 {
        STAGES * (q_bytes() + ring_bytes() + v_bytes()) + gate_bytes(chunk, dqk)
    }

    /// [`output_grid`] of this tile.
    pub const fn grid(p: &FwdParams) -> (u32, u32, u32) {
        output_grid(p, TILE_Q, TILE_HV)
    }
}

/// The chunk-output kernel on `wgmma` (sm_90a builds; `chunk_output_wg`): the same outputs as
/// [`output`] from tiles of TILE_Q = 128 rows × TILE_HV = 256 value columns, two warpgroups of
/// 64 rows each. Against the `mma.sync` kernel's 64 × 128 tile, every staged C̃_k slice and
/// V tile feeds twice the rows, and every S = Q·Kᵀ tile serves twice the value columns, so it
/// moves half the L2 bytes per FLOP and does half the QKᵀ recompute; the operands reach the
/// tensor cores from shared memory without `ldmatrix`. The block's Q rows (all of DQK, up to
/// 128 KB) stay in shared memory from the inter-chunk term through every key tile: streamed
/// beside each K slice instead, Q was half of the L2 bytes the kernel moved at 512/512. One
/// block per SM (registers: 128 accumulators + 32 for S per thread).
pub mod output_wg {
    use super::*;
    pub const WARPGROUPS: u32 = 2;
    pub const WARPS: u32 = 4 * WARPGROUPS;
    pub const THREADS: u32 = WARPS * WARP;
    /// Query rows per block: 64 per warpgroup (the M of `wgmma`).
    pub const TILE_Q: u32 = 64 * WARPGROUPS;
    /// Key rows per step of the intra-chunk loop (the N of S's `wgmma`).
    pub const TILE_K: u32 = 64;
    /// Value columns per block (the N of the output `wgmma`s).
    pub const TILE_HV: u32 = 256;
    /// Columns (DQK) of one staged Q slice: one 128-byte swizzle panel.
    pub const KD: u32 = 64;
    /// Columns (DQK) of K per item: two Q slices' worth (two panels).
    pub const K_COLS: u32 = 2 * KD;
    /// Rows of C̃_k per item of the inter-chunk part, and keys of V per item of a key tile
    /// (two k16 steps of the output `wgmma`): every item's B operand is 16 KB.
    pub const ITEM_ROWS: u32 = 32;
    /// Stages of the ring of items (a B operand: C̃_k rows, K columns or V rows): the current
    /// item multiplies behind the previous one, whose `wgmma`s may still run, while the next
    /// three load (one block per SM has no other block to cover the latency of its loads, nor
    /// the tensor pipe's drain at a barrier).
    pub const STAGES: u32 = 5;
    pub use super::SW128_ALIGN as ALIGN;

    /// One staged Q slice: TILE_Q × KD, 16-bit, swizzled.
    pub const fn q_bytes() -> u32 {
        TILE_Q * KD * 2
    }
    /// Q slices the block holds: whole K items' worth (zero past DQK).
    pub const fn q_slices(dqk: u32) -> u32 {
        2 * div_ceil(dqk, K_COLS)
    }
    /// One stage's B operand: ITEM_ROWS rows of C̃_k or V (× TILE_HV) or a key tile's K_COLS
    /// columns of K, all the same size.
    pub const fn ring_bytes() -> u32 {
        ITEM_ROWS * TILE_HV * 2
    }
    const _: () = assert!(TILE_K * K_COLS == ITEM_ROWS * TILE_HV);
    /// ñ_k as the B operand of one m64n8 `wgmma` per Q slice: an 8-row atom each (rows: ñ's
    /// 16-bit head, its tail, six zero rows).
    pub const fn n_bytes(dqk: u32) -> u32 {
        div_ceil(dqk, KD) * ALIGN
    }
    /// f32 vectors: column gate terms (L), and per row: row gate term, inter-chunk scale,
    /// normalizer floor (3 × TILE_Q).
    pub const fn gate_bytes(chunk: u32) -> u32 {
        (chunk + 3 * TILE_Q) * 4
    }
    pub const fn smem_bytes(chunk: u32, dqk: u32) -> u32 {
        ALIGN + q_slices(dqk) * q_bytes() + STAGES * ring_bytes() + n_bytes(dqk) + gate_bytes(chunk)
    }

    /// [`output_grid`] of this tile.
    pub const fn grid(p: &FwdParams) -> (u32, u32, u32) {
        output_grid(p, TILE_Q, TILE_HV)
    }

    /// Whether an sm_90a forward takes this kernel: chunks of whole row tiles, value heads
    /// wider than the `mma.sync` kernel's 128-column tile (at DHV ≤ 128 most of a 256-column
    /// tile would be padding), and more than one K slice per key tile (DQK > 64: the shapes it
    /// was measured at against that kernel).
    pub const fn applies(chunk: u32, dqk: u32, dhv: u32) -> bool {
        chunk.is_multiple_of(TILE_Q) && dqk > KD && dhv > 128
    }
}

/// The forward in one kernel for small heads (`chunk_fused`): one block owns TILE_HV value
/// columns of one head and walks its chunks in order, holding the state's columns (all of DQK)
/// in registers; per chunk it stores C̃_k (unless `c_states` is 0: a forward no backward
/// follows) and adds the chunk's output rows (TFLA's chunk-output
/// tile with C̃_k taken from shared memory) before it advances the state. Against the
/// two-kernel forward, C̃_k never travels back from DRAM and K, V are read once for both
/// parts: at 128/128 those are 0.8 of the 2.1 GB the two kernels move. It serializes the
/// chunks of a head, so it takes the heads whose whole state fits one block's registers
/// (`applies`); the grid has DHV / TILE_HV blocks per head.
pub mod fused {
    use super::*;
    pub const WARPS: u32 = 8;
    pub const THREADS: u32 = WARPS * WARP;
    /// The chunk size it runs: each warp owns 16 rows of the chunk's output.
    pub const CHUNK: u32 = 16 * WARPS;
    /// State rows (DQK) held by the block, 16 per warp: the largest DQK it takes.
    pub const TILE_QK: u32 = 16 * WARPS;
    /// Value columns per block (register accumulators 16 × TILE_HV per warp, for the state
    /// rows and for the output rows).
    pub const TILE_HV: u32 = 64;
    /// Key columns of one S = Q·Kᵀ tile of the output part.
    pub const TILE_K: u32 = 64;
    /// Chunks in flight: the next chunk's Q, K, V and u load while this one computes.
    pub const STAGES: u32 = 2;

    /// Q and K of a chunk (CHUNK × TILE_QK, 16-bit, padded rows).
    pub const fn qk_bytes() -> u32 {
        CHUNK * (TILE_QK + SMEM_ROW_PAD) * 2
    }
    /// V of a chunk (CHUNK × TILE_HV).
    pub const fn v_bytes() -> u32 {
        CHUNK * (TILE_HV + SMEM_ROW_PAD) * 2
    }
    /// One stage: Q, K, V and the chunk's gate vectors u, b, cm (CHUNK f32 each).
    pub const fn stage_bytes() -> u32 {
        2 * qk_bytes() + v_bytes() + 3 * CHUNK * 4
    }
    /// C̃_k in the input dtype (TILE_QK × TILE_HV, padded rows): the B operand of Q·C̃_k and
    /// the staging tile of its store.
    pub const fn state_bytes() -> u32 {
        TILE_QK * (TILE_HV + SMEM_ROW_PAD) * 2
    }
    /// f32 vectors: the output's row gate terms (row term, inter-chunk scale, normalizer
    /// floor: 3 × CHUNK; the column terms come from the staged u) and ñ_k (TILE_QK).
    pub const fn gate_bytes() -> u32 {
        (3 * CHUNK + TILE_QK) * 4
    }
    pub const fn smem_bytes() -> u32 {
        STAGES * stage_bytes() + state_bytes() + gate_bytes()
    }

    /// (DHV tiles, BH, sequences).
    pub const fn grid(p: &FwdParams) -> (u32, u32, u32) {
        (div_ceil(p.dhv, TILE_HV), p.bh, p.seqs)
    }

    /// Whether a forward takes this kernel: chunks of CHUNK steps and heads up to TILE_QK ×
    /// 128. Wider value heads would recompute S = Q·Kᵀ in every one of their many column
    /// blocks; the two-kernel forward suits them (and large states) better.
    pub const fn applies(chunk: u32, dqk: u32, dhv: u32) -> bool {
        chunk == CHUNK && dqk <= TILE_QK && dhv <= 128
    }
}

/// Chunk-gates kernel: one block per (chunk, head) turns the gate pre-activations into the
/// chunk's cumulative log forget gates and running maxima, so the other two kernels need no
/// scans (and no block-wide barriers for them). The chunk-0 block of each head also copies the
/// initial ñ0 and m0 into the chunk states at chunk 0, where the state kernels read them.
pub mod gates {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;

    /// b and u of the chunk (2 × L f32) and scan scratch (WARPS f32).
    pub const fn smem_bytes(chunk: u32) -> u32 {
        2 * chunk * 4 + WARPS * 4
    }

    /// (NC, BH, 1).
    pub const fn grid(p: &FwdParams) -> (u32, u32, u32) {
        (p.num_chunks, p.bh, 1)
    }
}

/// The f32 path: a step-by-step recurrence on the CUDA cores (no 16-bit rounding anywhere),
/// for f32 inputs. One block owns TILE_HV columns of one head's state, the whole DQK × TILE_HV
/// slab of C in shared memory; thread (g, c) updates column c at rows g, g + ROW_GROUPS, ….
/// It also writes the chunk states, the final states and the row statistics, so its outputs
/// are those of the chunkwise path.
pub mod recurrent {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// State columns per block.
    pub const TILE_HV: u32 = 16;
    /// Threads per column: each updates DQK / ROW_GROUPS rows.
    pub const ROW_GROUPS: u32 = THREADS / TILE_HV;

    /// C slab (DQK × TILE_HV), k_t, q_t, ñ (3 × DQK), per-group numerators
    /// (ROW_GROUPS × TILE_HV) and per-warp partial sums, all f32.
    pub const fn smem_bytes(dqk: u32) -> u32 {
        (dqk * TILE_HV + 3 * dqk + ROW_GROUPS * TILE_HV + WARPS) * 4
    }

    /// (DHV / TILE_HV, BH, sequences).
    pub const fn grid(p: &FwdParams) -> (u32, u32, u32) {
        (div_ceil(p.dhv, TILE_HV), p.bh, p.seqs)
    }

    /// Entry point of the f32 recurrence for `gates`.
    pub const fn entry_name(gates: Gates) -> &'static str {
        crate::entries::names::fwd_recurrent::f32[gates as usize]
    }
}

/// Which forward kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwdKernel {
    ChunkGates,
    ChunkState,
    /// The chunk-state kernel in its wide shape (`state_wide`, chosen by `wide_state`).
    ChunkStateWide,
    /// The wide chunk-state kernel on `wgmma` (`state_wg`; in sm_90a builds only).
    ChunkStateWg,
    ChunkOutput,
    /// The chunk-output kernel on `wgmma` (`output_wg`; in sm_90a builds only).
    ChunkOutputWg,
    /// States and outputs in one kernel for small heads (`fused`).
    ChunkFused,
}

/// Entry-point name of a forward kernel in the PTX module: one entry per (kernel, gates, dtype).
/// The names are the tables of [`crate::entries`], from the list the device crate instantiates;
/// the host tests load every name listed here.
pub const fn entry_name(kernel: FwdKernel, gates: Gates, dtype: Dtype) -> &'static str {
    use crate::entries::names;
    use FwdKernel::*;
    let (g, d) = (gates as usize, dtype as usize);
    match kernel {
        // The gate math does not depend on the element type or on the normalizer.
        ChunkGates => names::fwd_chunk_gates[if matches!(gates, Gates::Exp) { 0 } else { 1 }],
        ChunkState => names::fwd_chunk_state[g][d],
        ChunkStateWide => names::fwd_chunk_state_wide[g][d],
        ChunkStateWg => names::fwd_chunk_state_wg[g][d],
        ChunkOutput => names::fwd_chunk_output[g][d],
        ChunkOutputWg => names::fwd_chunk_output_wg[g][d],
        ChunkFused => names::fwd_chunk_fused[g][d],
    }
}

// SAFETY: #[repr(C)], every field a u64.
unsafe impl crate::PointerStruct for FwdPointers {
    fn each(p: &Self, f: &mut dyn FnMut(Pointer)) {
        pointers(p).into_iter().for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CHUNK_SIZES, HEAD_DIM_MULTIPLE, MAX_HEAD_DIM};

    /// Shared memory per block that Hopper allows a kernel that opts in (227 KiB).
    const HOPPER_SMEM: u32 = 227 * 1024;

    #[test]
    fn every_supported_config_fits_in_shared_memory() {
        for &chunk in &CHUNK_SIZES {
            assert!(state::TILES.smem_bytes() <= HOPPER_SMEM);
            assert!(state_wide::TILES.smem_bytes() <= HOPPER_SMEM);
            assert!(gates::smem_bytes(chunk) <= HOPPER_SMEM);
            let mut dqk = HEAD_DIM_MULTIPLE;
            while dqk <= MAX_HEAD_DIM {
                assert!(
                    output::smem_bytes(chunk, dqk) <= HOPPER_SMEM,
                    "L={chunk} DQK={dqk}"
                );
                dqk += HEAD_DIM_MULTIPLE;
            }
        }
        // Two output blocks per SM (228 KiB, 1 KiB reserved per block) at the largest config.
        assert!(2 * (output::smem_bytes(1024, 512) + 1024) <= 228 * 1024);
        assert!(output_wg::smem_bytes(1024, MAX_HEAD_DIM) <= HOPPER_SMEM);
        assert!(state_wg::smem_bytes() <= HOPPER_SMEM);
        assert!(fused::smem_bytes() <= HOPPER_SMEM);
    }

    #[test]
    fn grids_cover_the_problem() {
        let p = FwdParams {
            bh: 6,
            s: 1000,
            dqk: 80,
            dhv: 272,
            chunk: 256,
            num_chunks: 4,
            seqs: 1,
            ..Default::default()
        };
        // DQK tiles × DHV tiles of the state.
        assert_eq!(state::TILES.grid(&p), (2 * 3, 6, 1));
        // One DQK tile (80 ≤ 128) × two DHV tiles (272 > 256).
        assert_eq!(state_wide::TILES.grid(&p), (2, 6, 1));
        // DHV tiles × (chunks · row tiles per chunk) × heads.
        assert_eq!(output::grid(&p), (3, 4 * 4, 6));
        assert_eq!(gates::grid(&p), (4, 6, 1));
    }

    #[test]
    fn wide_state_tiles_for_the_large_heads_only() {
        // The paper's 512/512 and xLSTM-7B's 256/512 take the 128 × 256 tile; 128/128 and
        // anything narrower than one wide tile keep the 64 × 128 one.
        assert!(wide_state(512, 512) && wide_state(256, 512) && wide_state(128, 256));
        assert!(!wide_state(128, 128) && !wide_state(512, 128) && !wide_state(64, 512));
    }

    #[test]
    fn entry_names_are_distinct_per_dtype_and_variant() {
        let mut names = [Gates::Exp, Gates::Sig, Gates::SigNoNorm]
            .iter()
            .flat_map(|&g| {
                [Dtype::Bf16, Dtype::F16].map(move |d| entry_name(FwdKernel::ChunkOutput, g, d))
            })
            .collect::<std::vec::Vec<_>>();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
    }
}
