//! The exit journal: `DIR/exits.journal`, append-only, one JSON line per
//! record, `{"exit":{...}}` or `{"ack":"ID"}`.
//!
//! An exit is appended and `fdatasync`ed right after it is sent to the agent
//! (so the report travels while the disk syncs) and before the launcher reads
//! anything else, in particular the acknowledgement that lets it go: an exit
//! code survives a crash of the launcher (the agent and then the coordinator
//! hold it), of the agent, or of the node. On
//! open the journal is replayed (a torn last line is tolerated), the exits not
//! yet acknowledged are kept, and the file is rewritten compacted through a
//! temporary file, `fsync` and `rename`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::LauncherError;
use super::protocol::ExitRecord;

/// File name of the journal inside the launcher directory.
pub const JOURNAL_FILE: &str = "exits.journal";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Exit(ExitRecord),
    Ack(String),
}

/// The open journal and the exits it holds that are not yet acknowledged.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Unacknowledged exits by id, with an insertion sequence for ordering.
    unacked: BTreeMap<String, (u64, ExitRecord)>,
    seq: u64,
}

impl Journal {
    /// Replays and compacts `dir/exits.journal`, then opens it for appending.
    /// Returns the journal and a description of each line that was skipped
    /// (for the caller to log).
    pub fn open(dir: &Path) -> Result<(Journal, Vec<String>), LauncherError> {
        let path = dir.join(JOURNAL_FILE);
        let err = |reason: String| LauncherError::Journal {
            path: path.clone(),
            reason,
        };
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(format!("read: {e}"))),
        };
        let (entries, skipped) = parse(&text);
        let mut journal_unacked = BTreeMap::new();
        let mut seq = 0u64;
        for entry in entries {
            match entry {
                Entry::Exit(rec) => {
                    seq += 1;
                    journal_unacked.insert(rec.id.clone(), (seq, rec));
                }
                Entry::Ack(id) => {
                    journal_unacked.remove(&id);
                }
            }
        }
        let mut ordered: Vec<_> = journal_unacked.values().collect();
        ordered.sort_by_key(|(seq, _)| *seq);
        let file = compact(dir, &path, ordered.into_iter().map(|(_, r)| r))
            .map_err(|e| err(format!("compact: {e}")))?;
        let journal = Journal {
            path,
            file,
            unacked: journal_unacked,
            seq,
        };
        Ok((journal, skipped))
    }

    /// Durably records an exit; only then may it be reported. On error the
    /// exit is still held in memory.
    pub fn record_exit(&mut self, rec: &ExitRecord) -> Result<(), LauncherError> {
        // Kept in memory even if the disk fails, so it is still reported.
        self.seq += 1;
        self.unacked.insert(rec.id.clone(), (self.seq, rec.clone()));
        self.append(&Entry::Exit(rec.clone()))
    }

    /// Durably records that the exit of `id` was taken over by the agent.
    /// Acknowledging an unknown id is a no-op.
    pub fn ack(&mut self, id: &str) -> Result<(), LauncherError> {
        if !self.unacked.contains_key(id) {
            return Ok(());
        }
        self.append(&Entry::Ack(id.to_owned()))?;
        self.unacked.remove(id);
        Ok(())
    }

    /// The unacknowledged exit of `id`, if any.
    pub fn unacked(&self, id: &str) -> Option<&ExitRecord> {
        self.unacked.get(id).map(|(_, r)| r)
    }

    /// All unacknowledged exits, oldest first.
    pub fn all_unacked(&self) -> Vec<ExitRecord> {
        let mut v: Vec<_> = self.unacked.values().collect();
        v.sort_by_key(|(seq, _)| *seq);
        v.into_iter().map(|(_, r)| r.clone()).collect()
    }

    fn append(&mut self, entry: &Entry) -> Result<(), LauncherError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| LauncherError::Journal {
            path: self.path.clone(),
            reason: format!("encode: {e}"),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| LauncherError::Journal {
                path: self.path.clone(),
                reason: format!("append: {e}"),
            })
    }
}

/// Parses journal lines; undecodable lines are skipped and described.
fn parse(text: &[u8]) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (n, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) if n == last => skipped.push(format!("torn last line ignored: {e}")),
            Err(e) => skipped.push(format!("line {} ignored: {e}", n + 1)),
        }
    }
    (entries, skipped)
}

/// Rewrites the journal with only `keep`, atomically, and returns it opened
/// for appending.
fn compact<'a>(
    dir: &Path,
    path: &Path,
    keep: impl Iterator<Item = &'a ExitRecord>,
) -> io::Result<File> {
    let tmp = dir.join(format!("{JOURNAL_FILE}.tmp"));
    let mut out = Vec::new();
    for rec in keep {
        serde_json::to_writer(&mut out, &Entry::Exit(rec.clone()))?;
        out.push(b'\n');
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, code: i32) -> ExitRecord {
        ExitRecord {
            id: id.into(),
            pid: 42,
            exitcode: code,
            at_unix_ms: 1,
        }
    }

    #[test]
    fn replay_keeps_unacked_in_order_and_tolerates_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, skipped) = Journal::open(dir.path()).unwrap();
            assert!(skipped.is_empty());
            j.record_exit(&rec("b", 1)).unwrap();
            j.record_exit(&rec("a", 2)).unwrap();
            j.record_exit(&rec("c", -9)).unwrap();
            j.ack("a").unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        f.write_all(br#"{"exit":{"id":"d","pi"#).unwrap();
        drop(f);
        let (j, skipped) = Journal::open(dir.path()).unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(j.all_unacked(), vec![rec("b", 1), rec("c", -9)]);
        let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "compacted: {text}");
        assert!(text.starts_with(r#"{"exit":{"id":"b","#));
    }
}
