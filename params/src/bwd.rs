//! Backward pass: per-row coefficients, the reverse walk of the state gradients over the
//! chunks, the intra-chunk score matrices, the three input-gradient products and the gate
//! gradients. All take [`BwdParams`] by value.
//!
//! Notation as in [`crate::fwd`]; in chunk k, row i (query step), column j (key step), with
//! the forward's gate vectors b, u = ι − b, cm and g, and the forward's per-row signed
//! normalizer readout s_i:
//! - α_i = e^{b_i + m_k − m_i} (inter-chunk scale of row i), w_j = e^{g + u_j − m_{k+1}}
//!   (weight of step j in the state after the chunk), W_ij = e^{b_i − m_i + u_j} (j ≤ i);
//! - ρ_i = 1 / den_i, δ_i = ds_i (Exact mode: −sign(s_i)(dh_i·h_i)/den_i where
//!   |s_i| ≥ floor_i, else 0), so dnum'_i = [dh_i ρ_i, δ_i] (`shared/MATH.md`).

use crate::fwd::SMEM_ROW_PAD;
use crate::{Device, Dtype, Gates, Launch, Path, Plan, Pointer, WARP, div_ceil};

/// Device addresses of every tensor the backward kernels read or write (0 where absent); every
/// tensor contiguous, row-major, in the shape its comment gives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwdPointers {
    // The forward's inputs.
    /// (BH, S, DQK) in the input dtype.
    pub q: u64,
    /// (BH, S, DQK) in the input dtype.
    pub k: u64,
    /// (BH, S, DHV) in the input dtype.
    pub v: u64,
    /// ĩ, f̃: (BH, S) f32.
    pub i: u64,
    pub f: u64,
    /// Initial states as given to the forward, or 0: (BH, DQK, DHV), (BH, DQK), (BH,) f32.
    pub c0: u64,
    pub n0: u64,
    pub m0: u64,

    // The forward's outputs (see `fwd::FwdPointers`).
    /// h: (BH, S, DHV) in the input dtype.
    pub h: u64,
    /// C̃_k (BH, NC, DQK, DHV) input dtype, ñ_k (BH, NC, DQK) f32, m_k (BH, NC) f32.
    pub c_states: u64,
    pub n_states: u64,
    pub m_states: u64,
    /// Final states (BH, DQK, DHV), (BH, DQK) f32; read only with final-state gradients.
    pub c_final: u64,
    pub n_final: u64,
    /// Gate vectors b, u, cm (BH, NC·L) and g (BH, NC) f32.
    pub gate_b: u64,
    pub gate_u: u64,
    pub gate_cm: u64,
    pub gate_g: u64,
    /// Signed normalizer readout s_i (BH, S) f32 (the forward's `norm_rows`); 0 without the
    /// normalizer.
    pub norm_rows: u64,

    // Upstream gradients.
    /// dL/dh: (BH, S, DHV) in the input dtype.
    pub dh: u64,
    /// dL/dC̃_S (BH, DQK, DHV), dL/dñ_S (BH, DQK), dL/dm_S (BH,) f32, each optional (0).
    pub dc_final: u64,
    pub dn_final: u64,
    pub dm_final: u64,

    // Workspace written and read by the backward kernels.
    /// Per-row coefficients: `rows::PLANES` planes of (BH, NC·L) f32 (see [`rows`]).
    pub row_coef: u64,
    /// dC̃_{k+1}, the state gradient after chunk k: (BH, NC, DQK, DHV) in the input dtype.
    pub dc_states: u64,
    /// dñ_{k+1}: (BH, NC, DQK) f32.
    pub dn_states: u64,
    /// Gated score matrices of every chunk, rows i, columns j: P_ij = W_ij (q̂_i·k_j) ρ_i and
    /// dP_ij = W_ij ((dh_i·v_j) ρ_i + δ_i), in the input dtype each. Causal, so only the tiles
    /// with j-tile ≤ i-tile are kept, packed: (BH, NC, `scores::pairs(L)`, TILE, TILE), tile
    /// (i-tile, j-tile) at `scores::pair_index` (5/8 of the L × L matrix at L = 256). Unused
    /// (0 allowed) where the chunk kernel keeps them on chip (`chunk::applies`).
    pub scores_p: u64,
    pub scores_dp: u64,
    /// Partial row dot products per output column tile, `combine::DOT_PLANES` planes of
    /// (BH, NC·L, `combine::col_tiles(DQK)`) f32 (see [`combine`]).
    pub row_dots: u64,
    /// Partial state dots per state tile, (BH, `state::dots_per_head`, state::MAX_TILES) f32:
    /// for chunk k < NC A_k = γ_k ⟨dC'_{k+1}, C'_k⟩, then per sequence n ⟨dC'_0, C'_0⟩ and
    /// ⟨dC'_S, C'_S⟩ (`state::init_dot`, `state::final_dot`).
    pub state_dots: u64,
    /// Partial sums of the pair gradients G_ij = W_ij (q̂_i·k_j)(dnum'_i·v'_j), j < i, over one
    /// score tile: plane 0 row sums (BH, NC·L, L / scores::TILE) indexed by the column tile,
    /// plane 1 column sums indexed by the row tile, f32.
    pub pair_sums: u64,
    /// f32 inputs only: the recomputed states of [`recurrent`], per (head, column tile)
    /// `recurrent::slots(L)` slabs of DQK × `recurrent::TILE` f32 (see
    /// [`recurrent::segments_len`]).
    pub segments: u64,
    /// Packed variable-length batch: as `fwd::FwdPointers::seq_chunks` (B = 1; sequence n's
    /// initial and final states and their gradients are at state head n·BH + bh).
    pub seq_chunks: u64,

    // Outputs.
    /// dq, dk (BH, S, DQK), dv (BH, S, DHV) in the input dtype.
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    /// dĩ, df̃: (BH, S) f32.
    pub di: u64,
    pub df: u64,
    /// dL/dC̃_0 (BH, DQK, DHV), dL/dñ_0 (BH, DQK), dL/dm_0 (BH,) f32, each optional (0).
    pub dc0: u64,
    pub dn0: u64,
    pub dm0: u64,
}

/// Parameters of every backward kernel, passed by value. Built only from validated host
/// arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwdParams {
    pub ptr: BwdPointers,
    pub bh: u32,
    pub s: u32,
    pub dqk: u32,
    pub dhv: u32,
    pub chunk: u32,
    pub num_chunks: u32,
    pub scale: f32,
    pub eps: f32,
    /// 1: the exact gradient (through the denominator and the max state); 0: the denominator
    /// and m held constant (DetachedNormalizer).
    pub exact: u32,
    /// Sequences per head (1 unless `ptr.seq_chunks` is set).
    pub seqs: u32,
}

impl BwdParams {
    /// Whether the normalizer's gradient path is live: Exact mode and a normalizing variant.
    pub const fn normalizer_path(&self, gates: Gates) -> bool {
        self.exact != 0 && !matches!(gates, Gates::SigNoNorm)
    }
}

/// Per-row coefficients (one warp per row): reads h, dh and the forward's gate vectors, writes
/// the planes below, each (BH, NC·L) f32 (rows past S hold zeros).
pub mod rows {
    use super::*;
    /// ρ_i = 1 / den_i.
    pub const RHO: u32 = 0;
    /// δ_i = ds_i.
    pub const DELTA: u32 = 1;
    /// α_i ρ_i: the inter-chunk weight of dh_i (state gradient, dq).
    pub const WQ: u32 = 2;
    /// α_i δ_i: likewise of the normalizer column.
    pub const WN: u32 = 3;
    /// w_j: the weight of step j in the state after its chunk (dk, dv).
    pub const WK: u32 = 4;
    /// log2 of the row factor of W: (b_i − m_i)·log2e (column factor: u_j·log2e).
    pub const R_LOG2: u32 = 5;
    /// dL/dm_i through eps of the denominator: −(dh_i·h_i)·eps/den_i (Exact mode, mLSTMexp).
    pub const DM: u32 = 6;
    pub const PLANES: u32 = 7;

    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Rows per block: warp w sums dh·h of rows 32w .. 32w + 32 (a warp per row, four rows'
    /// loads in flight), then every thread computes its own row's coefficients.
    pub const ROWS: u32 = 32 * WARPS;

    /// (NC·L / ROWS, BH, 1).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (div_ceil(p.num_chunks * p.chunk, ROWS), p.bh, 1)
    }
}

/// State gradients (reverse walk): one block owns a TILE_QK × TILE_HV tile of one head's dC̃
/// (the forward state kernel's tiling) and walks the chunks from the last to the first.
pub mod state {
    use super::*;
    pub use crate::fwd::state::{STAGES, SUB_L, THREADS, TILE_HV, TILE_QK, WARPS};
    /// Most state tiles of one head (DQK = DHV = MAX_HEAD_DIM).
    pub const MAX_TILES: u32 = (crate::MAX_HEAD_DIM / TILE_QK) * (crate::MAX_HEAD_DIM / TILE_HV);

    /// STAGES × (Q sub-tile SUB_L × TILE_QK, dH sub-tile SUB_L × TILE_HV, 16-bit, padded rows;
    /// the sub-tile's two row weights, 2 × SUB_L f32), then one f32 per warp for reductions,
    /// and the tile of dC̃ staged for its store (TILE_QK × TILE_HV, 16-bit, padded rows).
    pub const fn smem_bytes() -> u32 {
        STAGES * stage_bytes() + WARPS * 4 + crate::fwd::state::TILES.staging_bytes()
    }
    pub const fn stage_bytes() -> u32 {
        q_bytes() + dh_bytes() + 2 * SUB_L * 4
    }
    pub const fn q_bytes() -> u32 {
        SUB_L * (TILE_QK + SMEM_ROW_PAD) * 2
    }
    pub const fn dh_bytes() -> u32 {
        SUB_L * (TILE_HV + SMEM_ROW_PAD) * 2
    }

    /// State tiles of one head.
    pub const fn tiles(dqk: u32, dhv: u32) -> u32 {
        div_ceil(dqk, TILE_QK) * div_ceil(dhv, TILE_HV)
    }
    /// (tiles of the state, BH, sequences), DHV tile fastest (as the forward).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (tiles(p.dqk, p.dhv), p.bh, p.seqs)
    }
    /// Rows of one head's state dots: A_k per chunk, then two per sequence.
    pub const fn dots_per_head(num_chunks: u32, seqs: u32) -> u32 {
        num_chunks + 2 * seqs
    }
    /// The row of sequence n's ⟨dC'_0, C'_0⟩, and of its ⟨dC'_S, C'_S⟩.
    pub const fn init_dot(num_chunks: u32, n: u32) -> u32 {
        num_chunks + 2 * n
    }
    pub const fn final_dot(num_chunks: u32, n: u32) -> u32 {
        num_chunks + 2 * n + 1
    }

    /// The scale of a chunk's products in the state-gradient walk: its largest row weight
    /// `w_max` (max α ρ, or max |α δ| for ñ), raised to at least γ_k·2⁻³² and 2⁻¹⁰⁰ (γ_k =
    /// `decay`, the chunk's decay). The walk multiplies its accumulators by γ_k / scale and q̂'s
    /// 16-bit operands by 1 / scale; the floor keeps both finite (γ_k / scale ≤ 2³², 1 / scale ≤
    /// 2¹⁰⁰) where every weight of a chunk is tiny: each live row far below the stabilizer (α =
    /// e^{m_k − M} near f32's smallest normal) times a small δ gives a subnormal α δ, whose
    /// reciprocal is ∞, and the state gradients would be NaN. Weights under the floor only lose
    /// precision in the 16-bit operands, where they carry less than 2⁻³² of what the decayed
    /// accumulator does.
    pub fn product_scale(w_max: f32, decay: f32) -> f32 {
        const REL: f32 = f32::from_bits((127 - 32) << 23); // 2^-32
        const ABS: f32 = f32::from_bits((127 - 100) << 23); // 2^-100
        w_max.max(decay * REL).max(ABS)
    }
}

/// State gradients on `wgmma` (sm_90a builds; `bwd_state_wg`), for the head shapes that take
/// the forward's wide state tile (`fwd::wide_state`): a 128 × 256 tile of dC̃ held by two
/// warpgroups as m64n256 accumulators; per 16 steps a warp weights its A fragment of Q̂ᵀ and
/// its warpgroup multiplies it with the dH sub-tile from shared memory (128-byte swizzle).
/// Its tiles are fewer than [`state::tiles`]: the consumers of the partial dots sum
/// [`state_tiles`] slots.
pub mod state_wg {
    use super::*;
    /// Shortest chunk this kernel takes. One block of 8 warps fills an SM (255 registers), so
    /// nothing overlaps the walk's per-chunk work between products (the dC̃ store, the gate
    /// dots); at L = 128 that work is twice the share it is at 256, and the narrow kernel's
    /// blocks hide it better (measured both ways on an H100: benches/LOG.md).
    pub const MIN_CHUNK: u32 = 256;
    /// Whether this kernel (in sm_90a builds) computes the state gradients of these head
    /// dims and chunk size.
    pub const fn applies(chunk: u32, dqk: u32, dhv: u32) -> bool {
        crate::fwd::wide_state(dqk, dhv) && chunk >= MIN_CHUNK
    }
    pub use crate::fwd::state_wg::{
        ALIGN, STAGES, SUB_L, THREADS, TILE_HV, TILE_QK, WARPGROUPS, WARPS,
    };
    /// One dH sub-tile, SUB_L × TILE_HV, swizzled (panels of 64 columns).
    pub const fn dh_bytes() -> u32 {
        SUB_L * TILE_HV * 2
    }
    /// One Q sub-tile, SUB_L × TILE_QK, padded rows (read with `ldmatrix.trans`), and its two
    /// row weights (2 × SUB_L f32).
    pub const fn q_bytes() -> u32 {
        SUB_L * (TILE_QK + SMEM_ROW_PAD) * 2 + 2 * SUB_L * 4
    }
    /// ALIGN, STAGES × dH sub-tile, STAGES × (Q sub-tile, weights), one f32 per warp for
    /// reductions, the tile of dC̃ staged for its store (TILE_QK × TILE_HV, 16-bit, padded).
    pub const fn smem_bytes() -> u32 {
        ALIGN
            + STAGES * (dh_bytes() + q_bytes())
            + WARPS * 4
            + TILE_QK * (TILE_HV + SMEM_ROW_PAD) * 2
    }
    pub const fn tiles(dqk: u32, dhv: u32) -> u32 {
        div_ceil(dqk, TILE_QK) * div_ceil(dhv, TILE_HV)
    }
    /// (tiles of the state, BH, sequences), DHV tile fastest (as the forward).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (tiles(p.dqk, p.dhv), p.bh, p.seqs)
    }
    const _: () = assert!(
        TILE_QK >= state::TILE_QK && TILE_HV >= state::TILE_HV,
        "fewer tiles than the narrow shape: the state dots fit in state::MAX_TILES slots"
    );
}

/// State tiles of one head as this build's state-gradient kernel lays them out (`wgmma`:
/// compiled for sm_90a): the slots of the state dots that hold partial sums.
pub const fn state_tiles(chunk: u32, dqk: u32, dhv: u32, wgmma: bool) -> u32 {
    if wgmma && state_wg::applies(chunk, dqk, dhv) {
        state_wg::tiles(dqk, dhv)
    } else {
        state::tiles(dqk, dhv)
    }
}

/// Whether the state gradients run on the wide `wgmma` tile on `dev` (the sm_90a module, where
/// [`state_wg::applies`]); the kernels that read the state dots decide the same way at
/// compile time ([`state_tiles`] with the module's `wgmma`).
pub const fn use_state_wg(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> bool {
    dev.wgmma && state_wg::applies(chunk, dqk, dhv)
}

/// Whether the chunk gradients run in the one on-chip kernel on `dev` ([`chunk::applies`],
/// where its ~210 KB of shared memory fit); else the score and combine kernels, whose score
/// matrices the workspace then holds.
pub const fn use_chunk(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> bool {
    chunk::applies(chunk, dqk, dhv) && dev.fits(chunk::smem_bytes())
}

/// Whether [`use_chunk`]'s kernel is the `wgmma` one on `dev` (the sm_90a module).
pub const fn use_chunk_wg(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> bool {
    dev.wgmma && use_chunk(dev, chunk, dqk, dhv) && dev.fits(chunk_wg::smem_bytes())
}

/// The launches of the backward pass on `dev`, in order: row coefficients, then on the
/// tensor cores the state gradients (reverse walk), score matrices, dq, dk, dv (those four in
/// one kernel where [`use_chunk`]) and the gate gradients (which sum the row dots of dq and
/// dk), or for f32 the reverse recurrence; the max-state path only for mLSTMexp in Exact mode
/// (elsewhere m is constant or held constant).
pub fn plan(dev: &Device, p: &BwdParams, gates: Gates, path: Path) -> Plan {
    let max_path = Launch {
        name: entry_name(BwdKernel::MaxPath, gates, Dtype::Bf16),
        grid: max_path::grid(p),
        threads: max_path::THREADS,
        smem: max_path::smem_bytes(),
    };
    let with_max_path = matches!(gates, Gates::Exp) && p.exact != 0;
    let mut plan = Plan::new();
    let dtype = match path {
        Path::TensorCores(dtype) => dtype,
        Path::F32 => {
            plan.push(Launch {
                name: recurrent::rows_entry(gates),
                grid: rows::grid(p),
                threads: rows::THREADS,
                smem: 0,
            });
            plan.push(Launch {
                name: recurrent::entry(gates),
                grid: recurrent::grid(p, gates),
                threads: recurrent::THREADS,
                smem: recurrent::smem_bytes(p.chunk),
            });
            if with_max_path {
                plan.push(max_path);
            }
            return plan;
        }
    };
    let name = |k| entry_name(k, gates, dtype);
    // dq, dk, dv on `wgmma` where the module has it and the shape takes it
    // ([`use_combine_wg`]).
    let wg = use_combine_wg(dev, p.chunk, p.dqk, p.dhv);
    let combine = |(k, k_wg), out_dim| {
        if wg {
            Launch {
                name: name(k_wg),
                grid: combine_wg::grid(p, out_dim),
                threads: combine_wg::THREADS,
                smem: combine_wg::smem_bytes(combine_wg::row_dots(k_wg)),
            }
        } else {
            Launch {
                name: name(k),
                grid: combine::grid(p, out_dim),
                threads: combine::THREADS,
                smem: combine::smem_bytes(),
            }
        }
    };
    plan.push(Launch {
        name: name(BwdKernel::Rows),
        grid: rows::grid(p),
        threads: rows::THREADS,
        smem: 0,
    });
    // The state gradients on the wide `wgmma` tile where the module has it (sm_90a) and it
    // pays ([`use_state_wg`]).
    plan.push(if use_state_wg(dev, p.chunk, p.dqk, p.dhv) {
        Launch {
            name: name(BwdKernel::StateWg),
            grid: state_wg::grid(p),
            threads: state_wg::THREADS,
            smem: state_wg::smem_bytes(),
        }
    } else {
        Launch {
            name: name(BwdKernel::State),
            grid: state::grid(p),
            threads: state::THREADS,
            smem: state::smem_bytes(),
        }
    });
    if use_chunk_wg(dev, p.chunk, p.dqk, p.dhv) {
        plan.push(Launch {
            name: name(BwdKernel::ChunkWg),
            grid: chunk_wg::grid(p),
            threads: chunk_wg::THREADS,
            smem: chunk_wg::smem_bytes(),
        });
    } else if use_chunk(dev, p.chunk, p.dqk, p.dhv) {
        plan.push(Launch {
            name: name(BwdKernel::Chunk),
            grid: chunk::grid(p),
            threads: chunk::THREADS,
            smem: chunk::smem_bytes(),
        });
    } else {
        plan.push(Launch {
            name: name(BwdKernel::Scores),
            grid: scores::grid(p),
            threads: scores::THREADS,
            smem: scores::smem_bytes(),
        });
        plan.push(combine((BwdKernel::Dq, BwdKernel::DqWg), p.dqk));
        plan.push(combine((BwdKernel::Dk, BwdKernel::DkWg), p.dqk));
        plan.push(combine((BwdKernel::Dv, BwdKernel::DvWg), p.dhv));
    }
    plan.push(Launch {
        name: name(BwdKernel::Gates),
        grid: self::gates::grid(p),
        threads: self::gates::THREADS,
        smem: self::gates::smem_bytes(p.chunk),
    });
    if with_max_path {
        plan.push(max_path);
    }
    plan
}

/// The backward's pointers for `normalized` variants or not, an input `path`, and
/// `scores_on_chip` (the chunk kernel runs, [`use_chunk`], which needs no score matrices).
/// Required: the inputs, the forward's outputs the kernels read, dh, the gradients and the
/// scratch the path uses (the normalizer readout for normalized variants; the final C̃ and ñ
/// where their gradients are given: the path through m_S contracts them). Alignments: 16
/// bytes for `cp.async` rows (q, k, v, dh, the C̃ states and their gradients, the scores),
/// 16-byte loads (h), the row weights the state kernel streams (row_coef) and what the
/// forward already requires (C̃0, u); 8 for pairs of f32 (C̃ matrices and ñ rows read or
/// written two at a time); 4 for the rest (dq, dk, dv move two 16-bit values per access).
/// The f32 path moves 16 bytes at a time what it shares with the 16-bit one, and its scratch.
pub const fn pointers(
    p: &BwdPointers,
    normalized: bool,
    path: Path,
    scores_on_chip: bool,
) -> [Pointer; 40] {
    use Pointer as P;
    let tc = matches!(path, Path::TensorCores(_));
    let wide = if tc { 4 } else { 16 };
    let wide8 = if wide > 8 { wide } else { 8 };
    [
        P::required("q", p.q, 16),
        P::required("k", p.k, 16),
        P::required("v", p.v, 16),
        P::required("i", p.i, 4),
        P::required("f", p.f, 4),
        P::required("h", p.h, 16),
        P::required("c_states", p.c_states, 16),
        P::required("n_states", p.n_states, 8),
        P::required("m_states", p.m_states, 4),
        P::required("gate_b", p.gate_b, 4),
        P::required("gate_u", p.gate_u, 16),
        P::required("gate_cm", p.gate_cm, 4),
        P::required("gate_g", p.gate_g, 4),
        P::required("dh", p.dh, 16),
        P::required("row_coef", p.row_coef, 16),
        P::required("state_dots", p.state_dots, 4),
        // The chunk kernels store dq, dk and dv 8 bytes a lane (`ChunkTerms::store`).
        P::required("dq", p.dq, wide8),
        P::required("dk", p.dk, wide8),
        P::required("dv", p.dv, 8),
        P::required("di", p.di, 4),
        P::required("df", p.df, 4),
        P::required_if(tc, "dc_states", p.dc_states, 16),
        P::required_if(tc, "dn_states", p.dn_states, 8),
        P::required_if(tc, "row_dots", p.row_dots, 4),
        P::required_if(tc, "pair_sums", p.pair_sums, 4),
        P::required_if(tc && !scores_on_chip, "scores_p", p.scores_p, 16),
        P::required_if(tc && !scores_on_chip, "scores_dp", p.scores_dp, 16),
        P::required_if(!tc, "segments", p.segments, 16),
        P::required_if(normalized, "norm_rows", p.norm_rows, 4),
        P::required_if(p.dc_final != 0, "c_final", p.c_final, 8),
        P::required_if(p.dn_final != 0, "n_final", p.n_final, 4),
        P::optional("c0", p.c0, 16),
        P::optional("n0", p.n0, 4),
        P::optional("m0", p.m0, 4),
        P::optional("dc_final", p.dc_final, wide8),
        P::optional("dn_final", p.dn_final, 4),
        P::optional("dm_final", p.dm_final, 4),
        P::optional("dc0", p.dc0, wide8),
        P::optional("dn0", p.dn0, 4),
        P::optional("dm0", p.dm0, 4),
    ]
}

/// Score matrices: one block computes a TILE × TILE tile (rows i, columns j ≤ i) of P and dP
/// of one chunk: S = Q_i K_jᵀ over DQK and dS = dH_i V_jᵀ over DHV, in KD-wide slices through
/// a two-stage ring.
pub mod scores {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Rows and columns of a tile: 16 rows per warp.
    pub const TILE: u32 = 16 * WARPS;
    /// Head-dim slice per ring item.
    pub const KD: u32 = 64;
    pub const STAGES: u32 = 2;
    const _: () = assert!(
        STAGES * 2 * slice_bytes() >= 2 * TILE * (TILE + SMEM_ROW_PAD) * 2,
        "the P and dP tiles are staged where the ring was"
    );

    pub const fn slice_bytes() -> u32 {
        TILE * (KD + SMEM_ROW_PAD) * 2
    }
    /// STAGES × two slices, then the row and column gate vectors and the row coefficients
    /// (4 × TILE f32), then per-warp column sums (WARPS × TILE f32).
    pub const fn smem_bytes() -> u32 {
        STAGES * 2 * slice_bytes() + 4 * TILE * 4 + WARPS * TILE * 4
    }
    /// Tiles per chunk side (the last axis of the pair-sum planes).
    pub const fn tiles(chunk: u32) -> u32 {
        chunk / TILE
    }
    /// Lower-triangular tile pairs of one chunk.
    pub const fn pairs(chunk: u32) -> u32 {
        let t = chunk / TILE;
        t * (t + 1) / 2
    }
    /// Index of tile pair (row tile `it`, column tile `jt` ≤ `it`): row-major over the lower
    /// triangle (the grid's x and the packed score matrices' tile axis).
    pub const fn pair_index(it: u32, jt: u32) -> u32 {
        it * (it + 1) / 2 + jt
    }
    /// (tile pairs, NC, BH).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (pairs(p.chunk), p.num_chunks, p.bh)
    }
}

/// Input gradients: one block owns TILE rows of one chunk and TILE_OUT output columns of dq,
/// dk or dv: out = c·(r ⊙ (A·M) + e ⊗ u + T·Z) with the per-chunk state M, a rank-one term and
/// the chunk's score matrix T (see `kernels/src/mlstm/backward/bwd_combine.rs`).
pub mod combine {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Rows per block (16 per warp) and rows per key tile.
    pub const TILE: u32 = 16 * WARPS;
    /// Output columns per block (register accumulator 16 × TILE_OUT per warp).
    pub const TILE_OUT: u32 = 128;
    /// Contraction slice of the state term per ring item.
    pub const KD: u32 = 64;
    pub const STAGES: u32 = 2;
    /// Blocks per SM dq and dk are built for (`register_caps`): left alone, ptxas gives the
    /// normalizing variants' dq and dk 186–255 registers, two blocks of 4 warps per SM, for
    /// kernels that wait on `ldmatrix`/`cp.async` latency; capped, they fit without spilling.
    pub const BLOCKS_PER_SM: u32 = 3;
    pub const MAX_REGISTERS: u32 = crate::register_budget(THREADS, BLOCKS_PER_SM);
    /// Output column tiles of dq and dk (the row-dot planes' last axis).
    pub const fn col_tiles(dqk: u32) -> u32 {
        div_ceil(dqk, TILE_OUT)
    }
    /// Row-dot planes: q̂_i·(inter-chunk part of dq̂_i) (dq kernel), k_j·dk_j and
    /// k_j·(inter-chunk part of dk_j) (dk kernel).
    pub const DOT_Q_INTER: u32 = 0;
    pub const DOT_K: u32 = 1;
    pub const DOT_K_INTER: u32 = 2;
    pub const DOT_PLANES: u32 = 3;

    /// A-operand stage: a TILE × KD slice (state term) or a TILE × TILE score tile.
    pub const fn a_bytes() -> u32 {
        TILE * (KD + SMEM_ROW_PAD) * 2
    }
    /// B-operand stage: a state slice KD × TILE_OUT or TILE_OUT × KD, or a Z tile
    /// TILE × TILE_OUT, whichever is largest.
    pub const fn b_bytes() -> u32 {
        let kn = KD * (TILE_OUT + SMEM_ROW_PAD) * 2;
        let nk = TILE_OUT * (KD + SMEM_ROW_PAD) * 2;
        if kn > nk { kn } else { nk }
    }
    /// (After the walk the output tile is staged for its store in the first stage's space.)
    pub const fn smem_bytes() -> u32 {
        STAGES * (a_bytes() + b_bytes())
    }
    const _: () = assert!(
        a_bytes() + b_bytes() >= TILE * (TILE_OUT + SMEM_ROW_PAD) * 2,
        "the output tile is staged where the first stage was"
    );
    /// (output column tiles, NC·L / TILE row tiles, BH).
    pub const fn grid(p: &BwdParams, out_dim: u32) -> (u32, u32, u32) {
        (
            div_ceil(out_dim, TILE_OUT),
            p.num_chunks * (p.chunk / TILE),
            p.bh,
        )
    }
}

/// Input gradients on `wgmma` (sm_90a builds; `bwd_combine_wg`), the same sums as [`combine`]
/// for a block of TILE rows and TILE_OUT output columns held by two warpgroups as m64n256
/// accumulators, every operand read by the tensor cores from shared memory (128-byte
/// swizzle): the state term's KD-wide slices of A and M, then per key tile each warpgroup's
/// score tile (transposed through the descriptor for dk and dv) and the key tile's rows of Z.
/// Its partial row dots land in [`combine`]'s slots: one per 128 output columns.
pub mod combine_wg {
    use super::*;
    /// The forward output kernel's block (`fwd::output_wg`): two warpgroups, TILE = 128 rows
    /// (64 per warpgroup, one score tile each) × TILE_OUT = 256 output columns, KD-wide
    /// slices (the state term's contraction slice and a key tile's rows).
    pub use crate::fwd::output_wg::{
        ALIGN, KD, THREADS, TILE_HV as TILE_OUT, TILE_Q as TILE, WARPGROUPS, WARPS,
    };
    /// Stages of the ring where the block holds no rows beside it.
    pub const RING_STAGES: u32 = 4;
    /// Stages of the ring of items: the current item multiplies behind the previous one, whose
    /// `wgmma`s may still run, while the next two load; one fewer where the block also holds
    /// the rows of its row dots' input ([`row_dots`]).
    pub const fn stages(row_dots: bool) -> u32 {
        if row_dots {
            RING_STAGES - 1
        } else {
            RING_STAGES
        }
    }
    /// Whether the kernel writes row dots (dq and dk: `bwd_combine`'s `inter_dot`, `end_dot`):
    /// then it stages the rows of their input (q or k) in shared memory, [`x_bytes`], with its
    /// first item, instead of each thread loading its elements from memory where the dots
    /// are formed (latency the one block per SM cannot hide: they made dk 1.6× dv's time).
    pub const fn row_dots(kernel: BwdKernel) -> bool {
        matches!(kernel, BwdKernel::DqWg | BwdKernel::DkWg)
    }
    const _: () = assert!(
        scores::TILE == TILE / WARPGROUPS && KD == scores::TILE && stages(true) >= 3,
        "one score tile per warpgroup and key tile; an item in flight behind the current one, \
         one loading ahead"
    );
    const _: () = assert!(
        TILE_OUT == 2 * combine::TILE_OUT,
        "a block's row dots fill two of combine's column slots"
    );

    /// Whether this kernel (in sm_90a builds) computes dq, dk and dv of these head dims and
    /// chunk size: the wide heads (`fwd::wide_state`), a whole number of row tiles per chunk.
    pub const fn applies(chunk: u32, dqk: u32, dhv: u32) -> bool {
        crate::fwd::wide_state(dqk, dhv) && chunk.is_multiple_of(TILE)
    }
    /// A-operand stage: a TILE × KD slice of A (state term) or the two warpgroups' score tiles.
    pub const fn a_bytes() -> u32 {
        TILE * KD * 2
    }
    /// B-operand stage: a slice of M (KD × TILE_OUT or TILE_OUT × KD) or a key tile's rows of
    /// Z (KD × TILE_OUT).
    pub const fn b_bytes() -> u32 {
        KD * TILE_OUT * 2
    }
    /// The rows of the row dots' input: TILE × TILE_OUT, 16-bit, padded rows.
    pub const fn x_bytes() -> u32 {
        TILE * (TILE_OUT + SMEM_ROW_PAD) * 2
    }
    /// ALIGN, stages × (A stage, B stage), the block's columns of the rank-one term's u
    /// (TILE_OUT f32), with `row_dots` the rows of their input. (After the walk the output tile
    /// is staged for its store where the ring was.)
    pub const fn smem_bytes(row_dots: bool) -> u32 {
        let x = if row_dots { x_bytes() } else { 0 };
        ALIGN + stages(row_dots) * (a_bytes() + b_bytes()) + TILE_OUT * 4 + x
    }
    const _: () = assert!(THREADS == TILE_OUT, "one thread stages each column of u");
    const _: () = assert!(
        stages(true) * (a_bytes() + b_bytes()) >= x_bytes(),
        "the output tile (x's shape, TILE × TILE_OUT padded) is staged where the ring was"
    );
    /// (output column tiles, NC·L / TILE row tiles, BH).
    pub const fn grid(p: &BwdParams, out_dim: u32) -> (u32, u32, u32) {
        (
            div_ceil(out_dim, TILE_OUT),
            p.num_chunks * (p.chunk / TILE),
            p.bh,
        )
    }
}

/// Whether dq, dk and dv run on the `wgmma` kernel on `dev` (the sm_90a module, where
/// [`combine_wg::applies`] and the chunk kernel does not).
pub const fn use_combine_wg(dev: &Device, chunk: u32, dqk: u32, dhv: u32) -> bool {
    dev.wgmma && combine_wg::applies(chunk, dqk, dhv) && !use_chunk(dev, chunk, dqk, dhv)
}

/// The chunk's input gradients in one kernel for small heads (`bwd_chunk`), in place of the
/// score and the three combine kernels: one block per (chunk, head) stages the chunk's Q, K, V,
/// dH, C̃_k and dC̃_{k+1} whole in shared memory and computes dq (warp w: rows 16w.., the
/// score tiles S, dS of its rows, dP in registers as the A operand of dP·K), then dv and dk
/// (warp w: key rows 16w.., the transposed score tiles Sᵀ, dSᵀ recomputed in registers). P and
/// dP never leave the SM: at 128/128 that is 0.4 GB of stores and 0.6 GB of loads fewer than
/// the four kernels, and Q, K, V, dH are read once instead of three to five times.
pub mod chunk {
    use super::*;
    pub const WARPS: u32 = 8;
    pub const THREADS: u32 = WARPS * WARP;
    /// The chunk size it runs: 16 rows per warp.
    pub const CHUNK: u32 = 16 * WARPS;
    /// The largest head dim (DQK and DHV) it takes: register accumulators 16 × TILE_D per warp.
    pub const TILE_D: u32 = 128;
    /// Score tile width (the pair-sum planes' tiles, as the score kernel's).
    pub const TILE: u32 = scores::TILE;
    const _: () = assert!(
        CHUNK == 2 * TILE && TILE == 16 * (WARPS / 2),
        "two score tiles per chunk, the rows of four warps each"
    );

    /// One staged operand: CHUNK (or TILE_D) rows × TILE_D columns, 16-bit, padded rows.
    pub const fn tile_bytes() -> u32 {
        CHUNK * (TILE_D + SMEM_ROW_PAD) * 2
    }
    /// The staged operands' slots, in shared memory in this order (both chunk kernels).
    pub mod slot {
        pub const Q: u32 = 0;
        pub const K: u32 = 1;
        pub const V: u32 = 2;
        pub const DH: u32 = 3;
        pub const C: u32 = 4;
        pub const DC: u32 = 5;

        /// Of `(qk, hv)`, the one for operand x's columns: Q and K have DQK, V, dH, C̃ and dC̃
        /// DHV.
        #[inline(always)]
        pub fn head_dim<T>(x: u32, (qk, hv): (T, T)) -> T {
            if x == Q || x == K { qk } else { hv }
        }
    }
    /// Staged operands: Q, K, V, dH, C̃_k, dC̃_{k+1} ([`slot`]).
    pub const TILES: u32 = slot::DC + 1;
    /// The chunk's row vectors staged beside them: R (log2 row factor), ρ, δ, u, α ρ, α δ, w
    /// (`rows`; CHUNK f32 each).
    pub const VECTORS: u32 = 7;
    /// The row vectors, then per warp and key tile the partial column sums of the pair
    /// gradients (WARPS × 2 × TILE f32): what both chunk kernels stage after their operands.
    pub const fn terms_bytes() -> u32 {
        VECTORS * CHUNK * 4 + WARPS * 2 * TILE * 4
    }
    /// The operands, then [`terms_bytes`].
    pub const fn smem_bytes() -> u32 {
        TILES * tile_bytes() + terms_bytes()
    }
    /// Registers per thread it is built for (`register_caps`; one block per SM, its shared
    /// memory allows no second). Left alone, ptxas takes all 255 and still spills a few
    /// long-lived values (24–40 bytes); capped at 224 it schedules without spilling.
    pub const MAX_REGISTERS: u32 = 224;
    /// Whether a backward takes this kernel (at its chunk size, head dims up to TILE_D).
    pub const fn applies(chunk: u32, dqk: u32, dhv: u32) -> bool {
        chunk == CHUNK && dqk <= TILE_D && dhv <= TILE_D
    }
    /// (NC, BH, 1).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (p.num_chunks, p.bh, 1)
    }
}

/// The chunk gradients on `wgmma` (sm_90a builds): [`chunk`]'s work at its chunk size and head
/// dims, by two warpgroups of 64 rows (warp w still owns rows 16w .. 16w + 16 of every tile,
/// the `wgmma` accumulators being the warps' `mma.sync` fragments stacked) instead of eight
/// warps that each read every B operand whole from shared memory; the operands are staged in
/// the 128-byte swizzle the tensor cores' descriptors read.
pub mod chunk_wg {
    pub use super::chunk::{
        CHUNK, THREADS, TILE, TILE_D, TILES, WARPS, applies, grid, terms_bytes,
    };
    pub use crate::fwd::SW128_ALIGN as ALIGN;
    pub const WARPGROUPS: u32 = 2;
    const _: () = assert!(
        WARPS == 4 * WARPGROUPS && CHUNK == 64 * WARPGROUPS && TILE == 64 && TILE_D == 128,
        "m64 per warpgroup: one score tile of rows each, operands of two 64-column panels"
    );
    /// One staged operand: CHUNK (or TILE_D) rows × TILE_D columns, 16-bit, in two 64-column
    /// panels of the swizzle.
    pub const fn tile_bytes() -> u32 {
        CHUNK * TILE_D * 2
    }
    /// ALIGN (the swizzle's atoms are 1024-byte aligned), the operands, then
    /// [`chunk::terms_bytes`].
    pub const fn smem_bytes() -> u32 {
        ALIGN + TILES * tile_bytes() + terms_bytes()
    }
}

/// Gate gradients: one block per (chunk, head) (the forget-gate gradient is a sum inside the
/// chunk: two block scans over its steps).
pub mod gates {
    use super::*;
    pub const WARPS: u32 = 4;
    pub const THREADS: u32 = WARPS * WARP;
    /// Two scanned vectors of the chunk (2 × L f32), scan scratch (WARPS f32), A_k (one f32,
    /// padded to 16 bytes).
    pub const fn smem_bytes(chunk: u32) -> u32 {
        2 * chunk * 4 + WARPS * 4 + 16
    }
    /// (NC, BH, 1).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (p.num_chunks, p.bh, 1)
    }
}

/// The path through the max state (mLSTMexp, Exact mode only): one block per head, each
/// thread a contiguous run of steps, one block-wide scan of affine maps over the runs.
pub mod max_path {
    use super::*;
    pub const WARPS: u32 = 32;
    pub const THREADS: u32 = WARPS * WARP;
    /// Per-warp composed maps (2 × WARPS f32).
    pub const fn smem_bytes() -> u32 {
        2 * WARPS * 4
    }
    /// (BH, sequences, 1).
    pub const fn grid(p: &BwdParams) -> (u32, u32, u32) {
        (p.bh, p.seqs, 1)
    }
}

/// The backward for f32 inputs, which the tensor cores would round to 16 bits: the reverse
/// recurrence step by step on the CUDA cores (`kernels/src/mlstm/bwd_recurrent_f32.rs`), after
/// the rows kernel and before the max-state path. One block owns TILE state columns of one
/// head (Exact mode for a normalizing variant adds ñ as column DHV). Inside each chunk it
/// recomputes the states from the forward's chunk state: one pass keeps a checkpoint every
/// `segment(L)` steps, then each segment, last first, is recomputed into `segment(L)` slots and
/// walked backwards. So the scratch is about 2√L states per head, not L.
pub mod recurrent {
    use super::*;
    pub const WARPS: u32 = 8;
    pub const THREADS: u32 = WARPS * WARP;
    /// State columns per block.
    pub const TILE: u32 = 16;
    /// State rows per thread (rows tid + j·THREADS).
    pub const ROWS_PER_THREAD: u32 = crate::MAX_HEAD_DIM / THREADS;
    /// Values each step reduces over the block: TILE dv columns, dα, dβ.
    pub const REDUCED: u32 = TILE + 2;

    /// Steps per segment: the power of two at or above √L.
    pub const fn segment(chunk: u32) -> u32 {
        let mut x = 1;
        while x * x < chunk {
            x *= 2;
        }
        x
    }
    /// Checkpoints (L / segment) plus the segment's states (segment).
    pub const fn slots(chunk: u32) -> u32 {
        div_ceil(chunk, segment(chunk)) + segment(chunk)
    }
    /// Column tiles the scratch is laid out for: DHV plus the normalizer column.
    pub const fn scratch_tiles(dhv: u32) -> u32 {
        div_ceil(dhv + 1, TILE)
    }
    /// f32 elements of the scratch: (BH, scratch_tiles, slots, DQK, TILE).
    pub const fn segments_len(bh: u32, dqk: u32, dhv: u32, chunk: u32) -> u64 {
        bh as u64 * scratch_tiles(dhv) as u64 * slots(chunk) as u64 * dqk as u64 * TILE as u64
    }
    /// The chunk's α_t and β_t (2 × L f32), then two reduction buffers (2 × WARPS × REDUCED).
    pub const fn smem_bytes(chunk: u32) -> u32 {
        2 * chunk * 4 + 2 * WARPS * REDUCED * 4
    }
    /// State columns the walk carries: DHV, plus ñ where its gradient is followed.
    pub const fn columns(p: &BwdParams, gates: Gates) -> u32 {
        p.dhv + p.normalizer_path(gates) as u32
    }
    /// (column tiles, BH, 1): a packed batch's sequences are walked one after another, so
    /// the scratch is one block's, not one per sequence.
    pub const fn grid(p: &BwdParams, gates: Gates) -> (u32, u32, u32) {
        (div_ceil(columns(p, gates), TILE), p.bh, 1)
    }
    /// Entry points of the f32 rows kernel and of the walk, for `gates`.
    pub const fn rows_entry(gates: Gates) -> &'static str {
        crate::entries::names::bwd_rows::f32[gates as usize]
    }
    pub const fn entry(gates: Gates) -> &'static str {
        crate::entries::names::bwd_recurrent::f32[gates as usize]
    }
}

/// Which backward kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BwdKernel {
    Rows,
    State,
    Scores,
    Dq,
    Dk,
    Dv,
    /// Scores, dq, dk and dv in one kernel where `chunk::applies`.
    Chunk,
    Gates,
    MaxPath,
    /// The state-gradient kernel on `wgmma` (`state_wg`; in sm_90a builds only, so not in
    /// `ALL`).
    StateWg,
    /// dq, dk and dv on `wgmma` (`combine_wg`; sm_90a builds only, not in `ALL`).
    DqWg,
    DkWg,
    DvWg,
    /// [`BwdKernel::Chunk`] on `wgmma` (`chunk_wg`; sm_90a builds only, not in `ALL`).
    ChunkWg,
}

impl BwdKernel {
    pub const ALL: [BwdKernel; 9] = [
        BwdKernel::Rows,
        BwdKernel::State,
        BwdKernel::Scores,
        BwdKernel::Dq,
        BwdKernel::Dk,
        BwdKernel::Dv,
        BwdKernel::Chunk,
        BwdKernel::Gates,
        BwdKernel::MaxPath,
    ];
    /// The `wgmma` kernels, in the sm_90a module only.
    pub const WGMMA: [BwdKernel; 5] = [
        BwdKernel::StateWg,
        BwdKernel::DqWg,
        BwdKernel::DkWg,
        BwdKernel::DvWg,
        BwdKernel::ChunkWg,
    ];
}

/// Register caps of the backward's entry points, as (entry name, registers per thread): the PTX
/// builder writes them as `.maxnreg` (what `__launch_bounds__` does in CUDA C++).
pub fn register_caps() -> impl Iterator<Item = (&'static str, u32)> {
    let gates = [Gates::Exp, Gates::Sig, Gates::SigNoNorm];
    let dtypes = [Dtype::Bf16, Dtype::F16];
    // (dv needs ~128 registers unconstrained: four blocks per SM; a cap would raise it.)
    [
        (BwdKernel::Dq, combine::MAX_REGISTERS),
        (BwdKernel::Dk, combine::MAX_REGISTERS),
        (BwdKernel::Chunk, chunk::MAX_REGISTERS),
    ]
    .into_iter()
    .flat_map(move |(k, cap)| gates.into_iter().map(move |g| (k, g, cap)))
    .flat_map(move |(k, g, cap)| dtypes.into_iter().map(move |d| (entry_name(k, g, d), cap)))
}

/// Entry-point name of a backward kernel: one per (kernel, gates, dtype); the gate-gradient
/// kernels have no element type (their names ignore `dtype`). The names are the tables of
/// [`crate::entries`], from the list the device crate instantiates; the host tests load every
/// name.
pub const fn entry_name(kernel: BwdKernel, gates: Gates, dtype: Dtype) -> &'static str {
    use crate::entries::names;
    use BwdKernel::*;
    let (g, d) = (gates as usize, dtype as usize);
    match kernel {
        Rows => names::bwd_rows[g][d],
        State => names::bwd_state[g][d],
        Scores => names::bwd_scores[g][d],
        Dq => names::bwd_dq[g][d],
        Dk => names::bwd_dk[g][d],
        Dv => names::bwd_dv[g][d],
        Chunk => names::bwd_chunk[g][d],
        Gates => names::bwd_gates[g],
        // Only mLSTMexp has a max state: the name is the same for every `gates`.
        MaxPath => names::bwd_max_path_exp,
        StateWg => names::bwd_state_wg[g][d],
        DqWg => names::bwd_dq_wg[g][d],
        DkWg => names::bwd_dk_wg[g][d],
        DvWg => names::bwd_dv_wg[g][d],
        ChunkWg => names::bwd_chunk_wg[g][d],
    }
}

// SAFETY: #[repr(C)], every field a u64.
unsafe impl crate::PointerStruct for BwdPointers {
    fn each(p: &Self, f: &mut dyn FnMut(Pointer)) {
        // Every name is listed whatever the pass's options; only `required` depends on them.
        pointers(p, true, Path::TensorCores(Dtype::Bf16), false)
            .into_iter()
            .for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CHUNK_SIZES;

    const HOPPER_SMEM: u32 = 227 * 1024;

    #[test]
    fn state_product_scales_stay_finite_for_tiny_weights() {
        let subnormal = f32::from_bits(1); // 1e-45, the chunk of the xLSTM example's NaN
        for w in [0.0, subnormal, 1e-40, 1e-38, 1e-30, 1e-3, 1.0, 7.0] {
            for decay in [0.0, subnormal, 3e-37, 1e-20, 0.5, 1.0] {
                let scale = state::product_scale(w, decay);
                assert!(scale >= w && scale > 0.0, "{w} {decay}: {scale}");
                assert!((1.0 / scale).is_finite() && (0.18 / scale).is_finite());
                assert!(decay / scale <= 2f32.powi(32), "{w} {decay}: {scale}");
                // A weight that is not tiny is the scale itself (the operands use f16's range).
                if w >= 1e-30 && w >= decay * 2f32.powi(-32) {
                    assert_eq!(scale, w);
                }
            }
        }
    }

    #[test]
    fn every_kernel_fits_in_shared_memory() {
        assert!(state::smem_bytes() <= HOPPER_SMEM);
        assert!(state_wg::smem_bytes() <= HOPPER_SMEM);
        assert!(scores::smem_bytes() <= HOPPER_SMEM);
        assert!(combine::smem_bytes() <= HOPPER_SMEM);
        assert!(combine_wg::smem_bytes(true) <= HOPPER_SMEM);
        assert!(combine_wg::smem_bytes(false) <= HOPPER_SMEM);
        assert!(chunk::smem_bytes() <= HOPPER_SMEM);
        assert!(recurrent::smem_bytes(1024) <= HOPPER_SMEM);
        // Two combine and two score blocks per SM.
        assert!(2 * (combine::smem_bytes() + 1024) <= 228 * 1024);
    }

    #[test]
    fn grids_cover_the_problem() {
        let p = BwdParams {
            bh: 6,
            s: 1000,
            dqk: 80,
            dhv: 272,
            chunk: 256,
            num_chunks: 4,
            seqs: 1,
            ..Default::default()
        };
        assert_eq!(rows::grid(&p), (8, 6, 1));
        assert_eq!(state::grid(&p), (2 * 3, 6, 1));
        assert_eq!(scores::grid(&p), (10, 4, 6));
        assert_eq!(combine::grid(&p, 272), (3, 16, 6));
        assert_eq!(gates::grid(&p), (4, 6, 1));
        assert_eq!(max_path::grid(&p), (6, 1, 1));
        for &l in &CHUNK_SIZES {
            assert_eq!(l % scores::TILE, 0);
            assert_eq!(l % combine::TILE, 0);
            assert_eq!(l % state::SUB_L, 0);
        }
    }

    #[test]
    fn wide_state_gradients_take_wide_heads_from_chunk_256() {
        // The wide heads of the benchmark grid, and their state-dot slots per build.
        for (dqk, dhv) in [(512, 512), (256, 512), (144, 272)] {
            assert!(state_wg::applies(256, dqk, dhv), "{dqk}/{dhv}");
            assert!(!state_wg::applies(128, dqk, dhv), "{dqk}/{dhv}");
            assert_eq!(state_tiles(256, dqk, dhv, true), state_wg::tiles(dqk, dhv));
            assert_eq!(state_tiles(128, dqk, dhv, true), state::tiles(dqk, dhv));
            assert_eq!(state_tiles(256, dqk, dhv, false), state::tiles(dqk, dhv));
        }
        assert!(!state_wg::applies(256, 128, 128));
    }

    #[test]
    fn wide_input_gradients_run_on_wgmma_in_the_sm90a_module() {
        for (dqk, dhv) in [(512, 512), (256, 512), (144, 272)] {
            for l in [128, 256, 512] {
                assert!(combine_wg::applies(l, dqk, dhv), "L = {l}, {dqk}/{dhv}");
            }
            assert!(!combine_wg::applies(64, dqk, dhv), "L = 64, {dqk}/{dhv}");
        }
        assert!(!combine_wg::applies(256, 128, 128));
        let p = BwdParams {
            bh: 6,
            s: 1000,
            dqk: 144,
            dhv: 272,
            chunk: 256,
            num_chunks: 4,
            seqs: 1,
            ..Default::default()
        };
        assert_eq!(combine_wg::grid(&p, 272), (2, 8, 6));
        let f16 = Path::TensorCores(Dtype::F16);
        let names = |dev: &Device| -> std::vec::Vec<_> {
            let plan = plan(dev, &p, Gates::Sig, f16);
            plan.as_slice().iter().map(|l| l.name).collect()
        };
        let (hopper, portable) = (names(&Device::HOPPER), names(&Device::PORTABLE_227K));
        for (k, k_wg) in [
            (BwdKernel::Dq, BwdKernel::DqWg),
            (BwdKernel::Dk, BwdKernel::DkWg),
            (BwdKernel::Dv, BwdKernel::DvWg),
        ] {
            let (n, n_wg) = (
                entry_name(k, Gates::Sig, Dtype::F16),
                entry_name(k_wg, Gates::Sig, Dtype::F16),
            );
            assert!(hopper.contains(&n_wg) && !hopper.contains(&n), "{n_wg}");
            assert!(portable.contains(&n) && !portable.contains(&n_wg), "{n}");
        }
    }

    #[test]
    fn chunk_kernel_takes_small_heads_at_its_chunk_size() {
        for (dqk, dhv) in [(128, 128), (16, 16), (48, 80), (128, 32)] {
            assert!(chunk::applies(128, dqk, dhv), "{dqk}/{dhv}");
        }
        for (l, dqk, dhv) in [
            (64, 64, 64),
            (256, 128, 128),
            (128, 136, 128),
            (128, 128, 256),
        ] {
            assert!(!chunk::applies(l, dqk, dhv), "L = {l}, {dqk}/{dhv}");
        }
        // One block per (chunk, head); the register cap is written for every entry.
        let p = BwdParams {
            bh: 6,
            chunk: 128,
            num_chunks: 8,
            ..Default::default()
        };
        assert_eq!(chunk::grid(&p), (8, 6, 1));
        let caps: std::vec::Vec<_> = register_caps().collect();
        for g in [Gates::Exp, Gates::Sig, Gates::SigNoNorm] {
            for d in [Dtype::Bf16, Dtype::F16] {
                let name = entry_name(BwdKernel::Chunk, g, d);
                assert!(caps.contains(&(name, chunk::MAX_REGISTERS)), "{name}");
            }
        }
    }

    #[test]
    fn recurrent_segments_bound_the_scratch() {
        // About 2√L slots: checkpoints plus one segment's states.
        let want = [
            (64, 8, 16),
            (128, 16, 24),
            (256, 16, 32),
            (512, 32, 48),
            (1024, 32, 64),
        ];
        for (l, seg, slots) in want {
            assert_eq!(
                (recurrent::segment(l), recurrent::slots(l)),
                (seg, slots),
                "L = {l}"
            );
        }
        // Every head dim fits the threads' rows; the scratch has a tile for ñ.
        assert_eq!(
            recurrent::ROWS_PER_THREAD * recurrent::THREADS,
            crate::MAX_HEAD_DIM
        );
        assert_eq!(recurrent::scratch_tiles(512), 33);
    }

    #[test]
    fn entry_names_are_distinct() {
        let mut names = std::vec::Vec::new();
        for k in BwdKernel::ALL {
            for g in [Gates::Exp, Gates::Sig, Gates::SigNoNorm] {
                for d in [Dtype::Bf16, Dtype::F16] {
                    names.push(entry_name(k, g, d));
                }
            }
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 7 * 6 + 3 + 1);
    }
}
