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
    #[error("state database writer has stopped")]
    WriterGone,
}

/// One row change.
pub enum Op {
    Process(Box<(ProcessInfo, StartRequest)>),
    Agent(AgentInfo),
    NextNumber(u64),
    /// Retention removed the process: its row goes.
    DeleteProcess(String),
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

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

enum Msg {
    Job(Job),
    /// Someone waits: commit what is queued now.
    Flush,
}

/// Everything read back at start-up.
pub struct Loaded {
    pub processes: Vec<(ProcessInfo, StartRequest)>,
    pub agents: Vec<AgentInfo>,
    pub next_number: u64,
}

#[derive(Clone)]
pub struct Store {
    tx: std_mpsc::Sender<Msg>,
}

/// A submitted batch; await it to know it is durable.
pub struct Pending {
    done: oneshot::Receiver<Result<(), String>>,
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
            Ok(Err(reason)) => {
                tracing::error!(%reason, "state write failed");
                Err(StoreError::WriterGone)
            }
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
        let thread_path = path.to_owned();
        std::thread::Builder::new()
            .name("mpctl-store".into())
            .spawn(move || writer(conn, rx, thread_path))
            .map_err(|e| StoreError::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((Store { tx }, loaded))
    }

    /// Queues a batch. Call while holding the table lock so batches keep the
    /// order of the state changes they record.
    pub fn submit(&self, batch: Batch) -> Pending {
        let (done, rx) = oneshot::channel();
        let urgent = batch.carries_work();
        if batch.is_empty() {
            let _ = done.send(Ok(()));
        } else if let Err(std_mpsc::SendError(Msg::Job(job))) =
            self.tx.send(Msg::Job(Job { batch, done }))
        {
            let _ = job.done.send(Err("writer thread stopped".into()));
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
    Ok(Loaded {
        processes,
        agents,
        next_number: next_number.max(1) as u64,
    })
}

fn writer(mut conn: Connection, rx: std_mpsc::Receiver<Msg>, path: PathBuf) {
    let mut jobs: Vec<Job> = Vec::new();
    // When the oldest queued job must be committed at the latest.
    let mut due: Option<Instant> = None;
    let mut open = true;
    while open || !jobs.is_empty() {
        let first = if !open {
            None
        } else if let Some(d) = due {
            match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        } else {
            rx.recv().map_err(|_| open = false).ok()
        };
        let mut now = !open;
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match msg {
                Msg::Job(j) => {
                    jobs.push(j);
                    due.get_or_insert_with(|| Instant::now() + COMMIT_DELAY);
                }
                Msg::Flush => now = true,
            }
        }
        if jobs.is_empty() {
            due = None;
        } else if now || due.is_some_and(|d| d <= Instant::now()) {
            commit_and_answer(&mut conn, std::mem::take(&mut jobs), &path);
            due = None;
        }
    }
}

/// Commits `jobs` in one transaction, then sends their messages and answers
/// their submitters, in submission order.
fn commit_and_answer(conn: &mut Connection, jobs: Vec<Job>, path: &Path) {
    let result = commit(conn, &jobs).map_err(|e| format!("{}: {e}", path.display()));
    for job in jobs {
        if result.is_ok() {
            for (tx, msg) in job.batch.after_commit {
                // A closed session is fine: the agent re-registers and is
                // reconciled from the table.
                let _ = tx.send(msg);
            }
        }
        let _ = job.done.send(result.clone());
    }
}

fn commit(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<()> {
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
        // Later rows for the same key win; write each key once.
        let mut last_process: HashMap<&str, &(ProcessInfo, StartRequest)> = HashMap::new();
        let mut order = Vec::new();
        let mut deletes = Vec::new();
        for job in jobs {
            for op in &job.batch.ops {
                match op {
                    Op::Process(p) => {
                        if last_process.insert(p.0.id.as_str(), p).is_none() {
                            order.push(p.0.id.as_str());
                        }
                    }
                    Op::Agent(a) => {
                        put_agent.execute(params![a.name, a.encode_to_vec()])?;
                    }
                    Op::NextNumber(n) => {
                        put_meta.execute(params!["next_number", *n as i64])?;
                    }
                    // A row removed after its last change: its put is dropped.
                    Op::DeleteProcess(id) => {
                        last_process.remove(id.as_str());
                        deletes.push(id.as_str());
                    }
                }
            }
        }
        let mut delete_process = tx.prepare_cached("DELETE FROM processes WHERE id = ?1")?;
        for id in deletes {
            delete_process.execute(params![id])?;
        }
        for id in order {
            let Some((info, request)) = last_process.get(id) else {
                continue;
            };
            let request_id = (!info.request_id.is_empty()).then_some(info.request_id.as_str());
            put_process.execute(params![
                info.id,
                request_id,
                info.state,
                info.node,
                info.encode_to_vec(),
                request.encode_to_vec()
            ])?;
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
        let pending = store.submit(Batch {
            ops: vec![Op::NextNumber(5)],
            after_commit: vec![(tx, ack("p1"))],
        });
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
        let mut queued = store.submit(Batch {
            ops: vec![Op::NextNumber(7)],
            after_commit: Vec::new(),
        });
        store
            .submit(Batch {
                ops: vec![Op::NextNumber(8)],
                after_commit: Vec::new(),
            })
            .durable()
            .await
            .unwrap();
        // Answered in submission order, so the earlier batch is answered already.
        assert_eq!(queued.done.try_recv(), Ok(Ok(())));
    }
}
