//! What the forward pass costs: model FLOPs (the count every TFLOP/s figure in tfla uses, the
//! same formula as `benches/compare/compare.py`) and the bytes of chunk states it materializes.
use crate::config::Dims;
use crate::dtype::Dtype;

/// Forward FLOPs of the chunkwise mLSTM with chunk size L, per (batch, head) summed:
/// 2·S·DQK·DHV (chunk states, K̃ᵀV), plus 2·S·DQK·DHV (inter-chunk output Q·C̃), plus
/// S·L·(DQK + DHV) (intra-chunk QKᵀ and (QKᵀ ⊙ D)·V, causal: half of each L×L tile).
/// Elementwise gate work is not counted.
pub fn forward_flops(dims: &Dims, chunk: usize) -> f64 {
    let (s, dqk, dhv, l) = (
        dims.s as f64,
        dims.dqk as f64,
        dims.dhv as f64,
        chunk as f64,
    );
    dims.bh() as f64 * (4.0 * s * dqk * dhv + s * l * (dqk + dhv))
}

/// Forward+backward FLOPs: three times the forward (the convention of the TFLA paper and of
/// `benches/compare/compare.py`: the backward's products are twice the forward's).
pub fn forward_backward_flops(dims: &Dims, chunk: usize) -> f64 {
    3.0 * forward_flops(dims, chunk)
}

/// Bytes of chunk states the forward pass writes (and the output kernel reads back):
/// NC boundaries of C̃ (DQK·DHV, in the input dtype), ñ (DQK, f32) and m (1, f32), per head.
pub fn state_bytes(dims: &Dims, chunk: usize, dtype: Dtype) -> u64 {
    let nc = dims.s.div_ceil(chunk) as u64;
    let c = (dims.dqk * dims.dhv * dtype.size()) as u64;
    dims.bh() as u64 * nc * (c + (dims.dqk + 1) as u64 * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_paper_shape() {
        let d = Dims {
            b: 8,
            nh: 8,
            s: 8192,
            dqk: 512,
            dhv: 512,
        };
        // 64 heads · (4·8192·512² + 8192·256·1024) = 64 · (8.59e9 + 2.15e9)
        assert!((forward_flops(&d, 256) - 64.0 * (8_589_934_592.0 + 2_147_483_648.0)).abs() < 1.0);
        assert_eq!(
            state_bytes(&d, 256, Dtype::Bf16),
            64 * 32 * (512 * 512 * 2 + 513 * 4)
        );
        assert_eq!(
            state_bytes(&d, 256, Dtype::F32),
            64 * 32 * (512 * 512 * 4 + 513 * 4)
        );
    }
}
