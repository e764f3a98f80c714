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

/// A tfla row's model FLOPs (TFLOP/s × time) and the bytes its call must move at least, each
/// tensor once (16-bit q, k, v, h, dh, dq, dk, dv): the forward reads q, k, v, writes h and
/// writes the chunk states for the backward (`state_bytes`; reading them back is a choice of
/// the split kernels, which the fused one avoids); the backward reads q, k, v, h, dh and the
/// states, writes dq, dk, dv, and writes and reads back the state gradients (as many bytes as
/// the states).
fn work(r: &Value, metric: &str) -> Option<(f64, f64)> {
    let u = |k: &str| r.get(k).and_then(Value::as_f64);
    let (b, nh, s, dqk, dhv) = (u("B")?, u("NH")?, u("S")?, u("DQK")?, u("DHV")?);
    let (rows, states) = (b * nh * s, u("state_bytes")?);
    let fwd = rows * (2.0 * dqk + 2.0 * dhv) * 2.0 + states;
    let bwd = rows * (4.0 * dqk + 4.0 * dhv) * 2.0 + 3.0 * states;
    let (tflops, bytes) = match metric {
        "fwd_ms" => (u("tflops")?, fwd),
        _ => (u("fwdbwd_tflops")?, fwd + bwd),
    };
    Some((tflops * 1e12 * num(r, metric)? / 1e3, bytes))
}

/// The roofline floor in ms of (FLOPs, bytes) ([`work`]): max(FLOPs / matmul ceiling, bytes /
/// copy ceiling).
fn floor_ms((flops, bytes): (f64, f64), c: Ceilings) -> f64 {
    (flops / c.flops_per_ms).max(bytes / c.bytes_per_ms)
}

/// Prints the merged tables, forward and forward+backward. `tfla` is tfla-bench's JSON list;
/// `refs` are compare.py outputs. With `rows`, also writes every printed row there as JSON
/// (each best-L call with its FLOPs, bytes, floor and the references' times, and the
/// ceilings), what `benches/compare/plot_roofline.py` draws.
pub fn report(tfla: &Path, refs: &[String], rows_out: Option<&Path>) -> Result<(), String> {
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
    let mut printed = Vec::new();
    for (metric, what) in [("fwd_ms", "forward"), ("fwdbwd_ms", "forward+backward")] {
        printed.extend(table(rows, &docs, metric, what, &card, ceilings));
    }
    if let Some(path) = rows_out {
        let doc = serde_json::json!({
            "card": card,
            "ceilings": ceilings.map(|c| serde_json::json!({
                "matmul_tflops": c.flops_per_ms / 1e9,
                "copy_gbps": c.bytes_per_ms / 1e6,
            })),
            "rows": printed,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
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

/// One table of `metric` (a time in ms) of tfla against every reference that measured it;
/// returns its rows as JSON.
fn table(
    rows: &[Value],
    docs: &[Value],
    metric: &str,
    what: &str,
    card: &str,
    ceilings: Option<Ceilings>,
) -> Vec<Value> {
    let chunk_of = |r: &Value| r.get("chunk").and_then(Value::as_u64).unwrap_or(0);
    let mut ours = Best::new();
    // The work of each tfla row, by (key, chunk): the best row's floor is printed beside it.
    let mut works = BTreeMap::new();
    for r in rows {
        let (Some(variant), Some(ms)) = (r.get("variant").and_then(Value::as_str), num(r, metric))
        else {
            continue;
        };
        if let Some(k) = key(r, variant) {
            if let Some(w) = work(r, metric) {
                works.insert((k.clone(), chunk_of(r)), w);
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
        return Vec::new();
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
    let mut out = Vec::new();
    for ((variant, nh, dqk, dhv, b, s), (ms, chunk)) in &ours {
        let k = (variant.clone(), *nh, *dqk, *dhv, *b, *s);
        let work = works.get(&(k, *chunk)).copied();
        let floor = work.zip(ceilings).map(|(w, c)| floor_ms(w, c));
        let floor_text = floor.map_or("-".to_string(), |f| format!("{f:.3} ({:.2})", ms / f));
        print!(
            "{variant:<11} {nh:>3} {dqk:>4} {dhv:>4} {b:>3} {s:>6} {:>13} {floor_text:>15}",
            format!("{ms:.3} ({chunk})")
        );
        let mut refs = serde_json::Map::new();
        for n in &names {
            let m = &theirs[*n];
            let exact = m.get(&(variant.clone(), *nh, *dqk, *dhv, *b, *s));
            let any = m.get(&(String::new(), *nh, *dqk, *dhv, *b, *s));
            match exact.or(any) {
                Some((theirs_ms, _)) => {
                    print!(
                        " | {:>22}",
                        format!("{theirs_ms:.3} ({:.2})", ms / theirs_ms)
                    );
                    refs.insert(n.to_string(), Value::from(*theirs_ms));
                }
                None => print!(" | {:>22}", "-"),
            }
        }
        println!();
        out.push(serde_json::json!({
            "pass": if metric == "fwd_ms" { "fwd" } else { "fwdbwd" },
            "variant": variant, "NH": nh, "DQK": dqk, "DHV": dhv, "B": b, "S": s,
            "chunk": chunk, "ms": ms,
            "flops": work.map(|w| w.0), "bytes": work.map(|w| w.1), "floor_ms": floor,
            "refs": refs,
        }));
    }
    out
}
