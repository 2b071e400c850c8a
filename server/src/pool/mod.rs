//! The PoolManager (docs/design.md §7): distributed pools of worker processes.
//!
//! A client opens one `PoolManager.Session` stream per pool. Its first
//! message creates the pool; the [`driver`] then starts the workers as
//! ordinary managed processes (function targets marked as pool workers),
//! queues the client's tasks, hands them to ready workers through their
//! agents ([`schedule`] decides which), and streams results back. Agents
//! report what workers do ([`Pools::route`]); the process table reports
//! their exits. The pool lives while the stream is open.

mod driver;
mod schedule;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use mpctl_proto::v1::{
    pool_event, pool_manager_server::PoolManager, pool_request::Msg as Request, CreatePool,
    PoolCreated, PoolEvent, PoolRequest, PoolTask, StartMethod,
};
use mpctl_transport::{require_role, Role};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use crate::core::Core;
use crate::validate::{self, MAX_NAME};
pub use driver::Event;

const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_PROCESSES: u32 = 10_000;
pub const MAX_TASKS_PER_MESSAGE: usize = 100_000;
pub const MAX_ITEMS_PER_TASK: usize = 1_000_000;
pub const MAX_PREFETCH: u32 = 1024;
pub const MAX_RETRIES: u32 = 100;
/// Messages (of results, up to about 1 MiB each) buffered for a pool's
/// client; see [`driver`] for what happens when it does not read.
pub const OUT_MESSAGES: usize = 16;
/// Client commands (each up to [`MAX_TASKS_PER_MESSAGE`] tasks) queued for
/// the driver before the client's stream is held back.
pub const COMMANDS: usize = 4;

/// The pools this coordinator drives, by id.
pub struct Pools {
    core: Arc<Core>,
    drivers: Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
}

impl Pools {
    pub fn new(core: Arc<Core>) -> Arc<Pools> {
        Arc::new(Pools {
            core,
            drivers: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Event>>> {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An event from a pool's worker (via its agent), to the pool's driver.
    /// Events for a pool that has ended are dropped.
    pub fn route(&self, pool_id: &str, event: Event) {
        if let Some(tx) = self.lock().get(pool_id) {
            let _ = tx.send(event);
        }
    }

    fn remove(&self, pool_id: &str) {
        self.lock().remove(pool_id);
        self.core.set_pool_live(pool_id, false);
    }
}

pub struct PoolService {
    pub pools: Arc<Pools>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<PoolEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PoolManager for PoolService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        req: tonic::Request<Streaming<PoolRequest>>,
    ) -> Result<Response<Outbound>, Status> {
        require_role(&req, Role::Client)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(CREATE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no CreatePool within 10 s of opening the stream")
            })??;
        let Some(PoolRequest {
            msg: Some(Request::Create(spec)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a pool stream must be CreatePool",
            ));
        };
        check_create(&spec)?;
        let pool_id = crate::core::new_id();
        let (out_tx, out_rx) = mpsc::channel(OUT_MESSAGES);
        // Unbounded: workers and the table report here, within the pool's
        // own bounds (see `driver`); the client's commands are bounded.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS);
        let pools = Arc::clone(&self.pools);
        pools.lock().insert(pool_id.clone(), ev_tx.clone());
        pools.core.set_pool_live(&pool_id, true);
        let _ = out_tx.try_send(Ok(PoolEvent {
            msg: Some(pool_event::Msg::Created(PoolCreated {
                pool_id: pool_id.clone(),
            })),
        }));
        let driver = driver::Driver::new(
            pool_id,
            spec,
            Arc::clone(&pools.core),
            Arc::clone(&pools),
            ev_tx.clone(),
            out_tx.clone(),
        );
        tokio::spawn(driver.run(ev_rx, cmd_rx));
        tokio::spawn(async move {
            loop {
                let event = match inbound.message().await {
                    Ok(Some(PoolRequest { msg: Some(m) })) => match m {
                        Request::Submit(s) => match check_tasks(&s.tasks) {
                            Ok(()) => Event::Submit(s.tasks),
                            Err(status) => {
                                let _ = out_tx.send(Err(status)).await;
                                let _ = cmd_tx.send(Event::Terminate).await;
                                return;
                            }
                        },
                        Request::Close(_) => Event::Close,
                        Request::Terminate(_) => Event::Terminate,
                        Request::Create(_) => {
                            let _ = out_tx
                                .send(Err(Status::invalid_argument(
                                    "a pool stream creates one pool; open another stream for another pool",
                                )))
                                .await;
                            let _ = cmd_tx.send(Event::Terminate).await;
                            return;
                        }
                    },
                    Ok(Some(PoolRequest { msg: None })) => continue,
                    Ok(None) | Err(_) => {
                        let _ = cmd_tx.send(Event::ClientEof).await;
                        return;
                    }
                };
                if cmd_tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// Bounds and meaning of a CreatePool.
pub fn check_create(c: &CreatePool) -> Result<(), Status> {
    if c.processes == 0 || c.processes > MAX_PROCESSES {
        return Err(bad(format!(
            "Number of processes must be at least 1 (and at most {MAX_PROCESSES}); got {}",
            c.processes
        )));
    }
    match StartMethod::try_from(c.start_method) {
        Ok(StartMethod::Unspecified | StartMethod::Spawn | StartMethod::Forkserver) => {}
        Ok(StartMethod::Fork) => {
            return Err(Status::failed_precondition(
                "pools start their workers on nodes, where the caller cannot be forked: use spawn or forkserver",
            ))
        }
        Err(_) => return Err(bad(format!("unknown start method {}", c.start_method))),
    }
    if c.initializer.len() > MAX_NAME {
        return Err(bad(format!(
            "the initializer's name is limited to {MAX_NAME} bytes"
        )));
    }
    if c.prefetch > MAX_PREFETCH {
        return Err(bad(format!("prefetch is limited to {MAX_PREFETCH} tasks")));
    }
    if c.max_retries.unwrap_or(0) > MAX_RETRIES {
        return Err(bad(format!("max_retries is limited to {MAX_RETRIES}")));
    }
    // The workers' start request gets the same checks as any start.
    validate::start_request(&driver::worker_request(c, "", 1))
}

/// Bounds of submitted tasks.
pub fn check_tasks(tasks: &[PoolTask]) -> Result<(), Status> {
    if tasks.len() > MAX_TASKS_PER_MESSAGE {
        return Err(bad(format!(
            "{} tasks in one message; the limit is {MAX_TASKS_PER_MESSAGE}",
            tasks.len()
        )));
    }
    for t in tasks {
        if t.function.is_empty() || t.function.len() > MAX_NAME {
            return Err(bad(format!(
                "task {}: the function's registered name must be 1 to {MAX_NAME} bytes",
                t.id
            )));
        }
        if t.items.is_empty() || t.count == 0 || t.count as usize > MAX_ITEMS_PER_TASK {
            return Err(bad(format!(
                "task {}: a task carries a JSON array of 1 to {MAX_ITEMS_PER_TASK} items, got {} ({} bytes)",
                t.id,
                t.count,
                t.items.len()
            )));
        }
    }
    Ok(())
}
