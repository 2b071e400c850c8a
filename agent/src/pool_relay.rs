//! The pool relay: the node end of every pool worker's loop (docs/design.md §7).
//!
//! A pool worker never opens a network connection. It connects to the
//! agent's unix socket (`pool.sock` in the data directory), presents the key
//! it found in its preparation data, and from then on receives its tasks and
//! returns its results over that socket ([`mpctl_node::worker_frame`]).
//! The relay forwards tasks from the coordinator (holding them until the
//! worker connects) and sends results up in batches: everything the worker
//! wrote since the last read goes in one `PoolWorkerResults`.
//!
//! Only a peer whose uid the policy allows (`SO_PEERCRED`; the agent's
//! own uid, plus the uids jobs run as) gets as far as presenting a key;
//! others are closed at once and counted (one log line per interval).
//!
//! A worker's exit is reported only after its connection is drained
//! ([`PoolRelay::drained`]), so the coordinator always sees the results a
//! worker produced before it sees the worker die.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mpctl_node::peer::{PeerPolicy, RefusalLog};
use mpctl_node::worker_frame;
use mpctl_proto::v1::{
    agent_message::Msg, agent_to_worker, worker_to_agent, AgentToWorker, PoolTaskResult,
    PoolWorkerInitFailed, PoolWorkerReady, PoolWorkerResults, WorkerToAgent,
};
use prost::Message;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::state::NodeState;

pub const POOL_SOCKET_FILE: &str = "pool.sock";
/// A worker must say who it is this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dead worker's connection may take to reach end of stream
/// before its exit is reported anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Results are sent up in messages of about this size.
const BATCH_BYTES: usize = 1 << 20;

/// One pool worker launched on this node.
struct Slot {
    pool_id: String,
    key: String,
    /// The connection's writer, once the worker has connected.
    to_worker: Option<mpsc::UnboundedSender<AgentToWorker>>,
    /// What arrived for the worker before it connected.
    backlog: Vec<AgentToWorker>,
    /// Becomes true when the worker's connection has ended.
    closed: watch::Sender<bool>,
    connected: bool,
}

pub struct PoolRelay {
    socket: PathBuf,
    state: Arc<NodeState>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl PoolRelay {
    /// Binds the pool socket in `data_dir` (replacing one a previous agent
    /// left) and starts accepting workers from the uids `peers` allows.
    pub fn start(
        data_dir: &Path,
        state: Arc<NodeState>,
        peers: PeerPolicy,
    ) -> std::io::Result<Arc<PoolRelay>> {
        let socket = data_dir.join(POOL_SOCKET_FILE);
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&socket)?;
        // Only this user's processes may even try a key.
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let relay = Arc::new(PoolRelay {
            socket,
            state,
            slots: Mutex::new(HashMap::new()),
        });
        let accepting = Arc::clone(&relay);
        tokio::spawn(async move {
            let mut refused = RefusalLog::new(POOL_SOCKET_FILE);
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => match peers.check(&stream) {
                        Ok(_) => {
                            tokio::spawn(Arc::clone(&accepting).serve(stream));
                        }
                        Err(refusal) => {
                            if let Some(line) = refused.record(&refusal) {
                                tracing::warn!("{line}");
                            }
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "pool socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(relay)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pool worker is about to be launched: returns the key it must present.
    pub fn register(&self, process_id: &str, pool_id: &str) -> String {
        let key = mpctl_transport::random_hex(32);
        self.lock().insert(
            process_id.to_owned(),
            Slot {
                pool_id: pool_id.to_owned(),
                key: key.clone(),
                to_worker: None,
                backlog: Vec::new(),
                closed: watch::channel(false).0,
                connected: false,
            },
        );
        key
    }

    /// The launch failed: nothing will connect.
    pub fn forget(&self, process_id: &str) {
        self.lock().remove(process_id);
    }

    /// Tasks (or the stop) from the coordinator for one worker.
    pub fn deliver(&self, process_id: &str, msg: agent_to_worker::Msg) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(process_id) else {
            tracing::debug!(process = %process_id, "pool message for a worker this agent does not run; dropped");
            return;
        };
        let msg = AgentToWorker { msg: Some(msg) };
        match &slot.to_worker {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None if !slot.connected => slot.backlog.push(msg),
            None => {}
        }
    }

    /// If `process_id` is a pool worker: a future that resolves once its
    /// connection has ended (bounded), after which its exit may be reported.
    pub fn drained(&self, process_id: &str) -> Option<impl std::future::Future<Output = ()>> {
        let slot = self.lock().remove(process_id)?;
        let mut closed = slot.closed.subscribe();
        let connected = slot.connected;
        Some(async move {
            if connected {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, closed.wait_for(|c| *c)).await;
            }
        })
    }

    /// One worker's connection: hello, then relay until it ends.
    async fn serve(self: Arc<Self>, stream: UnixStream) {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = FrameBuf::default();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, buf.next(&mut rd)).await {
            Ok(Ok(Some(WorkerToAgent {
                msg: Some(worker_to_agent::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                tracing::warn!("pool socket: a connection did not start with a hello; closed");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "pool socket: unreadable hello; closed");
                return;
            }
            Err(_) => {
                tracing::warn!("pool socket: no hello within 30 s; closed");
                return;
            }
        };
        let process_id = hello.process_id;
        let (tx, mut rx) = mpsc::unbounded_channel::<AgentToWorker>();
        let (pool_id, closed) = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(&process_id) else {
                tracing::warn!(process = %process_id, "pool socket: hello from a process that is not a pool worker here; closed");
                return;
            };
            let key_ok: bool = slot.key.as_bytes().ct_eq(hello.key.as_bytes()).into();
            if !key_ok || slot.connected {
                tracing::warn!(process = %process_id, "pool socket: wrong key or second connection; closed");
                return;
            }
            slot.connected = true;
            for m in slot.backlog.drain(..) {
                let _ = tx.send(m);
            }
            slot.to_worker = Some(tx);
            (slot.pool_id.clone(), slot.closed.clone())
        };
        let writer = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(first) = rx.recv().await {
                out.clear();
                out.extend_from_slice(&worker_frame::encode(&first));
                // Whatever else is queued goes in the same write.
                while let Ok(more) = rx.try_recv() {
                    out.extend_from_slice(&worker_frame::encode(&more));
                }
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        self.relay_results(&pool_id, &process_id, &mut rd, &mut buf)
            .await;
        writer.abort();
        if let Some(slot) = self.lock().get_mut(&process_id) {
            slot.to_worker = None;
        }
        closed.send_replace(true);
    }

    /// Reads the worker's frames and sends them up, batching what arrived together.
    async fn relay_results(
        &self,
        pool_id: &str,
        process_id: &str,
        rd: &mut (impl AsyncReadExt + Unpin),
        buf: &mut FrameBuf,
    ) {
        loop {
            let first = match buf.next(rd).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(process = %process_id, error = %e, "pool socket: bad frame from worker; closed");
                    return;
                }
            };
            let mut results: Vec<PoolTaskResult> = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                match frame.msg {
                    Some(worker_to_agent::Msg::Result(r)) => {
                        bytes += r.encoded_len();
                        results.push(r);
                        if bytes >= BATCH_BYTES {
                            self.send_results(pool_id, process_id, std::mem::take(&mut results));
                            bytes = 0;
                        }
                    }
                    Some(worker_to_agent::Msg::Ready(_)) => {
                        self.state.send(Msg::PoolWorkerReady(PoolWorkerReady {
                            pool_id: pool_id.to_owned(),
                            process_id: process_id.to_owned(),
                        }))
                    }
                    Some(worker_to_agent::Msg::InitFailed(f)) => {
                        self.state
                            .send(Msg::PoolWorkerInitFailed(PoolWorkerInitFailed {
                                pool_id: pool_id.to_owned(),
                                process_id: process_id.to_owned(),
                                message: f.message,
                            }))
                    }
                    Some(worker_to_agent::Msg::Hello(_)) | None => {}
                }
                match buf.buffered() {
                    Ok(f) => next = f,
                    Err(e) => {
                        tracing::warn!(process = %process_id, error = %e, "pool socket: bad frame from worker; closed");
                        return;
                    }
                }
            }
            if !results.is_empty() {
                self.send_results(pool_id, process_id, results);
            }
        }
    }

    fn send_results(&self, pool_id: &str, process_id: &str, results: Vec<PoolTaskResult>) {
        self.state.send(Msg::PoolWorkerResults(PoolWorkerResults {
            pool_id: pool_id.to_owned(),
            process_id: process_id.to_owned(),
            results,
        }));
    }
}

/// Bytes read from a worker, with the frames not yet parsed at `start..`.
#[derive(Default)]
struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuf {
    /// A complete frame already buffered, consumed.
    fn buffered(&mut self) -> Result<Option<WorkerToAgent>, String> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = worker_frame::body_len([avail[0], avail[1], avail[2], avail[3]])?;
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let msg = WorkerToAgent::decode(&avail[4..4 + len]).map_err(|e| e.to_string())?;
        self.start += 4 + len;
        Ok(Some(msg))
    }

    /// The next frame, reading as needed; `None` at end of stream.
    async fn next(
        &mut self,
        rd: &mut (impl AsyncReadExt + Unpin),
    ) -> Result<Option<WorkerToAgent>, String> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            // Keep only the partial frame, then read more after it.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve(64 << 10);
            }
            match rd.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
