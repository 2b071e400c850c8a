//! The results: samples per series and round, the rows that compare them,
//! the table on stdout and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

/// Samples of one series, one `Vec` per round.
pub type Rounds = Vec<Vec<f64>>;

/// Every series measured, by key (e.g. `mpctl/startjoin/sdk`, `cpython/startjoin:fork`).
#[derive(Default)]
pub struct Samples(BTreeMap<String, Rounds>);

impl Samples {
    pub fn add(&mut self, key: &str, round: usize, samples: Vec<f64>) {
        let rounds = self.0.entry(key.to_owned()).or_default();
        if rounds.len() <= round {
            rounds.resize(round + 1, Vec::new());
        }
        rounds[round].extend(samples);
    }

    pub fn get(&self, key: &str) -> Side {
        match self.0.get(key) {
            Some(r) => Side::Measured(r.clone()),
            None => Side::Missing(format!("not measured ({key})")),
        }
    }
}

/// One side of a row.
pub enum Side {
    Measured(Rounds),
    /// The feature does not exist yet: `not available: <reason>`.
    NotAvailable(String),
    /// Nothing to compare with (shown as `—`), or a series that is missing.
    Missing(String),
}

pub struct Row {
    pub case: &'static str,
    pub variant: String,
    pub unit: &'static str,
    pub ours: Side,
    pub cpython: Side,
    /// How many alternating mpctl/CPython blocks each round holds (see
    /// [`Row::blocks`]).
    pub blocks: usize,
}

impl Row {
    pub fn new(case: &'static str, variant: impl Into<String>, unit: &'static str) -> Row {
        Row {
            case,
            variant: variant.into(),
            unit,
            ours: Side::Missing("—".into()),
            cpython: Side::Missing("no CPython counterpart".into()),
            blocks: 1,
        }
    }

    /// Each round measured both sides in `n` alternating blocks (mpctl's
    /// block, then CPython's): the ratio is taken block by block, between
    /// samples at most seconds apart. Both sides are cut into the same
    /// number of blocks: `n`, or fewer when a side has fewer samples in a
    /// round (CPython spawn's single batch in case 2 is compared with all
    /// of mpctl's batches of that round).
    pub fn blocks(mut self, n: usize) -> Row {
        self.blocks = n.max(1);
        self
    }

    pub fn ours(mut self, s: Side) -> Row {
        self.ours = s;
        self
    }

    pub fn cpython(mut self, s: Side) -> Row {
        self.cpython = s;
        self
    }

    /// ours ÷ CPython of the block medians, for each block of each round.
    fn pair_ratios(&self) -> Vec<Vec<f64>> {
        match (&self.ours, &self.cpython) {
            (Side::Measured(a), Side::Measured(b)) => a
                .iter()
                .zip(b)
                .filter(|(x, y)| !x.is_empty() && !y.is_empty())
                .map(|(x, y)| {
                    let n = self.blocks.min(x.len()).min(y.len());
                    chunks(x, n)
                        .zip(chunks(y, n))
                        .map(|(x, y)| median(x) / median(y))
                        .collect()
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The row's ratio: the median over every block of every round (a
    /// median of a few round medians moved with whichever round was
    /// disturbed), the median of each round's blocks, for the table, and
    /// the block ratios themselves.
    fn ratios(&self) -> Ratios {
        let blocks = self.pair_ratios();
        let all: Vec<f64> = blocks.iter().flatten().copied().collect();
        Ratios {
            overall: (!all.is_empty()).then(|| median(&all)),
            per_round: blocks.iter().map(|r| median(r)).collect(),
            blocks,
        }
    }
}

/// A row's ratios, from [`Row::ratios`].
struct Ratios {
    overall: Option<f64>,
    per_round: Vec<f64>,
    blocks: Vec<Vec<f64>>,
}

/// `v` cut into `n` consecutive, nearly equal blocks (fewer if `v` is shorter).
fn chunks(v: &[f64], n: usize) -> impl Iterator<Item = &[f64]> {
    let k = n.min(v.len()).max(1);
    (0..k).map(move |i| &v[i * v.len() / k..(i + 1) * v.len() / k])
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank 99th percentile (with fewer than 100 samples, the maximum).
pub fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((0.99 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The slow tail: p99 of a time, the 1st percentile of a rate (`…/s`),
/// whose slow end is the low one.
fn tail(v: &[f64], unit: &str) -> f64 {
    if unit.ends_with("/s") {
        -p99(&v.iter().map(|x| -x).collect::<Vec<_>>())
    } else {
        p99(v)
    }
}

/// Three significant figures, no exponent.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn all(r: &Rounds) -> Vec<f64> {
    r.iter().flatten().copied().collect()
}

fn side_cells(s: &Side, unit: &str) -> (String, String) {
    match s {
        Side::Measured(r) => {
            let v = all(r);
            (num(median(&v)), num(tail(&v, unit)))
        }
        Side::NotAvailable(_) => ("n/a".into(), String::new()),
        Side::Missing(_) => ("—".into(), String::new()),
    }
}

fn side_json(s: &Side, unit: &str) -> Value {
    match s {
        Side::Measured(r) => {
            let v = all(r);
            json!({
                "median": median(&v),
                "tail": tail(&v, unit),
                "n": v.len(),
                "round_medians": r.iter().map(|x| median(x)).collect::<Vec<_>>(),
                "samples": r,
            })
        }
        Side::NotAvailable(why) => json!({ "not_available": why }),
        Side::Missing(why) => json!({ "none": why }),
    }
}

/// The table: a header with the machine, then one line per row.
pub fn table(machine: &[(&str, String)], rows: &[Row]) -> String {
    let mut out = String::new();
    for (k, v) in machine {
        let _ = writeln!(out, "{k}: {v}");
    }
    let header = [
        "case",
        "variant",
        "unit",
        "ours median",
        "ours tail",
        "CPython median",
        "CPython tail",
        "ratio median",
        "ratio per round / note",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let (om, op) = side_cells(&r.ours, r.unit);
        let (cm, cp) = side_cells(&r.cpython, r.unit);
        let ratios = r.ratios();
        let (rm, rr) = match (&r.ours, ratios.overall) {
            (Side::NotAvailable(why), _) => (String::new(), format!("not available: {why}")),
            (_, None) => (String::new(), per_round(&r.ours)),
            (_, Some(ratio)) => (
                num(ratio),
                ratios
                    .per_round
                    .iter()
                    .map(|x| num(*x))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        lines.push(vec![
            r.case.into(),
            r.variant.clone(),
            r.unit.into(),
            om,
            op,
            cm,
            cp,
            rm,
            rr,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" | ").trim_end());
    }
    out
}

/// A series measured over several rounds without a counterpart: its round
/// medians, so drift within the run shows.
fn per_round(s: &Side) -> String {
    match s {
        Side::Measured(r) if r.len() > 1 => format!(
            "per round: {}",
            r.iter()
                .map(|x| num(median(x)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        _ => String::new(),
    }
}

pub fn json(machine: &[(&str, String)], rows: &[Row]) -> Value {
    let machine: serde_json::Map<String, Value> = machine
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let ratios = r.ratios();
            json!({
                "case": r.case,
                "variant": r.variant,
                "unit": r.unit,
                "ours": side_json(&r.ours, r.unit),
                "cpython": side_json(&r.cpython, r.unit),
                "ratio_median": ratios.overall,
                "ratios": ratios.per_round,
                "blocks": r.blocks,
                "block_ratios": ratios.blocks,
            })
        })
        .collect();
    json!({ "machine": machine, "rows": rows })
}
