//! `unroll!`: a loop over a register tile, unrolled in the source (here, beside the register
//! tile [`crate::fragment::RegTile`] that iterates with it, for the device crate and the host
//! tests alike).
//!
//! LLVM keeps a register tile (`[[f32; 4]; N]`) in registers only when every index into it is
//! a constant, i.e. when every loop over it is fully unrolled. Its unroller declines loops
//! whose bodies hold inline asm (global loads and stores), and the tile then lives in local
//! memory (a stack frame in ptxas's report). `unroll!(16, nb => { ... })` expands the body 16
//! times with `nb` a constant `usize`. The count is a literal (1, 2, 4, 5, 8, 16 or 32); pair it
//! with a `const` assertion that ties it to the tile constant it stands for.

#[macro_export]
macro_rules! unroll {
    ($n:tt, $i:ident => $body:block) => { $crate::unroll!(@at 0usize, $n, $i, $body) };
    (@at $o:expr, 1, $i:ident, $b:block) => {{ let $i: usize = $o; $b }};
    (@at $o:expr, 2, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 1, $i, $b); $crate::unroll!(@at $o + 1, 1, $i, $b);
    };
    (@at $o:expr, 4, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 2, $i, $b); $crate::unroll!(@at $o + 2, 2, $i, $b);
    };
    // 5: the steps of a warp-wide shuffle scan (offsets 1 << 0 .. 1 << 4).
    (@at $o:expr, 5, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 4, $i, $b); $crate::unroll!(@at $o + 4, 1, $i, $b);
    };
    (@at $o:expr, 8, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 4, $i, $b); $crate::unroll!(@at $o + 4, 4, $i, $b);
    };
    (@at $o:expr, 16, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 8, $i, $b); $crate::unroll!(@at $o + 8, 8, $i, $b);
    };
    (@at $o:expr, 32, $i:ident, $b:block) => {
        $crate::unroll!(@at $o, 16, $i, $b); $crate::unroll!(@at $o + 16, 16, $i, $b);
    };
}
