//! `mpctl-bench compare A.json B.json`: are two runs' ratios within the
//! tolerance of each other, and when one is not, which side moved?
//!
//! A ratio moves when mpctl moved, when CPython moved, or both. The two
//! medians' own changes are printed beside every ratio so that a reader can
//! tell a change in mpctl from a change in the machine under the reference.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::report::num;

struct Run {
    machine: serde_json::Map<String, Value>,
    rows: Vec<Value>,
}

fn load(path: &Path) -> Result<Run> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (a JSON file from --out)", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON from mpctl-bench --out; run the harness with --out to make one",
            path.display()
        )
    })?;
    let machine = v["machine"].as_object().cloned();
    let rows = v["rows"].as_array().cloned();
    match (machine, rows) {
        (Some(machine), Some(rows)) => Ok(Run { machine, rows }),
        _ => anyhow::bail!(
            "{} has no \"machine\" and \"rows\": not a file written by mpctl-bench --out",
            path.display()
        ),
    }
}

/// A machine field as the table's header shows it (`?` when absent).
fn field<'a>(run: &'a Run, k: &str) -> &'a str {
    run.machine.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn key(row: &Value) -> (String, String) {
    let s = |k: &str| row[k].as_str().unwrap_or_default().to_string();
    (s("case"), s("variant"))
}

fn median(row: &Value, side: &str) -> Option<f64> {
    row[side]["median"].as_f64()
}

/// `b` against `a`, signed, in percent.
fn change(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:+.1}%", (b / a - 1.0) * 100.0),
        _ => "—".into(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

/// Prints the comparison table and returns how many ratios present in both
/// runs are further apart than `tolerance` percent.
pub fn compare(a: &Path, b: &Path, tolerance: f64) -> Result<usize> {
    anyhow::ensure!(
        tolerance.is_finite() && tolerance >= 0.0,
        "--tolerance is a percentage, 0 or more (got {tolerance})"
    );
    let (ra, rb) = (load(a)?, load(b)?);
    for k in [
        "cores", "cpu", "kernel", "python", "rounds", "quick", "cases",
    ] {
        let (x, y) = (field(&ra, k), field(&rb, k));
        if x != y {
            println!("note: {k} differs: {x:?} vs {y:?}; the runs may not be comparable");
        }
    }
    println!("A: {} ({})", a.display(), field(&ra, "date"));
    println!("B: {} ({})", b.display(), field(&rb, "date"));
    println!(
        "{:<36} | {:<72} | {:>8} | {:>8} | {:>7} | {:>9} | {:>9}",
        "case", "variant", "ratio A", "ratio B", "apart", "ours Δ", "CPython Δ"
    );
    let (mut apart, mut compared, mut worst) = (0, 0, (0.0f64, String::new()));
    for x in &ra.rows {
        let Some(y) = rb.rows.iter().find(|y| key(y) == key(x)) else {
            continue;
        };
        let (case, variant) = key(x);
        let (ours, cpy) = (
            change(median(x, "ours"), median(y, "ours")),
            change(median(x, "cpython"), median(y, "cpython")),
        );
        let (p, q) = (x["ratio_median"].as_f64(), y["ratio_median"].as_f64());
        let gap = match (p, q) {
            (Some(p), Some(q)) if p > 0.0 && q > 0.0 => Some((p - q).abs() / p.min(q) * 100.0),
            _ => None,
        };
        let flag = match gap {
            Some(g) => {
                compared += 1;
                if g > worst.0 {
                    worst = (g, variant.clone());
                }
                if g > tolerance {
                    apart += 1;
                    format!("{g:.1}%  <-- apart")
                } else {
                    format!("{g:.1}%")
                }
            }
            None => "—".into(),
        };
        println!(
            "{case:<36} | {variant:<72} | {:>8} | {:>8} | {flag:>7} | {ours:>9} | {cpy:>9}",
            opt(p),
            opt(q)
        );
    }
    println!(
        "{apart} of {compared} ratios more than {tolerance}% apart; the largest gap is {:.1}% ({})",
        worst.0, worst.1
    );
    println!(
        "(apart = |A − B| ÷ the smaller; ours Δ and CPython Δ are B's median against A's. \
         CPython is the same code in both runs, so its Δ is the machine's own drift)"
    );
    Ok(apart)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn run(dir: &std::path::Path, name: &str, ratios: &[(&str, f64)]) -> std::path::PathBuf {
        let rows: Vec<_> = ratios
            .iter()
            .map(|(variant, r)| {
                json!({ "case": "1 start→join no-op", "variant": variant, "unit": "ms",
                        "ours": { "median": 2.0 * r }, "cpython": { "median": 2.0 },
                        "ratio_median": r })
            })
            .collect();
        let path = dir.join(name);
        let doc = json!({ "machine": { "cores": "2" }, "rows": rows });
        std::fs::write(&path, doc.to_string()).unwrap();
        path
    }

    #[test]
    fn counts_the_ratios_further_apart_than_the_tolerance() {
        let dir = tempfile::tempdir().unwrap();
        let a = run(
            dir.path(),
            "a.json",
            &[("x", 1.0), ("y", 1.0), ("only in a", 1.0)],
        );
        let b = run(dir.path(), "b.json", &[("x", 1.2), ("y", 1.1)]);
        assert_eq!(super::compare(&a, &b, 15.0).unwrap(), 1);
        assert_eq!(super::compare(&a, &b, 25.0).unwrap(), 0);
        assert_eq!(super::compare(&a, &b, 5.0).unwrap(), 2);
    }

    #[test]
    fn a_file_not_from_the_harness_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = run(dir.path(), "a.json", &[("x", 1.0)]);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        let e = super::compare(&a, &bad, 15.0).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a file written by mpctl-bench"),
            "{e}"
        );
        let e = super::compare(&a, &a, -1.0).unwrap_err().to_string();
        assert!(e.contains("--tolerance"), "{e}");
    }
}
