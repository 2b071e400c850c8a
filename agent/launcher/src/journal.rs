//! The exit journal: `DIR/exits.journal`, append-only, one JSON line per
//! record, `{"exit":{...}}` or `{"ack":"ID"}`.
//!
//! An exit is reported to the agent first and journaled just after, off the
//! notification path: its line is buffered and written with one `fdatasync`
//! within [`SYNC_DELAY`] (one sync covers every exit of a burst), and always
//! before its acknowledgement is applied: an acknowledgement that arrives
//! sooner syncs it first. So an exit code survives a crash of the
//! launcher (the agent and then the coordinator hold it, and the journal
//! has it within milliseconds), of the agent, or of the node. Ack lines need
//! no sync: a lost one only makes the exit be reported twice, which the
//! coordinator ignores. On open the journal is replayed (a torn last line is
//! tolerated), the exits not yet acknowledged are kept, and the file is
//! rewritten compacted through a temporary file, `fsync` and `rename`; a
//! running launcher compacts the same way once it has appended
//! [`COMPACT_AFTER`] bytes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::LauncherError;
use super::protocol::ExitRecord;

/// File name of the journal inside the launcher directory.
pub const JOURNAL_FILE: &str = "exits.journal";

/// How long an exit may wait in memory before it is written and synced.
/// Long enough that the sync does not compete with the exit's own report
/// (about a millisecond from the launcher to `join` returning), short
/// enough that only a crash of both the launcher and the agent within it
/// could lose an exit.
pub const SYNC_DELAY: Duration = Duration::from_millis(5);

/// A running launcher rewrites its journal once it has appended this much.
pub const COMPACT_AFTER: u64 = 4 << 20;

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
    /// Lines not yet written; `exits_pending` when an exit is among them.
    pending: Vec<u8>,
    exits_pending: bool,
    /// When `pending` must be on disk at the latest.
    due: Option<Instant>,
    /// Bytes appended since the file was last compacted, and the limit.
    appended: u64,
    compact_after: u64,
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
        let (text, existed) = match fs::read(&path) {
            Ok(bytes) => (bytes, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), false),
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
        let file = if existed && journal_unacked.is_empty() && skipped.is_empty() {
            // Every exit in the file was acknowledged: an empty file means
            // the same thing, so truncating needs no fsync (a crash leaves
            // either version, and both replay to nothing). This is the
            // usual case after a clean stop, and saves a launcher start
            // two fsyncs (file and directory) and a rename.
            empty_in_place(&path).map_err(|e| err(format!("truncate: {e}")))?
        } else {
            let mut ordered: Vec<_> = journal_unacked.values().collect();
            ordered.sort_by_key(|(seq, _)| *seq);
            compact(dir, &path, ordered.into_iter().map(|(_, r)| r))
                .map_err(|e| err(format!("compact: {e}")))?
        };
        let journal = Journal {
            path,
            file,
            unacked: journal_unacked,
            seq,
            pending: Vec::new(),
            exits_pending: false,
            due: None,
            appended: 0,
            compact_after: COMPACT_AFTER,
        };
        Ok((journal, skipped))
    }

    /// Records an exit: held in memory at once (so it is reported, and
    /// re-sent after a reconnect), on disk by [`Journal::due`].
    pub fn record_exit(&mut self, rec: &ExitRecord) {
        self.seq += 1;
        self.unacked.insert(rec.id.clone(), (self.seq, rec.clone()));
        self.buffer(&Entry::Exit(rec.clone()));
        self.exits_pending = true;
    }

    /// The exit of `id` was taken over by the agent. The exits still
    /// buffered are synced first (the coordinator's ack comes after its own
    /// commit, so this is rarely needed and never on the exit's path); on a
    /// write error the exit stays held. Acknowledging an unknown id is a no-op.
    pub fn ack(&mut self, id: &str) -> Result<(), LauncherError> {
        if !self.unacked.contains_key(id) {
            return Ok(());
        }
        if self.exits_pending {
            self.flush()?;
        }
        self.unacked.remove(id);
        self.buffer(&Entry::Ack(id.to_owned()));
        Ok(())
    }

    /// When the buffered lines must be written ([`Journal::flush`]); `None`
    /// when nothing is buffered.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Writes the buffered lines, and syncs them if an exit is among them.
    /// On error the lines stay buffered (and the exits in memory) for the
    /// next attempt.
    pub fn flush(&mut self) -> Result<(), LauncherError> {
        if self.pending.is_empty() {
            self.due = None;
            return Ok(());
        }
        let sync = self.exits_pending;
        let written = self.file.write_all(&self.pending).and_then(|()| {
            if sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.due = Some(Instant::now() + SYNC_DELAY);
            return Err(self.error(format!("append: {e}")));
        }
        self.appended += self.pending.len() as u64;
        self.pending.clear();
        self.exits_pending = false;
        self.due = None;
        if self.appended >= self.compact_after {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with only the unacknowledged exits (called by
    /// `flush`, so nothing is buffered).
    fn compact(&mut self) -> Result<(), LauncherError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = compact(dir, &self.path, self.ordered().into_iter())
            .map_err(|e| self.error(format!("compact: {e}")))?;
        self.file = file;
        self.appended = 0;
        Ok(())
    }

    /// The unacknowledged exit of `id`, if any.
    pub fn unacked(&self, id: &str) -> Option<&ExitRecord> {
        self.unacked.get(id).map(|(_, r)| r)
    }

    /// All unacknowledged exits, oldest first.
    pub fn all_unacked(&self) -> Vec<ExitRecord> {
        self.ordered().into_iter().cloned().collect()
    }

    fn ordered(&self) -> Vec<&ExitRecord> {
        let mut v: Vec<_> = self.unacked.values().collect();
        v.sort_by_key(|(seq, _)| *seq);
        v.into_iter().map(|(_, r)| r).collect()
    }

    fn buffer(&mut self, entry: &Entry) {
        // Encoding a plain struct of strings and integers cannot fail.
        if serde_json::to_writer(&mut self.pending, entry).is_ok() {
            self.pending.push(b'\n');
        }
        self.due.get_or_insert_with(|| Instant::now() + SYNC_DELAY);
    }

    fn error(&self, reason: String) -> LauncherError {
        LauncherError::Journal {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Drop for Journal {
    /// A launcher that stops writes what it still holds.
    fn drop(&mut self) {
        let _ = self.flush();
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

/// Empties a journal whose every exit was acknowledged and returns it opened
/// for appending.
fn empty_in_place(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().append(true).open(path)?;
    f.set_len(0)?;
    Ok(f)
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
            result: None,
        }
    }

    /// An exit with a function target's result, quotes and newlines included.
    fn with_result(id: &str) -> ExitRecord {
        ExitRecord {
            result: Some("{\"ok\": [1, \"two\\n\"]}".into()),
            ..rec(id, 0)
        }
    }

    #[test]
    fn replay_keeps_unacked_in_order_and_tolerates_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, skipped) = Journal::open(dir.path()).unwrap();
            assert!(skipped.is_empty());
            j.record_exit(&rec("b", 1));
            j.record_exit(&rec("a", 2));
            j.record_exit(&rec("c", -9));
            j.record_exit(&with_result("r"));
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
        assert_eq!(
            j.all_unacked(),
            vec![rec("b", 1), rec("c", -9), with_result("r")]
        );
        let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 3, "compacted: {text}");
        assert!(text.starts_with(r#"{"exit":{"id":"b","#));
    }

    fn on_disk(dir: &Path) -> String {
        fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap()
    }

    #[test]
    fn an_exit_is_written_late_but_always_before_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.due(), None);
        j.record_exit(&rec("a", 3));
        let due = j.due().expect("an exit is due to be written");
        assert!(due <= Instant::now() + SYNC_DELAY);
        assert_eq!(on_disk(dir.path()), "", "buffered, not yet written");
        assert_eq!(j.all_unacked(), vec![rec("a", 3)], "held in memory");
        // The ack arrives before the deadline: the exit is synced first.
        j.ack("a").unwrap();
        assert_eq!(j.all_unacked(), Vec::<ExitRecord>::new());
        let text = on_disk(dir.path());
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with(r#"{"exit":{"id":"a","#), "{text}");
        // The ack line itself is buffered (it needs no sync).
        assert!(j.due().is_some());
        j.flush().unwrap();
        assert_eq!(j.due(), None);
        let text = on_disk(dir.path());
        assert_eq!(text.lines().nth(1), Some(r#"{"ack":"a"}"#), "{text}");
    }

    #[test]
    fn a_fully_acknowledged_journal_reopens_empty_and_appends_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            for id in ["a", "b"] {
                j.record_exit(&rec(id, 0));
                j.ack(id).unwrap();
            }
            j.flush().unwrap();
        }
        assert_eq!(on_disk(dir.path()).lines().count(), 4);
        let (mut j, skipped) = Journal::open(dir.path()).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(j.all_unacked(), Vec::<ExitRecord>::new());
        assert_eq!(on_disk(dir.path()), "", "emptied in place");
        j.record_exit(&rec("c", 5));
        j.flush().unwrap();
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.all_unacked(), vec![rec("c", 5)]);
        assert!(on_disk(dir.path()).starts_with(r#"{"exit":{"id":"c","#));
    }

    #[test]
    fn a_long_running_journal_compacts_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.compact_after = 10_000;
        j.record_exit(&rec("kept", 7));
        j.flush().unwrap();
        let (mut n, mut largest) = (0, 0);
        loop {
            let id = format!("p{n}");
            j.record_exit(&rec(&id, 0));
            j.flush().unwrap();
            j.ack(&id).unwrap();
            j.flush().unwrap();
            let len = on_disk(dir.path()).len();
            if len < largest {
                break;
            }
            largest = len;
            n += 1;
            assert!(n < 10_000, "never compacted");
        }
        assert!(
            largest >= 9_800,
            "compacted at {largest} bytes, before 10,000"
        );
        drop(j);
        let (j, skipped) = Journal::open(dir.path()).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(j.all_unacked(), vec![rec("kept", 7)]);
    }
}
