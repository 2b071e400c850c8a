//! Drives `bench/cpython_bench.py` (embedded in the binary, written to a
//! temporary directory) with `python3`: one run per case and round, whose
//! stdout is one JSON object `{"samples": [...], "unit": "..."}`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

const SCRIPT: &str = include_str!("../cpython_bench.py");

pub struct Python {
    script: PathBuf,
    pub version: String,
    _dir: TempDir,
}

impl Python {
    pub fn new() -> Result<Python> {
        let dir = tempfile::Builder::new()
            .prefix("mpctl-bench-py-")
            .tempdir()?;
        let script = dir.path().join("cpython_bench.py");
        std::fs::write(&script, SCRIPT)?;
        let out = std::process::Command::new("python3")
            .arg("--version")
            .output()
            .context("cannot run python3 (CPython 3 must be on PATH for the comparison)")?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Python {
            script,
            version,
            _dir: dir,
        })
    }

    /// Runs one case of the script with `n` iterations; returns its samples.
    pub async fn run(&self, case: &str, n: usize) -> Result<Vec<f64>> {
        let out = tokio::process::Command::new("python3")
            .arg(&self.script)
            .arg(case)
            .arg(n.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run python3")?;
        if !out.status.success() {
            bail!(
                "cpython_bench.py {case} {n} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cpython_bench.py {case}: output is not JSON"))?;
        v["samples"]
            .as_array()
            .context("no samples")?
            .iter()
            .map(|x| x.as_f64().context("sample is not a number"))
            .collect()
    }
}
