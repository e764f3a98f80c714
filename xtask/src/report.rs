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

/// Prints the merged table. `tfla` is tfla-bench's JSON list; `refs` are compare.py outputs.
pub fn report(tfla: &Path, refs: &[String]) -> Result<(), String> {
    let mut ours = Best::new();
    let rows = read(tfla)?;
    for r in rows.as_array().ok_or("tfla JSON: expected a list")? {
        let (Some(variant), Some(ms)) =
            (r.get("variant").and_then(Value::as_str), num(r, "fwd_ms"))
        else {
            continue;
        };
        if let Some(k) = key(r, variant) {
            keep_best(
                &mut ours,
                k,
                ms,
                r.get("chunk").and_then(Value::as_u64).unwrap_or(0),
            );
        }
    }
    // Per reference name ("tfla" = the Triton TFLA kernels, "fla:simple_gla", "sdpa", …).
    let mut theirs: BTreeMap<String, Best> = BTreeMap::new();
    let mut card = String::new();
    let mut ceilings = String::new();
    for path in refs {
        let doc = read(Path::new(path))?;
        if let Some(gpu) = doc.pointer("/machine/gpu").and_then(Value::as_str) {
            card = gpu.to_string();
        }
        if let Some(c) = doc.get("ceilings").filter(|c| !c.is_null())
            && let (Some(mm), Some(bw)) = (num(c, "matmul_bf16_tflops"), num(c, "copy_gbps"))
        {
            ceilings = format!("ceilings: bf16 matmul {mm:.0} TFLOP/s, copy {bw:.0} GB/s");
        }
        for r in doc
            .get("rows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(variant), Some(ms)) = (
                r.get("ref").and_then(Value::as_str),
                r.get("variant").and_then(Value::as_str),
                num(r, "fwd_ms"),
            ) else {
                continue;
            };
            let chunk = r.get("chunk").and_then(Value::as_u64).unwrap_or(0);
            if name == "tfla" {
                if let Some(k) = key(r, variant) {
                    keep_best(
                        theirs.entry("triton-tfla".into()).or_default(),
                        k,
                        ms,
                        chunk,
                    );
                }
            } else if let Some(mut k) = key(r, variant) {
                // FLA and SDPA compute one function for every mLSTM variant: match any.
                k.0 = String::new();
                keep_best(
                    theirs.entry(format!("{name}:{variant}")).or_default(),
                    k,
                    ms,
                    chunk,
                );
            }
        }
    }
    println!(
        "tfla forward against the references of the same run{}",
        if card.is_empty() {
            String::new()
        } else {
            format!(", {card}")
        }
    );
    if !ceilings.is_empty() {
        println!("{ceilings}");
    }
    let names: Vec<&String> = theirs.keys().collect();
    print!(
        "{:<11} {:>3} {:>4} {:>4} {:>3} {:>6} {:>13}",
        "variant", "NH", "DQK", "DHV", "B", "S", "tfla ms (L)"
    );
    for n in &names {
        print!(" | {:>22}", format!("{n} ms (ratio)"));
    }
    println!();
    for ((variant, nh, dqk, dhv, b, s), (ms, chunk)) in &ours {
        print!(
            "{variant:<11} {nh:>3} {dqk:>4} {dhv:>4} {b:>3} {s:>6} {:>13}",
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
    println!("ratio = tfla time / reference time (below 1: tfla faster); best chunk size of each");
    Ok(())
}
