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
    for doc in &docs {
        if let Some(gpu) = doc.pointer("/machine/gpu").and_then(Value::as_str) {
            card = gpu.to_string();
        }
        if let Some(c) = doc.get("ceilings").filter(|c| !c.is_null())
            && let (Some(mm), Some(bw)) = (num(c, "matmul_bf16_tflops"), num(c, "copy_gbps"))
        {
            println!("ceilings: bf16 matmul {mm:.0} TFLOP/s, copy {bw:.0} GB/s");
        }
    }
    for (metric, what) in [("fwd_ms", "forward"), ("fwdbwd_ms", "forward+backward")] {
        table(rows, &docs, metric, what, &card);
    }
    println!("ratio = tfla time / reference time (below 1: tfla faster); best chunk size of each");
    Ok(())
}

/// One table of `metric` (a time in ms) of tfla against every reference that measured it.
fn table(rows: &[Value], docs: &[Value], metric: &str, what: &str, card: &str) {
    let chunk_of = |r: &Value| r.get("chunk").and_then(Value::as_u64).unwrap_or(0);
    let mut ours = Best::new();
    for r in rows {
        let (Some(variant), Some(ms)) = (r.get("variant").and_then(Value::as_str), num(r, metric))
        else {
            continue;
        };
        if let Some(k) = key(r, variant) {
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
}
