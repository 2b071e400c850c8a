//! A pool's stream to the coordinator: a forwarder that batches what the
//! `Pool` sends (tasks of many calls go out in one message), and a receiver
//! that routes each result to its call.
//!
//! Queues and what happens when one side is slow:
//! - `Pool` → forwarder: unbounded, as CPython's `Pool._taskqueue`:
//!   `apply_async` and `map_async` never block their caller, and what waits
//!   there is the tasks the caller has already handed over.
//! - forwarder → gRPC stream: bounded ([`IN_FLIGHT`] messages). When the
//!   coordinator or the network is slower than the caller, the forwarder
//!   waits for room (HTTP/2 flow control pushes back to here), and the tasks
//!   queued behind merge into full-size batches instead of piling up as
//!   small messages.
//! - results: no queue. The receiver reads the stream as fast as it comes
//!   and stores each result in its call, so a caller slow to read one call
//!   (an `Imap` not iterated) never holds back the others; what it holds is
//!   the results of tasks it submitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mpctl_proto::v1::{
    pool_event, pool_manager_client::PoolManagerClient, pool_request, ClosePool, CreatePool,
    PoolEvent, PoolRequest, PoolTask, PoolTaskResult, SubmitTasks, TerminatePool,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::call::Call;
use super::PoolError;
use crate::cluster::Cluster;

/// Largest message either way on a pool stream.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Tasks are merged into messages of about this size.
const BATCH_BYTES: usize = 1 << 20;
/// Messages (batches of about [`BATCH_BYTES`], or a control message) queued
/// for the gRPC stream before the forwarder waits.
pub const IN_FLIGHT: usize = 4;

pub(crate) enum ToPool {
    Tasks(Vec<PoolTask>),
    Close,
    Terminate,
}

type Route = (Arc<Call>, usize);
/// How the pool ended: `Ok(None)` cleanly, `Ok(Some(why))` broken, `Err`
/// when the stream failed.
type Ending = Result<Option<String>, PoolError>;

struct Shared {
    /// Task id → its call and chunk index. `None` once the pool has ended.
    routes: Mutex<Option<HashMap<u64, Route>>>,
    ended: watch::Sender<Option<Ending>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, Route>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn complete(&self, r: PoolTaskResult) {
        let route = self.lock().as_mut().and_then(|m| m.remove(&r.id));
        if let Some((call, index)) = route {
            let outcome = match r.error {
                Some(e) => Err(PoolError::from_wire(e)),
                None => Ok(r.values),
            };
            call.set(index, outcome);
        }
    }

    /// The pool ended: calls still waiting get an error, never a hang.
    fn end(&self, ending: Ending) {
        let left = self.lock().take().unwrap_or_default();
        let error = match &ending {
            Err(e) => e.clone(),
            Ok(Some(why)) => PoolError::Broken {
                message: why.clone(),
            },
            Ok(None) => PoolError::Terminated {
                message: "the pool ended before answering this task".into(),
            },
        };
        for (_, (call, index)) in left {
            call.set(index, Err(error.clone()));
        }
        self.ended.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(ending);
                true
            } else {
                false
            }
        });
    }
}

pub(crate) struct Session {
    pub pool_id: String,
    tx: mpsc::UnboundedSender<ToPool>,
    shared: Arc<Shared>,
}

fn status_error(s: tonic::Status) -> PoolError {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            PoolError::Invalid(s.message().to_owned())
        }
        _ => PoolError::Cluster(format!("pool stream: {}", s.message())),
    }
}

impl Session {
    pub async fn open(cluster: &Cluster, spec: CreatePool) -> Result<Session, PoolError> {
        let (req_tx, req_rx) = mpsc::channel(IN_FLIGHT);
        // The channel is empty: the first message always fits.
        let _ = req_tx.try_send(PoolRequest {
            msg: Some(pool_request::Msg::Create(spec)),
        });
        let mut client =
            PoolManagerClient::new(mpctl_transport::trace::Traced::new(cluster.channel()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        let mut inbound = client
            .session(ReceiverStream::new(req_rx))
            .await
            .map_err(status_error)?
            .into_inner();
        let pool_id = match inbound.message().await.map_err(status_error)? {
            Some(PoolEvent {
                msg: Some(pool_event::Msg::Created(c)),
            }) => c.pool_id,
            other => {
                return Err(PoolError::Cluster(format!(
                    "the coordinator answered a pool creation with {other:?}"
                )))
            }
        };
        let shared = Arc::new(Shared {
            routes: Mutex::new(Some(HashMap::new())),
            ended: watch::channel(None).0,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(rx, req_tx));
        tokio::spawn(receive(inbound, Arc::clone(&shared)));
        Ok(Session {
            pool_id,
            tx,
            shared,
        })
    }

    pub fn send(&self, msg: ToPool) -> Result<(), PoolError> {
        self.tx
            .send(msg)
            .map_err(|_| PoolError::Cluster("the pool's stream is closed".into()))
    }

    /// Registers the tasks' routes, then sends them.
    pub fn send_tasks(
        &self,
        routes: HashMap<u64, Route>,
        tasks: Vec<PoolTask>,
    ) -> Result<(), PoolError> {
        {
            let mut g = self.shared.lock();
            let Some(map) = g.as_mut() else {
                return Err(match self.shared.ended.borrow().clone() {
                    Some(Err(e)) => e,
                    Some(Ok(Some(why))) => PoolError::Broken { message: why },
                    _ => PoolError::NotRunning,
                });
            };
            map.extend(routes);
        }
        if tasks.is_empty() {
            return Ok(());
        }
        self.send(ToPool::Tasks(tasks))
    }

    pub fn is_finished(&self) -> bool {
        self.shared.ended.borrow().is_some()
    }

    /// Waits for the pool's end.
    pub async fn finished(&self, timeout: Option<Duration>) -> Result<Option<String>, PoolError> {
        let mut rx = self.shared.ended.subscribe();
        let wait = rx.wait_for(|e| e.is_some());
        let ended = match timeout {
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| PoolError::Timeout)?,
            None => wait.await,
        };
        match ended {
            Ok(e) => e.clone().expect("waited for Some"),
            Err(_) => Err(PoolError::Cluster("the pool's receiver stopped".into())),
        }
    }
}

/// Sends `pending` as one message (if any); false once the stream is gone.
async fn flush(
    out: &mpsc::Sender<PoolRequest>,
    pending: &mut Vec<PoolTask>,
    bytes: &mut usize,
) -> bool {
    *bytes = 0;
    if pending.is_empty() {
        return true;
    }
    out.send(PoolRequest {
        msg: Some(pool_request::Msg::Submit(SubmitTasks {
            tasks: std::mem::take(pending),
        })),
    })
    .await
    .is_ok()
}

/// Sends what the pool asks for, merging queued tasks into large messages.
/// Waits for room on the stream (see the module's queue policy).
async fn forward(mut rx: mpsc::UnboundedReceiver<ToPool>, out: mpsc::Sender<PoolRequest>) {
    let mut pending: Vec<PoolTask> = Vec::new();
    let mut bytes = 0usize;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let control = match msg {
                ToPool::Tasks(tasks) => {
                    for t in tasks {
                        bytes += t.items.len() + 24;
                        pending.push(t);
                        if (bytes >= BATCH_BYTES || pending.len() >= 50_000)
                            && !flush(&out, &mut pending, &mut bytes).await
                        {
                            return;
                        }
                    }
                    None
                }
                ToPool::Close => Some(pool_request::Msg::Close(ClosePool {})),
                ToPool::Terminate => Some(pool_request::Msg::Terminate(TerminatePool {})),
            };
            if let Some(c) = control {
                if !flush(&out, &mut pending, &mut bytes).await
                    || out.send(PoolRequest { msg: Some(c) }).await.is_err()
                {
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if !flush(&out, &mut pending, &mut bytes).await {
            return;
        }
    }
}

async fn receive(mut inbound: tonic::Streaming<PoolEvent>, shared: Arc<Shared>) {
    loop {
        match inbound.message().await {
            Ok(Some(PoolEvent { msg: Some(m) })) => match m {
                pool_event::Msg::Results(r) => {
                    for result in r.results {
                        shared.complete(result);
                    }
                }
                pool_event::Msg::Finished(f) => {
                    shared.end(Ok((!f.error.is_empty()).then_some(f.error)));
                }
                pool_event::Msg::Created(_) => {}
            },
            Ok(Some(PoolEvent { msg: None })) => {}
            Ok(None) => {
                shared.end(Err(PoolError::Cluster(
                    "the coordinator closed the pool's stream".into(),
                )));
                return;
            }
            Err(status) => {
                shared.end(Err(status_error(status)));
                return;
            }
        }
    }
}
