//! `cargo xtask sass`: the instruction mix of every kernel as ptxas compiles it, from the
//! SASS that `cuobjdump` prints. Static counts, not executed ones, but they show what a
//! kernel's source costs per `mma`: the flat-index copy loop of the staging code (~10 integer
//! instructions per `cp.async` plus a remainder loop) and runtime branches that cut an
//! unrolled k-loop into separate blocks were both found this way.

use std::path::Path;
use std::process::Command;

/// Opcode families counted per kernel (the prefix before the first '.').
const COLUMNS: [&str; 9] = [
    "HMMA", "HGMMA", "LDSM", "LDGSTS", "LDG", "STG", "LDS", "BAR", "BRA",
];

/// One kernel's SASS: its name and each instruction's opcode (with modifiers, without the
/// predicate).
#[derive(Debug, Default, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub opcodes: Vec<String>,
}

impl Kernel {
    /// Bytes of code (Hopper encodes every instruction in 16). Past ~100 KB a kernel with few
    /// warps per SM waits on instruction fetch: `bwd_chunk` fully unrolled (140 KB) did 45% of
    /// the time.
    pub fn code_bytes(&self) -> usize {
        16 * self.opcodes.len()
    }

    /// Instructions whose opcode family (before the first '.') is `family`.
    pub fn count(&self, family: &str) -> usize {
        self.opcodes
            .iter()
            .filter(|o| o.split('.').next() == Some(family))
            .count()
    }
}

/// Splits `cuobjdump -sass` output into kernels.
pub fn parse(sass: &str) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = Vec::new();
    for line in sass.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("Function : ") {
            kernels.push(Kernel {
                name: name.trim().to_string(),
                opcodes: Vec::new(),
            });
            continue;
        }
        // Instruction lines: `/*0a40*/  @!P2 LDGSTS.E.BYPASS.128 [R21], … ;  /* encoding */`.
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let Some((addr, body)) = rest.split_once("*/") else {
            continue;
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue; // the encoding half of a line pair
        }
        let mut words = body.split_whitespace();
        let mut op = words.next().unwrap_or_default();
        if op.starts_with('@') {
            op = words.next().unwrap_or_default();
        }
        let op = op.trim_end_matches(';');
        if let (Some(k), false) = (kernels.last_mut(), op.is_empty()) {
            k.opcodes.push(op.to_string());
        }
    }
    kernels
}

/// Builds the PTX for the default arch, assembles it with ptxas into `target/tfla_kernels.cubin`, and prints
/// the instruction mix of the kernels whose name contains `filter`; with `dump`, also writes
/// each of their SASS listings to `target/sass/NAME.sass`.
pub fn cmd_sass(filter: Option<&str>, dump: bool) -> Result<(), String> {
    let ptxas = tfla_ptx_build::ptxas().map_err(|e| e.to_string())?;
    let cuobjdump = tfla_ptx_build::find_cuda_tool("cuobjdump").ok_or(
        "cuobjdump not found (PATH, CUDA_PATH; the Triton wheel ships one in \
         triton/backends/nvidia/bin/)",
    )?;
    let arch = tfla_ptx_build::Arch::DEFAULT;
    let (ptx_path, _) = super::write_ptx(arch, None)?;
    let dir = ptx_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cubin = dir.join("tfla_kernels.cubin");
    super::run(
        Command::new(&ptxas)
            .arg(format!("-arch={}", arch.name()))
            .args(["-O3", "-o"])
            .arg(&cubin)
            .arg(&ptx_path),
    )?;
    let sass = super::run(Command::new(&cuobjdump).arg("-sass").arg(&cubin))?;
    let mut kernels = parse(&sass);
    kernels.retain(|k| filter.is_none_or(|f| k.name.contains(f)));
    kernels.sort_by(|a, b| a.name.cmp(&b.name));
    print!("{:<42} {:>6} {:>5}", "kernel", "instr", "KB");
    for c in COLUMNS {
        print!(" {c:>6}");
    }
    println!(" {:>9}", "other/mma");
    for k in &kernels {
        print!(
            "{:<42} {:>6} {:>5}",
            k.name,
            k.opcodes.len(),
            k.code_bytes() / 1024
        );
        let counts: Vec<usize> = COLUMNS.iter().map(|c| k.count(c)).collect();
        for n in &counts {
            print!(" {n:>6}");
        }
        let mma = counts[0] + counts[1]; // mma.sync and wgmma
        if mma > 0 {
            println!(" {:>9.1}", (k.opcodes.len() - mma) as f64 / mma as f64);
        } else {
            println!(" {:>9}", "-");
        }
    }
    if dump {
        let out = dir.join("sass");
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        for k in &kernels {
            let listing = super::run(
                Command::new(&cuobjdump)
                    .args(["-sass", "-fun", &k.name])
                    .arg(&cubin),
            )?;
            let path = out.join(format!("{}.sass", k.name));
            std::fs::write(&path, listing).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        println!("SASS listings in {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
\tcode for sm_90
\t\tFunction : k_one
\t.headerflags\t@\"EF_CUDA_SM90\"
        /*0000*/                   LDC R1, c[0x0][0x28] ;          /* 0x00000a00ff017b82 */
                                                                  /* 0x000e220000000800 */
        /*0010*/               @P4 LDG.E.128.CONSTANT R8, desc[UR10][R36.64] ;  /* 0x0 */
        /*0020*/                   HMMA.16816.F32.BF16 R104, R112.reuse, R128, R104 ; /* 0x0 */
        /*0030*/              @!P2 BRA 0x9bf0 ;                     /* 0x0000009800e88947 */
\t\tFunction : k_two
        /*0000*/                   EXIT ;                          /* 0x000000000000794d */
";

    #[test]
    fn parses_kernels_and_opcodes() {
        let k = parse(SAMPLE);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].name, "k_one");
        assert_eq!(
            k[0].opcodes,
            ["LDC", "LDG.E.128.CONSTANT", "HMMA.16816.F32.BF16", "BRA"]
        );
        assert_eq!(
            (k[0].count("HMMA"), k[0].count("LDG"), k[0].count("LD")),
            (1, 1, 0)
        );
        assert_eq!(k[1].opcodes, ["EXIT"]);
        assert_eq!((k[0].code_bytes(), k[1].code_bytes()), (64, 16));
    }
}
