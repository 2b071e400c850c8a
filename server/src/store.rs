//! The process table on disk: one SQLite file (WAL, `synchronous=FULL`) owned
//! by one writer thread.
//!
//! Writers submit a [`Batch`]: rows to upsert plus the agent messages that may
//! only leave once those rows are durable (a `Launch` after its process row, an
//! `AckExit` after the exit). The thread commits every batch waiting in its
//! queue in one transaction (group commit), then sends their messages in
//! submission order, then answers each submitter. A batch someone waits for
//! ([`Pending::durable`]) is committed at once; one nobody waits for (an
//! agent's report) may wait up to [`COMMIT_DELAY`] for company, so its sync
//! does not compete for the CPU with the answers the report wakes (a `join`
//! returning) and bursts share one sync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mpctl_proto::v1::{
    coordinator_message, AgentInfo, CoordinatorMessage, ProcessInfo, StartRequest,
};
use prost::Message;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: row {id} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        id: String,
        reason: String,
    },
    /// A commit failed: the change was rolled back and nothing that
    /// depended on it was sent.
    #[error("{0}")]
    Write(WriteFailure),
    #[error("state database writer has stopped")]
    WriterGone,
}

/// Why a commit failed: the OS cause (ENOSPC, a read-only file system, …)
/// and the database path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    pub path: PathBuf,
    pub cause: String,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot write the state database {}: {}; the change was not made (retry once the disk takes writes again)",
            self.path.display(),
            self.cause
        )
    }
}

/// One row change.
pub enum Op {
    Process(Box<(ProcessInfo, StartRequest)>),
    Agent(Box<AgentInfo>),
    NextNumber(u64),
    /// A process row that must not exist: a rolled-back start, or a
    /// finished process that retention removed.
    DeleteProcess(String),
    /// An agent row that must not exist (a rolled-back first registration).
    DeleteAgent(String),
    /// A node credential's SHA-256 and when it was issued; `None` forgets it.
    NodeCredential {
        name: String,
        hash: Option<([u8; 32], i64)>,
    },
}

/// A message to an agent session, sent after the batch is durable.
pub type Outbound = (
    mpsc::UnboundedSender<CoordinatorMessage>,
    CoordinatorMessage,
);

#[derive(Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub after_commit: Vec<Outbound>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.after_commit.is_empty()
    }

    /// Whether a message in it starts something (a `Launch` of a queued
    /// process, a signal to a daemon child): then it must not wait for the
    /// group commit. An `AckExit` can wait.
    fn carries_work(&self) -> bool {
        self.after_commit
            .iter()
            .any(|(_, m)| !matches!(m.msg, Some(coordinator_message::Msg::AckExit(_))))
    }
}

/// How long a batch nobody waits for may wait for others before it is
/// committed. Its agent messages (an `AckExit`) wait with it; nothing is
/// lost if the coordinator stops meanwhile, as the agent re-sends what was
/// not acknowledged.
pub const COMMIT_DELAY: Duration = Duration::from_millis(2);

/// While commits fail, how often the writer tries again on its own (with
/// the repair rows of what was rolled back, or a one-row probe), so the
/// coordinator notices the disk is back without a client's help.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// What the writer tells the state it mirrors (the core), on its thread.
pub trait Sink: Send + Sync {
    /// Every batch up to `seq` is durable.
    fn committed(&self, seq: u64);
    /// The batch `first` and every later one failed: undo them all (newest
    /// first) and say up to which sequence number that went, with the rows
    /// that put the disk back to the table as it now is (a failed commit
    /// may have reached the disk in part).
    fn failed(&self, first: u64, why: &WriteFailure) -> Rollback;
    /// A commit succeeded after failures.
    fn recovered(&self);
}

/// The answer to [`Sink::failed`].
#[derive(Default)]
pub struct Rollback {
    /// Every batch up to this one was undone.
    pub through: u64,
    pub repair: Vec<Op>,
}

struct Job {
    seq: u64,
    batch: Batch,
    done: oneshot::Sender<Result<(), WriteFailure>>,
}

enum Msg {
    Job(Job),
    /// Someone waits: commit what is queued now.
    Flush,
    Attach(Weak<dyn Sink>),
}

/// Everything read back at start-up.
pub struct Loaded {
    pub processes: Vec<(ProcessInfo, StartRequest)>,
    pub agents: Vec<AgentInfo>,
    pub next_number: u64,
    /// `(node name, SHA-256 of its credential, issued at unix ms)`.
    pub node_credentials: Vec<(String, [u8; 32], i64)>,
}

#[derive(Clone)]
pub struct Store {
    tx: std_mpsc::Sender<Msg>,
    failing: Arc<Mutex<Option<WriteFailure>>>,
    /// Test seam: every commit fails as on a full disk while set.
    #[cfg_attr(not(test), allow(dead_code))]
    inject_full: Arc<std::sync::atomic::AtomicBool>,
    /// How long each commit took (the transaction and its sync).
    commit_seconds: mpctl_metrics::Seconds,
}

/// A submitted batch; await it to know it is durable.
pub struct Pending {
    done: oneshot::Receiver<Result<(), WriteFailure>>,
    /// Where to ask for a commit now; `None` when one is asked for already.
    writer: Option<std_mpsc::Sender<Msg>>,
}

impl Pending {
    /// Commits the batch now (with whatever else is queued) and waits for it.
    pub async fn durable(self) -> Result<(), StoreError> {
        if let Some(writer) = &self.writer {
            let _ = writer.send(Msg::Flush);
        }
        self.committed().await
    }

    /// Waits for the batch, letting the writer group it with later ones for
    /// up to [`COMMIT_DELAY`].
    pub async fn committed(self) -> Result<(), StoreError> {
        match self.done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StoreError::Write(why)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS processes (
    id TEXT PRIMARY KEY,
    request_id TEXT,
    state INTEGER NOT NULL,
    node TEXT NOT NULL,
    info BLOB NOT NULL,
    request BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS processes_state ON processes(state);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    info BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS node_credentials (
    name TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    issued_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

impl Store {
    /// Opens (or creates) `path`, reads everything back, and starts the writer.
    pub fn open(path: &Path) -> Result<(Store, Loaded), StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let loaded = load(&conn, path)?;
        let (tx, rx) = std_mpsc::channel::<Msg>();
        let failing = Arc::new(Mutex::new(None));
        let commit_seconds = mpctl_metrics::Seconds::default();
        let inject_full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            inject_full: Arc::clone(&inject_full),
            conn,
            rx,
            path: path.to_owned(),
            sink: None,
            repair: Vec::new(),
            failing: Arc::clone(&failing),
            last_seq: 0,
            commit_seconds: commit_seconds.clone(),
        };
        std::thread::Builder::new()
            .name("mpctl-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((
            Store {
                tx,
                failing,
                inject_full,
                commit_seconds,
            },
            loaded,
        ))
    }

    /// The commit latency histogram (clones share it), for the metrics.
    pub fn commit_seconds(&self) -> mpctl_metrics::Seconds {
        self.commit_seconds.clone()
    }

    /// Tells the writer whom to report commits and failures to.
    pub fn attach(&self, sink: Weak<dyn Sink>) {
        let _ = self.tx.send(Msg::Attach(sink));
    }

    /// Queues batch number `seq` (numbers rise by one per batch). Call
    /// while holding the table lock so batches keep the order of the state
    /// changes they record.
    pub fn submit(&self, seq: u64, batch: Batch) -> Pending {
        let (done, rx) = oneshot::channel();
        let urgent = batch.carries_work();
        if let Err(std_mpsc::SendError(Msg::Job(job))) =
            self.tx.send(Msg::Job(Job { seq, batch, done }))
        {
            let _ = job.done.send(Err(WriteFailure {
                path: PathBuf::new(),
                cause: "the writer thread stopped".into(),
            }));
        } else if urgent {
            let _ = self.tx.send(Msg::Flush);
            return Pending {
                done: rx,
                writer: None,
            };
        }
        Pending {
            done: rx,
            writer: Some(self.tx.clone()),
        }
    }

    /// Asks for a commit of what is queued now.
    pub fn flush(&self) {
        let _ = self.tx.send(Msg::Flush);
    }

    /// Makes every commit fail as on a full disk (`SQLITE_FULL`), or not.
    #[cfg(test)]
    pub fn inject_disk_full(&self, on: bool) {
        self.inject_full
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Why commits fail, while they do (for readiness).
    pub fn failing(&self) -> Option<WriteFailure> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
fn load(conn: &Connection, path: &Path) -> Result<Loaded, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let corrupt = |id: &str, e: prost::DecodeError| StoreError::Corrupt {
        path: path.to_owned(),
        id: id.to_owned(),
        reason: e.to_string(),
    };
    let mut processes = Vec::new();
    let mut stmt = conn
        .prepare("SELECT id, info, request FROM processes ORDER BY rowid")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(err)?;
    for row in rows {
        let (id, info, request) = row.map_err(err)?;
        let info = ProcessInfo::decode(info.as_slice()).map_err(|e| corrupt(&id, e))?;
        let request = StartRequest::decode(request.as_slice()).map_err(|e| corrupt(&id, e))?;
        processes.push((info, request));
    }
    let mut agents = Vec::new();
    let mut stmt = conn
        .prepare("SELECT name, info FROM agents ORDER BY name")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(err)?;
    for row in rows {
        let (name, info) = row.map_err(err)?;
        agents.push(AgentInfo::decode(info.as_slice()).map_err(|e| corrupt(&name, e))?);
    }
    let next_number: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'next_number'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(1),
            e => Err(e),
        })
        .map_err(err)?;
    let mut node_credentials = Vec::new();
    let mut stmt = conn
        .prepare("SELECT name, hash, issued_unix_ms FROM node_credentials ORDER BY name")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(err)?;
    for row in rows {
        let (name, hash, issued) = row.map_err(err)?;
        let hash: [u8; 32] = hash.try_into().map_err(|h: Vec<u8>| StoreError::Corrupt {
            path: path.to_owned(),
            id: name.clone(),
            reason: format!("node credential hash of {} bytes, not 32", h.len()),
        })?;
        node_credentials.push((name, hash, issued));
    }
    Ok(Loaded {
        processes,
        agents,
        next_number: next_number.max(1) as u64,
        node_credentials,
    })
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    rx: std_mpsc::Receiver<Msg>,
    path: PathBuf,
    sink: Option<Weak<dyn Sink>>,
    /// Rows that put the disk back to the table after a rollback: written
    /// first in every commit until one succeeds.
    repair: Vec<Op>,
    failing: Arc<Mutex<Option<WriteFailure>>>,
    /// The highest batch number seen.
    last_seq: u64,
    inject_full: Arc<std::sync::atomic::AtomicBool>,
    commit_seconds: mpctl_metrics::Seconds,
}

impl Writer {
    fn sink(&self) -> Option<Arc<dyn Sink>> {
        self.sink.as_ref().and_then(Weak::upgrade)
    }

    fn degraded(&self) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn run(mut self) {
        let mut jobs: Vec<Job> = Vec::new();
        // When the oldest queued job must be committed at the latest.
        let mut due: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut open = true;
        while open || !jobs.is_empty() {
            let wake = [due, retry_at].into_iter().flatten().min();
            let first = if !open {
                None
            } else if let Some(d) = wake {
                match self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        None
                    }
                }
            } else {
                self.rx.recv().map_err(|_| open = false).ok()
            };
            let mut now = !open;
            let more: Vec<Msg> = self.rx.try_iter().collect();
            for msg in first.into_iter().chain(more) {
                match msg {
                    Msg::Job(j) => {
                        jobs.push(j);
                        due.get_or_insert_with(|| Instant::now() + COMMIT_DELAY);
                    }
                    Msg::Flush => now = true,
                    Msg::Attach(s) => self.sink = Some(s),
                }
            }
            if jobs.is_empty() {
                due = None;
            } else if now || due.is_some_and(|d| d <= Instant::now()) {
                jobs = self.commit_and_answer(std::mem::take(&mut jobs));
                due = (!jobs.is_empty()).then(Instant::now);
            }
            if !self.degraded() {
                retry_at = None;
            } else if jobs.is_empty() && retry_at.is_some_and(|r| r <= Instant::now()) {
                // Nothing to commit, but the disk may be back: try the repair
                // rows (or a probe row) on our own.
                let _ = self.commit_and_answer(Vec::new());
                retry_at = self.degraded().then(|| Instant::now() + RETRY_INTERVAL);
            } else if retry_at.is_none() {
                retry_at = Some(Instant::now() + RETRY_INTERVAL);
            }
        }
    }

    /// Commits `jobs` (after the repair rows) in one transaction, then sends
    /// their messages and answers their submitters, in submission order. On
    /// failure, the core rolls back every batch from the first of `jobs`
    /// on; their submitters get the failure and their messages are dropped.
    /// Returns the jobs submitted after that rollback (to commit next).
    fn commit_and_answer(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        if let Some(last) = jobs.last() {
            self.last_seq = self.last_seq.max(last.seq);
        }
        let probe = jobs.is_empty() && self.repair.is_empty();
        let result = if self.inject_full.load(std::sync::atomic::Ordering::SeqCst) {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("injected by a test".into()),
            ))
        } else {
            let began = Instant::now();
            let r = commit(&mut self.conn, &self.repair, &jobs, probe);
            self.commit_seconds.observe(began.elapsed());
            r
        };
        match result {
            Ok(()) => {
                self.repair.clear();
                let was_failing = self
                    .failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let sink = self.sink();
                if let Some(why) = was_failing {
                    tracing::warn!(path = %self.path.display(), was = %why.cause, "state database writes work again");
                    if let Some(s) = &sink {
                        s.recovered();
                    }
                }
                if let (Some(s), Some(last)) = (&sink, jobs.last()) {
                    s.committed(last.seq);
                }
                for job in jobs {
                    for (tx, msg) in job.batch.after_commit {
                        // A closed session is fine: the agent re-registers and is
                        // reconciled from the table.
                        let _ = tx.send(msg);
                    }
                    let _ = job.done.send(Ok(()));
                }
                Vec::new()
            }
            Err(e) => {
                let why = WriteFailure {
                    path: self.path.clone(),
                    cause: cause(&e, &self.path),
                };
                let first_time = self
                    .failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(why.clone())
                    .is_none();
                if first_time || !jobs.is_empty() {
                    tracing::error!(path = %self.path.display(), cause = %why.cause, batches = jobs.len(), "state database commit failed; its changes are rolled back and nothing that depended on them was sent");
                }
                let Some(first) = jobs.first().map(|j| j.seq) else {
                    return Vec::new();
                };
                let rollback = match self.sink() {
                    Some(s) => s.failed(first, &why),
                    None => Rollback {
                        through: self.last_seq,
                        repair: Vec::new(),
                    },
                };
                self.repair.extend(rollback.repair);
                for job in jobs {
                    let _ = job.done.send(Err(why.clone()));
                }
                // Every batch up to `through` was submitted before the
                // rollback (under the table lock), so it is queued already.
                let mut later = Vec::new();
                for msg in self.rx.try_iter().collect::<Vec<_>>() {
                    match msg {
                        Msg::Job(j) if j.seq <= rollback.through => {
                            let _ = j.done.send(Err(why.clone()));
                        }
                        Msg::Job(j) => later.push(j),
                        Msg::Flush => {}
                        Msg::Attach(s) => self.sink = Some(s),
                    }
                }
                later
            }
        }
    }
}

/// What the OS said, in words an operator acts on: the sqlite code names
/// a full disk; a failed write is checked against the file system (full,
/// or mounted read-only).
fn cause(e: &rusqlite::Error, path: &Path) -> String {
    use rusqlite::ErrorCode;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let fs = nix::sys::statvfs::statvfs(dir).ok();
    let read_only = fs
        .as_ref()
        .is_some_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    let full = fs.as_ref().is_some_and(|s| s.blocks_available() == 0);
    let reason = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "no space left on device (ENOSPC)",
        _ if read_only => "read-only file system (EROFS)",
        Some(ErrorCode::ReadOnly) => "the database is read-only (EROFS or permissions)",
        _ if full => "no space left on device (ENOSPC)",
        _ => "",
    };
    if reason.is_empty() {
        e.to_string()
    } else {
        format!("{reason}: {e}")
    }
}

enum ProcRow<'a> {
    Put(&'a (ProcessInfo, StartRequest)),
    Delete(&'a str),
}

fn commit(conn: &mut Connection, repair: &[Op], jobs: &[Job], probe: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put_process = tx.prepare_cached(
            "INSERT OR REPLACE INTO processes (id, request_id, state, node, info, request)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut put_agent =
            tx.prepare_cached("INSERT OR REPLACE INTO agents (name, info) VALUES (?1, ?2)")?;
        let mut put_meta =
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        if probe {
            put_meta.execute(params!["probe", crate::core::now_ms()])?;
        }
        let mut put_credential = tx.prepare_cached(
            "INSERT OR REPLACE INTO node_credentials (name, hash, issued_unix_ms) VALUES (?1, ?2, ?3)",
        )?;
        let mut forget_credential =
            tx.prepare_cached("DELETE FROM node_credentials WHERE name = ?1")?;
        // Later rows for the same key win; write each key once.
        let mut last_process: HashMap<&str, ProcRow> = HashMap::new();
        let mut order = Vec::new();
        let ops = repair.iter().chain(jobs.iter().flat_map(|j| &j.batch.ops));
        for op in ops {
            let (id, row) = match op {
                Op::Process(p) => (p.0.id.as_str(), ProcRow::Put(p)),
                Op::DeleteProcess(id) => (id.as_str(), ProcRow::Delete(id)),
                Op::NodeCredential {
                    name,
                    hash: Some((hash, issued)),
                } => {
                    put_credential.execute(params![name, hash.as_slice(), issued])?;
                    continue;
                }
                Op::NodeCredential { name, hash: None } => {
                    forget_credential.execute(params![name])?;
                    continue;
                }
                Op::Agent(a) => {
                    put_agent.execute(params![a.name, a.encode_to_vec()])?;
                    continue;
                }
                Op::DeleteAgent(name) => {
                    tx.execute("DELETE FROM agents WHERE name = ?1", params![name])?;
                    continue;
                }
                Op::NextNumber(n) => {
                    put_meta.execute(params!["next_number", *n as i64])?;
                    continue;
                }
            };
            if last_process.insert(id, row).is_none() {
                order.push(id);
            }
        }
        for id in order {
            match last_process[id] {
                ProcRow::Put((info, request)) => {
                    let request_id =
                        (!info.request_id.is_empty()).then_some(info.request_id.as_str());
                    put_process.execute(params![
                        info.id,
                        request_id,
                        info.state,
                        info.node,
                        info.encode_to_vec(),
                        request.encode_to_vec()
                    ])?;
                }
                ProcRow::Delete(id) => {
                    tx.execute("DELETE FROM processes WHERE id = ?1", params![id])?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpctl_proto::v1::AckExit;

    fn ack(id: &str) -> CoordinatorMessage {
        CoordinatorMessage {
            msg: Some(coordinator_message::Msg::AckExit(AckExit {
                process_id: id.into(),
            })),
        }
    }

    #[tokio::test]
    async fn a_batch_nobody_waits_for_is_committed_then_its_messages_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _) = Store::open(&path).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pending = store.submit(
            1,
            Batch {
                ops: vec![Op::NextNumber(5)],
                after_commit: vec![(tx, ack("p1"))],
            },
        );
        pending.committed().await.unwrap();
        let sent = rx.try_recv().expect("the ack is sent once committed");
        assert_eq!(sent, ack("p1"));
        drop(store);
        let (_, loaded) = Store::open(&path).unwrap();
        assert_eq!(loaded.next_number, 5);
    }

    #[tokio::test]
    async fn a_waiting_batch_commits_the_queued_ones_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("state.db")).unwrap();
        let mut queued = store.submit(
            1,
            Batch {
                ops: vec![Op::NextNumber(7)],
                after_commit: Vec::new(),
            },
        );
        store
            .submit(
                2,
                Batch {
                    ops: vec![Op::NextNumber(8)],
                    after_commit: Vec::new(),
                },
            )
            .durable()
            .await
            .unwrap();
        // Answered in submission order, so the earlier batch is answered already.
        assert_eq!(queued.done.try_recv(), Ok(Ok(())));
    }
}
