//! `cargo xtask report`: one table of tfla against every reference measured in the same run,
//! from tfla-bench's JSON (`--json`) and compare.py's JSON files.
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// (variant, NH, DQK, DHV, B, S) → best (ms, chunk).
type Best = BTreeMap<(String, u64, u64, u64, u64, u64), (f64, u64)>;

fn read(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn key(v: &Value, variant: &str) -> Option<(String, u64, u64, u64, u64, u64)> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    Some((
        variant.to_string(),
        u("NH")?,
        u("DQK")?,
        u("DHV")?,
        u("B")?,
        u("S")?,
    ))
}

fn keep_best(best: &mut Best, k: (String, u64, u64, u64, u64, u64), ms: f64, chunk: u64) {
    let e = best.entry(k).or_insert((f64::INFINITY, 0));
    if ms < e.0 {
        *e = (ms, chunk);
    }
}

/// The card's ceilings as compare.py measured them in the same run.
#[derive(Clone, Copy)]
struct Ceilings {
    flops_per_ms: f64,
    bytes_per_ms: f64,
}

/// The roofline floor of a tfla row in ms: max(FLOPs / matmul ceiling, bytes / copy ceiling).
/// FLOPs are the row's model FLOPs (TFLOP/s × time). Bytes are what the call must move at
/// least, each tensor once (16-bit q, k, v, h, dh, dq, dk, dv): the forward reads q, k, v,
/// writes h and writes the chunk states for the backward (`state_bytes`; reading them back is
/// a choice of the split kernels, which the fused one avoids); the backward reads q, k, v, h,
/// dh and the states, writes dq, dk, dv, and writes and reads back the state gradients (as
/// many bytes as the states).
fn floor_ms(r: &Value, metric: &str, c: Ceilings) -> Option<f64> {
    let u = |k: &str| r.get(k).and_then(Value::as_f64);
    let (b, nh, s, dqk, dhv) = (u("B")?, u("NH")?, u("S")?, u("DQK")?, u("DHV")?);
    let (rows, states) = (b * nh * s, u("state_bytes")?);
    let fwd = rows * (2.0 * dqk + 2.0 * dhv) * 2.0 + states;
    let bwd = rows * (4.0 * dqk + 4.0 * dhv) * 2.0 + 3.0 * states;
    let (tflops, bytes) = match metric {
        "fwd_ms" => (u("tflops")?, fwd),
        _ => (u("fwdbwd_tflops")?, fwd + bwd),
    };
    let flops = tflops * 1e12 * num(r, metric)? / 1e3;
    Some((flops / c.flops_per_ms).max(bytes / c.bytes_per_ms))
}

/// Prints the merged tables, forward and forward+backward. `tfla` is tfla-bench's JSON list;
/// `refs` are compare.py outputs.
pub fn report(tfla: &Path, refs: &[String]) -> Result<(), String> {
    let rows = read(tfla)?;
    let rows = rows.as_array().ok_or("tfla JSON: expected a list")?;
    let docs = refs
        .iter()
        .map(|p| read(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut card = String::new();
    let mut ceilings = None;
    for doc in &docs {
        if let Some(gpu) = doc.pointer("/machine/gpu").and_then(Value::as_str) {
            card = gpu.to_string();
        }
        if let Some(c) = doc.get("ceilings").filter(|c| !c.is_null())
            && let (Some(mm), Some(bw)) = (num(c, "matmul_bf16_tflops"), num(c, "copy_gbps"))
        {
            println!("ceilings: bf16 matmul {mm:.0} TFLOP/s, copy {bw:.0} GB/s");
            ceilings = Some(Ceilings {
                flops_per_ms: mm * 1e9,
                bytes_per_ms: bw * 1e6,
            });
        }
    }
    for (metric, what) in [("fwd_ms", "forward"), ("fwdbwd_ms", "forward+backward")] {
        table(rows, &docs, metric, what, &card, ceilings);
    }
    println!("ratio = tfla time / reference time (below 1: tfla faster); best chunk size of each");
    if ceilings.is_some() {
        println!(
            "floor = the roofline floor of tfla's call at its chunk size, max(FLOPs / matmul \
             ceiling, bytes / copy ceiling) of the same run (`floor_ms`), and x = time / floor"
        );
    }
    Ok(())
}

/// One table of `metric` (a time in ms) of tfla against every reference that measured it.
fn table(
    rows: &[Value],
    docs: &[Value],
    metric: &str,
    what: &str,
    card: &str,
    ceilings: Option<Ceilings>,
) {
    let chunk_of = |r: &Value| r.get("chunk").and_then(Value::as_u64).unwrap_or(0);
    let mut ours = Best::new();
    // The floor of each tfla row, by (key, chunk): the best row's floor is printed beside it.
    let mut floors = BTreeMap::new();
    for r in rows {
        let (Some(variant), Some(ms)) = (r.get("variant").and_then(Value::as_str), num(r, metric))
        else {
            continue;
        };
        if let Some(k) = key(r, variant) {
            if let Some(f) = ceilings.and_then(|c| floor_ms(r, metric, c)) {
                floors.insert((k.clone(), chunk_of(r)), f);
            }
            keep_best(&mut ours, k, ms, chunk_of(r));
        }
    }
    // Per reference name ("triton-tfla" = the TFLA authors' kernels, "fla:simple_gla", …).
    let mut theirs: BTreeMap<String, Best> = BTreeMap::new();
    for r in docs.iter().flat_map(|d| {
        d.get("rows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }) {
        let (Some(name), Some(variant), Some(ms)) = (
            r.get("ref").and_then(Value::as_str),
            r.get("variant").and_then(Value::as_str),
            num(r, metric),
        ) else {
            continue;
        };
        let Some(mut k) = key(r, variant) else {
            continue;
        };
        let name = if name == "tfla" {
            "triton-tfla".to_string()
        } else {
            // FLA and SDPA compute one function for every mLSTM variant: match any.
            k.0 = String::new();
            format!("{name}:{variant}")
        };
        keep_best(theirs.entry(name).or_default(), k, ms, chunk_of(r));
    }
    if ours.is_empty() {
        return;
    }
    let card = if card.is_empty() {
        String::new()
    } else {
        format!(", {card}")
    };
    println!("\ntfla {what} against the references of the same run{card}");
    let names: Vec<&String> = theirs.keys().collect();
    print!(
        "{:<11} {:>3} {:>4} {:>4} {:>3} {:>6} {:>13} {:>15}",
        "variant", "NH", "DQK", "DHV", "B", "S", "tfla ms (L)", "floor ms (x)"
    );
    for n in &names {
        print!(" | {:>22}", format!("{n} ms (ratio)"));
    }
    println!();
    for ((variant, nh, dqk, dhv, b, s), (ms, chunk)) in &ours {
        let k = (variant.clone(), *nh, *dqk, *dhv, *b, *s);
        let floor = floors
            .get(&(k, *chunk))
            .map_or("-".to_string(), |f: &f64| format!("{f:.3} ({:.2})", ms / f));
        print!(
            "{variant:<11} {nh:>3} {dqk:>4} {dhv:>4} {b:>3} {s:>6} {:>13} {floor:>15}",
            format!("{ms:.3} ({chunk})")
        );
        for n in &names {
            let m = &theirs[*n];
            let exact = m.get(&(variant.clone(), *nh, *dqk, *dhv, *b, *s));
            let any = m.get(&(String::new(), *nh, *dqk, *dhv, *b, *s));
            match exact.or(any) {
                Some((theirs_ms, _)) => print!(
                    " | {:>22}",
                    format!("{theirs_ms:.3} ({:.2})", ms / theirs_ms)
                ),
                None => print!(" | {:>22}", "-"),
            }
        }
        println!();
    }
}
