//! The exit journal: `DIR/exits.journal`, append-only, one checked record
//! per line, `CRC SP JSON LF`: `JSON` is `{"exit":{...}}` or `{"ack":"ID"}`
//! (serde_json never writes a raw newline), `CRC` its CRC32C as 8 lowercase
//! hex digits.
//!
//! An exit is reported to the agent first and journaled just after, off the
//! notification path: its line is buffered and written with one `fdatasync`
//! within [`SYNC_DELAY`] (one sync covers every exit of a burst), and always
//! before its acknowledgement is applied: an acknowledgement that arrives
//! sooner syncs it first. So an exit code survives a crash of the
//! launcher (the agent and then the coordinator hold it, and the journal
//! has it within milliseconds), of the agent, or of the node. Ack lines need
//! no sync: a lost one only makes the exit be reported twice, which the
//! coordinator ignores. On open the journal is replayed, the exits not yet
//! acknowledged are kept, and the file is rewritten compacted through a
//! temporary file, `fsync` and `rename`; a running launcher compacts the
//! same way once it has appended [`COMPACT_AFTER`] bytes.
//!
//! Integrity ([`Journal::open`] returns an [`OpenReport`]):
//! - a torn tail (bytes after the last newline: a record being written when
//!   the launcher or the node stopped) is cut off at the last good record;
//! - a complete line whose checksum fails, anywhere (a flipped byte, an
//!   edited exit code, two records glued together), is *damaged*: it is
//!   never believed and never silently dropped. The whole file is kept
//!   byte for byte as `exits.journal.damaged-MS` before compaction, and
//!   every open reports the damaged records of every such file still in the
//!   directory (the launcher logs them and puts them in each `Hello`), until
//!   an operator removes it. The process whose exit was in a damaged record
//!   gets no exit code from the node: it is not in the `Hello`'s exits, so
//!   the coordinator keeps it `lost` (never a made-up code), and a launch
//!   of the id the record seems to name is refused (it may have run);
//! - a write that fails part-way is cut back to the last whole record
//!   before anything else is appended, so a partial write never glues two
//!   records together.
//!
//! Journals written before checksums (every line plain JSON) are read as
//! they are, once, with a log line saying so, and rewritten checked; a
//! plain-JSON line in a checked journal is damage.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::LauncherError;
use super::log;
use super::protocol::{ExitRecord, JournalDamage};

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

/// Prefix of the name of a damaged journal kept for the operator.
pub const DAMAGED_PREFIX: &str = "exits.journal.damaged-";

/// Length of the checksum field (a space follows it).
const CRC_LEN: usize = 8;

/// At most this many damaged records are reported one by one per file; one
/// more entry counts the rest.
const MAX_DAMAGE_REPORTED: usize = 64;

/// What [`Journal::open`] found, for the launcher's log and the `Hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// A torn last record that was cut off: its offset and length.
    pub torn_tail: Option<(u64, u64)>,
    /// Damaged records, in the journal just opened and in every damaged
    /// journal kept from earlier opens.
    pub damaged: Vec<JournalDamage>,
    /// Records read from a journal written before checksums.
    pub legacy_records: usize,
}

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
    /// Length of the file up to its last whole record, and whether bytes
    /// of a failed write may follow it (cut before the next append).
    good_len: u64,
    tail_dirty: bool,
}

impl Journal {
    /// Replays and compacts `dir/exits.journal`, then opens it for appending.
    /// Returns the journal and what was wrong with it (for the caller to log
    /// and report).
    pub fn open(dir: &Path) -> Result<(Journal, OpenReport), LauncherError> {
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
        let parsed = parse(&text);
        let mut report = OpenReport {
            torn_tail: parsed.torn_tail,
            damaged: Vec::new(),
            legacy_records: parsed.legacy,
        };
        if !parsed.damaged.is_empty() {
            // Kept byte for byte before compaction drops the bad lines.
            keep_damaged(dir, &text).map_err(|e| err(format!("keeping a damaged copy: {e}")))?;
        }
        report.damaged = damage_kept_in(dir).map_err(|e| err(format!("listing: {e}")))?;
        let mut journal_unacked = BTreeMap::new();
        let mut seq = 0u64;
        for entry in parsed.entries {
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
        let clean = parsed.damaged.is_empty() && parsed.torn_tail.is_none() && parsed.legacy == 0;
        let file = if existed && journal_unacked.is_empty() && clean {
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
        let good_len = file
            .metadata()
            .map_err(|e| err(format!("stat: {e}")))?
            .len();
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
            good_len,
            tail_dirty: false,
        };
        Ok((journal, report))
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
        if self.tail_dirty {
            // What a failed write left after the last whole record goes
            // first, so that the next record starts on a line of its own.
            if let Err(e) = self.file.set_len(self.good_len) {
                self.due = Some(Instant::now() + SYNC_DELAY);
                return Err(self.error(format!(
                    "cutting a partial write back to {} bytes: {e}",
                    self.good_len
                )));
            }
            self.tail_dirty = false;
        }
        let written = self.file.write_all(&self.pending).and_then(|()| {
            if sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.tail_dirty = true;
            let _ = self
                .file
                .set_len(self.good_len)
                .map(|()| self.tail_dirty = false);
            self.due = Some(Instant::now() + SYNC_DELAY);
            return Err(self.error(format!("append: {e}")));
        }
        self.good_len += self.pending.len() as u64;
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
        self.good_len = file
            .metadata()
            .map_err(|e| self.error(format!("stat: {e}")))?
            .len();
        self.file = file;
        self.appended = 0;
        self.tail_dirty = false;
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
        encode(&mut self.pending, entry);
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

/// Writes what [`Journal::open`] found to the launcher's log: damage
/// loudly, one line per record.
pub fn log_report(report: &OpenReport) {
    if let Some((offset, len)) = report.torn_tail {
        log(format_args!(
            "journal: torn tail cut off: {len} bytes at offset {offset} after the last whole record (a record being written when the launcher or the node stopped; its exit had been reported to the agent first)"
        ));
    }
    if report.legacy_records > 0 {
        log(format_args!(
            "journal: {} records read from a journal written before checksums (not verifiable); rewritten with checksums",
            report.legacy_records
        ));
    }
    for d in &report.damaged {
        log(format_args!(
            "JOURNAL DAMAGED: {d}; not believed: no exit code is reported from it, and its process is not launched again; the file is kept for inspection: remove it to clear this report"
        ));
    }
}

/// Appends one checked record, `CRC SP JSON LF`.
fn encode(out: &mut Vec<u8>, entry: &Entry) {
    // Encoding a plain struct of strings and integers cannot fail.
    let Ok(json) = serde_json::to_vec(entry) else {
        return;
    };
    let _ = write!(out, "{:08x} ", crc32c::crc32c(&json));
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// A journal's content, read.
#[derive(Debug, Default)]
struct Parsed {
    entries: Vec<Entry>,
    damaged: Vec<(u64, u64, String, Option<String>)>,
    torn_tail: Option<(u64, u64)>,
    legacy: usize,
}

/// Reads every record; damaged lines are described (line, offset, reason,
/// the id they seem to name), never returned as entries.
fn parse(text: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    // A journal written before checksums: every line is plain JSON.
    let legacy = text.first() == Some(&b'{');
    let mut offset = 0usize;
    let mut line_no = 0u64;
    while offset < text.len() {
        let Some(len) = text[offset..].iter().position(|b| *b == b'\n') else {
            parsed.torn_tail = Some((offset as u64, (text.len() - offset) as u64));
            break;
        };
        line_no += 1;
        let line = &text[offset..offset + len];
        let at = offset as u64;
        offset += len + 1;
        if line.is_empty() {
            continue;
        }
        let checked = if legacy { Ok(line) } else { check(line) };
        let decoded = checked.and_then(|json| {
            serde_json::from_slice::<Entry>(json)
                .map_err(|e| format!("the checksum matches but the record does not decode: {e}"))
        });
        match decoded {
            Ok(entry) => {
                parsed.legacy += usize::from(legacy);
                parsed.entries.push(entry);
            }
            Err(reason) => {
                let suspect = suspect_id(line);
                parsed.damaged.push((line_no, at, reason, suspect));
            }
        }
    }
    parsed
}

/// The JSON of a checked line whose checksum matches.
fn check(line: &[u8]) -> Result<&[u8], String> {
    let (Some(crc), Some(b' ')) = (line.get(..CRC_LEN), line.get(CRC_LEN)) else {
        return Err("no checksum field".to_owned());
    };
    let want = std::str::from_utf8(crc)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| "the checksum field is not 8 hex digits".to_owned())?;
    let json = &line[CRC_LEN + 1..];
    let got = crc32c::crc32c(json);
    if got != want {
        return Err(format!(
            "checksum mismatch (recorded {want:08x}, content {got:08x})"
        ));
    }
    Ok(json)
}

/// The process id a damaged line seems to name, for the report only: the
/// first `"id":"..."` in it, if any. Never trusted for anything else.
fn suspect_id(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    for key in ["\"id\":\"", "\"ack\":\""] {
        if let Some(start) = text.find(key).map(|i| i + key.len()) {
            let id: String = text[start..]
                .chars()
                .take_while(|c| *c != '"')
                .take(128)
                .collect();
            if !id.is_empty() {
                return Some(id);
            }
        }
    }
    None
}

/// Keeps `text` (a journal with damaged records) as
/// `DIR/exits.journal.damaged-MS`, 0600, synced.
fn keep_damaged(dir: &Path, text: &[u8]) -> io::Result<PathBuf> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut n = 0;
    let (path, mut f) = loop {
        let name = match n {
            0 => format!("{DAMAGED_PREFIX}{ms}"),
            n => format!("{DAMAGED_PREFIX}{ms}.{n}"),
        };
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => break (path, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    };
    f.write_all(text)?;
    f.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The damaged records of every damaged journal kept in `dir`, oldest file
/// first.
pub fn damage_kept_in(dir: &Path) -> io::Result<Vec<JournalDamage>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(DAMAGED_PREFIX))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = fs::read(&path)?;
        let damaged = parse(&text).damaged;
        let more = damaged.len().saturating_sub(MAX_DAMAGE_REPORTED);
        for (line, offset, reason, suspect_id) in damaged.into_iter().take(MAX_DAMAGE_REPORTED) {
            out.push(JournalDamage {
                preserved: path.clone(),
                line,
                offset,
                reason,
                suspect_id,
            });
        }
        if more > 0 {
            out.push(JournalDamage {
                preserved: path.clone(),
                line: 0,
                offset: 0,
                reason: format!("and {more} more damaged records in this file"),
                suspect_id: None,
            });
        }
    }
    Ok(out)
}

/// Empties a journal whose every exit was acknowledged and returns it opened
/// for appending.
fn empty_in_place(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().append(true).open(path)?;
    f.set_len(0)?;
    // A journal from before files were kept private is made so.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
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
        encode(&mut out, &Entry::Exit(rec.clone()));
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

    /// The JSON of each checked line (its checksum verified).
    fn records(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                let json = check(l.as_bytes()).unwrap_or_else(|e| panic!("{e}: {l}"));
                String::from_utf8(json.to_vec()).unwrap()
            })
            .collect()
    }

    #[test]
    fn replay_keeps_unacked_in_order_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, report) = Journal::open(dir.path()).unwrap();
            assert_eq!(report, OpenReport::default());
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
        let whole = f.metadata().unwrap().len();
        f.write_all(br#"0badc0de {"exit":{"id":"d","pi"#).unwrap();
        drop(f);
        let (j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            report,
            OpenReport {
                torn_tail: Some((whole, 30)),
                ..OpenReport::default()
            }
        );
        assert_eq!(
            j.all_unacked(),
            vec![rec("b", 1), rec("c", -9), with_result("r")]
        );
        let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        let recs = records(&text);
        assert_eq!(recs.len(), 3, "compacted: {text}");
        assert!(recs[0].starts_with(r#"{"exit":{"id":"b","#));
        assert!(text.ends_with('\n'));
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
        assert!(
            records(&text)[0].starts_with(r#"{"exit":{"id":"a","#),
            "{text}"
        );
        // The ack line itself is buffered (it needs no sync).
        assert!(j.due().is_some());
        j.flush().unwrap();
        assert_eq!(j.due(), None);
        let text = on_disk(dir.path());
        assert_eq!(records(&text)[1], r#"{"ack":"a"}"#, "{text}");
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
        let (mut j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(report, OpenReport::default());
        assert_eq!(j.all_unacked(), Vec::<ExitRecord>::new());
        assert_eq!(on_disk(dir.path()), "", "emptied in place");
        j.record_exit(&rec("c", 5));
        j.flush().unwrap();
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.all_unacked(), vec![rec("c", 5)]);
        assert!(records(&on_disk(dir.path()))[0].starts_with(r#"{"exit":{"id":"c","#));
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
        let (j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(report, OpenReport::default());
        assert_eq!(j.all_unacked(), vec![rec("kept", 7)]);
    }

    /// A journal holding exits a (1), b (21), c (3), written and closed.
    fn three_exits(dir: &Path) -> String {
        let (mut j, _) = Journal::open(dir).unwrap();
        for (id, code) in [("a", 1), ("b", 21), ("c", 3)] {
            j.record_exit(&rec(id, code));
        }
        j.flush().unwrap();
        drop(j);
        on_disk(dir)
    }

    fn kept_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(DAMAGED_PREFIX)
            })
            .collect();
        v.sort();
        v
    }

    /// Damage in line 2 (b's record): b is not believed, a and c are kept,
    /// the damaged file is kept byte for byte and reported on every open.
    fn assert_b_damaged(dir: &Path, damaged_text: &str, reason_has: &str) {
        let (j, report) = Journal::open(dir).unwrap();
        assert_eq!(
            j.all_unacked(),
            vec![rec("a", 1), rec("c", 3)],
            "b is not believed"
        );
        let kept = kept_files(dir);
        assert_eq!(kept.len(), 1);
        assert_eq!(fs::read_to_string(&kept[0]).unwrap(), damaged_text);
        assert_eq!(
            fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let offset = damaged_text.find('\n').unwrap() as u64 + 1;
        assert_eq!(report.torn_tail, None);
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        let d = &report.damaged[0];
        assert_eq!((d.line, d.offset), (2, offset));
        assert_eq!(d.suspect_id.as_deref(), Some("b"));
        assert_eq!(d.preserved, kept[0]);
        assert!(d.reason.contains(reason_has), "{d:?}");
        drop(j);
        // Still reported after the journal itself was rewritten clean.
        let (j, again) = Journal::open(dir).unwrap();
        assert_eq!(again.damaged, report.damaged);
        assert_eq!(j.all_unacked(), vec![rec("a", 1), rec("c", 3)]);
        assert_eq!(kept_files(dir).len(), 1, "kept once, not once per open");
    }

    #[test]
    fn an_edited_exit_code_is_detected_and_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let text = three_exits(dir.path());
        let edited = text.replacen(r#""exitcode":21"#, r#""exitcode":31"#, 1);
        assert_ne!(edited, text);
        fs::write(dir.path().join(JOURNAL_FILE), &edited).unwrap();
        assert_b_damaged(dir.path(), &edited, "checksum mismatch");
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_detected_and_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let text = three_exits(dir.path());
        let mut bytes = text.into_bytes();
        let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        // A bit of the checksum field, then of the pid.
        for at in [second + 3, second + 30] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(JOURNAL_FILE), &flipped).unwrap();
            let text = String::from_utf8(flipped).unwrap();
            assert_b_damaged(dir.path(), &text, "checksum");
        }
        // A lost newline glues b to c: both are damaged, neither believed.
        let end_b = second + bytes[second..].iter().position(|b| *b == b'\n').unwrap();
        bytes[end_b] = b' ';
        fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let (j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.all_unacked(), vec![rec("a", 1)]);
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.damaged[0].line, 2);
    }

    #[test]
    fn a_plain_json_line_in_a_checked_journal_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let text = three_exits(dir.path());
        let mut lines: Vec<&str> = text.lines().collect();
        let plain = lines[1][CRC_LEN + 1..].to_owned();
        lines[1] = &plain;
        let edited = format!("{}\n", lines.join("\n"));
        fs::write(dir.path().join(JOURNAL_FILE), &edited).unwrap();
        assert_b_damaged(dir.path(), &edited, "no checksum field");
    }

    #[test]
    fn a_journal_from_before_checksums_is_read_and_rewritten_checked() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = concat!(
            r#"{"exit":{"id":"a","pid":42,"exitcode":1,"at_unix_ms":1}}"#,
            "\n",
            r#"{"exit":{"id":"b","pid":42,"exitcode":2,"at_unix_ms":1}}"#,
            "\n",
            r#"{"ack":"a"}"#,
            "\n",
        );
        fs::write(dir.path().join(JOURNAL_FILE), legacy).unwrap();
        let (j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            report,
            OpenReport {
                legacy_records: 3,
                ..OpenReport::default()
            }
        );
        assert_eq!(j.all_unacked(), vec![rec("b", 2)]);
        let recs = records(&on_disk(dir.path()));
        assert_eq!(recs.len(), 1);
        drop(j);
        let (_, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(report, OpenReport::default());
    }

    #[test]
    fn a_partial_write_is_cut_back_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.record_exit(&rec("a", 1));
        j.flush().unwrap();
        // What a write that failed part-way leaves behind.
        let mut raw = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        raw.write_all(br#"1234abcd {"exit":{"id":"b","#).unwrap();
        j.tail_dirty = true;
        j.record_exit(&rec("c", 3));
        j.flush().unwrap();
        let text = on_disk(dir.path());
        assert_eq!(records(&text).len(), 2, "{text}");
        drop(j);
        let (j, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(report, OpenReport::default());
        assert_eq!(j.all_unacked(), vec![rec("a", 1), rec("c", 3)]);
    }

    #[test]
    fn the_journal_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        three_exits(dir.path());
        let path = dir.path().join(JOURNAL_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(j);
    }
}
