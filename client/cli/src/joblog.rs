//! `mpctl map --joblog FILE`: one line per finished input, in GNU
//! parallel's layout (tab-separated, a header line), so `--resume` and
//! `--resume-failed` can skip what already ran or already succeeded.
//!
//! Columns: `Seq` (the input's line number, from 1), `Host` (the node),
//! `Starttime` (Unix seconds), `JobRuntime` (seconds), `Exitval`, `Signal`,
//! `Input` (tabs, newlines and backslashes escaped as `\t`, `\n`, `\\`).
//! An input that could not be run at all has `Exitval` 127 (its program
//! was not found or not executable) or -1 (its worker was lost).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tExitval\tSignal\tInput";

/// One finished input.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub seq: usize,
    pub host: String,
    pub start_unix: f64,
    pub runtime: f64,
    pub exitval: i32,
    pub signal: i32,
    pub input: String,
}

impl Entry {
    pub fn succeeded(&self) -> bool {
        self.exitval == 0 && self.signal == 0
    }

    fn line(&self) -> String {
        format!(
            "{}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{}",
            self.seq,
            if self.host.is_empty() {
                "-"
            } else {
                &self.host
            },
            self.start_unix,
            self.runtime,
            self.exitval,
            self.signal,
            escape(&self.input)
        )
    }

    fn parse(line: &str) -> Option<Entry> {
        let f: Vec<&str> = line.splitn(7, '\t').collect();
        if f.len() != 7 {
            return None;
        }
        Some(Entry {
            seq: f[0].parse().ok()?,
            host: f[1].to_owned(),
            start_unix: f[2].parse().ok()?,
            runtime: f[3].parse().ok()?,
            exitval: f[4].parse().ok()?,
            signal: f[5].parse().ok()?,
            input: unescape(f[6]),
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The last entry of each input in an existing joblog (a rerun appends, so
/// the latest outcome counts).
pub fn read(path: &Path) -> anyhow::Result<HashMap<usize, Entry>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the joblog {}", path.display())),
    };
    let mut last = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading the joblog {}", path.display()))?;
        if i == 0 && line == HEADER || line.is_empty() {
            continue;
        }
        let entry = Entry::parse(&line).with_context(|| {
            format!(
                "{} line {}: not a joblog line (Seq, Host, Starttime, JobRuntime, Exitval, Signal, Input separated by tabs); is this the right file?",
                path.display(),
                i + 1
            )
        })?;
        last.insert(entry.seq, entry);
    }
    Ok(last)
}

/// An open joblog, written one flushed line per finished input so that a
/// `map` that is killed keeps what it finished.
pub struct Joblog {
    path: PathBuf,
    file: std::fs::File,
}

impl Joblog {
    /// Starts a new joblog, or (`append`, for a resume) adds to one.
    pub fn open(path: &Path, append: bool) -> anyhow::Result<Joblog> {
        let existed = append && path.metadata().is_ok_and(|m| m.len() > 0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("opening the joblog {}", path.display()))?;
        let mut log = Joblog {
            path: path.to_owned(),
            file,
        };
        if !existed {
            log.write_line(HEADER)?;
        }
        Ok(log)
    }

    pub fn write(&mut self, e: &Entry) -> anyhow::Result<()> {
        self.write_line(&e.line())
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing the joblog {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_line() {
        let e = Entry {
            seq: 12,
            host: "n1".into(),
            start_unix: 1_700_000_000.25,
            runtime: 0.5,
            exitval: 3,
            signal: 0,
            input: "a\tb\\c".into(),
        };
        let line = e.line();
        assert_eq!(line, "12\tn1\t1700000000.250\t0.500\t3\t0\ta\\tb\\\\c");
        assert_eq!(Entry::parse(&line), Some(e));
    }

    #[test]
    fn the_latest_line_of_an_input_counts() {
        let dir = std::env::temp_dir().join(format!("mpctl-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.log");
        let entry = |seq, exitval| Entry {
            seq,
            host: "n".into(),
            start_unix: 1.0,
            runtime: 0.0,
            exitval,
            signal: 0,
            input: format!("in{seq}"),
        };
        Joblog::open(&path, false)
            .unwrap()
            .write(&entry(1, 4))
            .unwrap();
        let mut log = Joblog::open(&path, true).unwrap();
        log.write(&entry(1, 0)).unwrap();
        log.write(&entry(2, 9)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last = read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text.lines().filter(|l| *l == HEADER).count(), 1);
        assert!(last[&1].succeeded());
        assert!(!last[&2].succeeded());
        assert_eq!(last.len(), 2);
    }
}
