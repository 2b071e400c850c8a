//! `AgentService`: one long-lived stream per agent. The first message must be
//! `Register`; every message renews the agent's lease; a stream silent past
//! the lease is cut and the agent is lost.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use mpctl_proto::v1::{
    agent_message::Msg, agent_service_server::AgentService, coordinator_message::Msg as ToAgent,
    AgentMessage, CoordinatorMessage, Registered,
};
use mpctl_transport::{require_role, Role};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::logs::Chunk;
use crate::core::model::SignalAnswer;
use crate::core::Core;
use crate::pool::{Event, Pools};
use crate::{validate, wire};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentSessions {
    pub core: Arc<Core>,
    pub pools: Arc<Pools>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentSessions {
    type SessionStream = Outbound;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let peer = require_role(&req, Role::Agent)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Register within 10 s of opening the session")
            })??;
        let Some(AgentMessage {
            msg: Some(Msg::Register(reg)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of an agent session must be Register",
            ));
        };
        validate::register(&reg)?;
        let name = reg.name.clone();
        // Before anything of it touches the table: a rival of a live node
        // is refused here and the live session is left alone.
        let issued = self
            .core
            .admit_node(&name, &reg.node_credential, peer.remote_addr)
            .await?;
        // Unbounded: see `core::outbox` for why the channel to an agent is.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(CoordinatorMessage {
            msg: Some(ToAgent::Registered(Registered {
                heartbeat_interval_ms: self.core.timings.heartbeat.as_millis() as u64,
                lease_ms: self.core.timings.lease.as_millis() as u64,
                node_credential: issued.map(|s| s.to_vec()).unwrap_or_default(),
            })),
        });
        let generation = self.core.register(wire::registration(reg), tx).await?;
        tracing::info!(agent = %name, remote = %peer.remote_addr, "agent session open");
        let core = Arc::clone(&self.core);
        let pools = Arc::clone(&self.pools);
        tokio::spawn(async move {
            let lease = core.timings.lease;
            loop {
                match tokio::time::timeout(lease, inbound.message()).await {
                    Ok(Ok(Some(msg))) => {
                        core.seen(&name);
                        handle(&core, &pools, &name, generation, msg);
                    }
                    Ok(Ok(None)) => {
                        tracing::info!(agent = %name, "agent session closed");
                        break;
                    }
                    Ok(Err(status)) => {
                        // An agent that stops or loses its network ends here.
                        tracing::info!(agent = %name, reason = %status.message(), "agent session ended");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(agent = %name, "agent silent past its lease; closing its session");
                        break;
                    }
                }
            }
            core.disconnected(&name, generation);
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }
}

fn handle(core: &Arc<Core>, pools: &Pools, agent: &str, generation: u64, msg: AgentMessage) {
    match msg.msg {
        Some(Msg::Heartbeat(_)) | None => {}
        Some(Msg::Register(_)) => {
            tracing::warn!(agent, "ignoring a second Register on one session")
        }
        Some(Msg::Launched(l)) => core.launched(agent, &l.process_id, l.pid, l.at_unix_ms),
        Some(Msg::LaunchFailed(f)) => core.launch_failed(agent, &f.process_id, &f.error),
        Some(Msg::Exited(e)) => core.exited(agent, generation, wire::exit_report(e)),
        Some(Msg::Resync(r)) => core.resync(
            agent,
            generation,
            r.running
                .into_iter()
                .map(|p| (p.process_id, p.pid))
                .collect(),
            r.exited.into_iter().map(wire::exit_report).collect(),
        ),
        Some(Msg::JournalDamage(d)) => core.journal_damage(agent, wire::journal_damage(Some(d))),
        Some(Msg::LogData(d)) => core.log_data(
            d.request_id,
            Some(Chunk {
                stream: wire::output_from(d.stream),
                data: d.data,
            }),
            (!d.error.is_empty()).then_some(d.error),
            d.eof,
        ),
        Some(Msg::Signaled(s)) => core.signaled(
            agent,
            SignalAnswer {
                request_id: s.request_id,
                delivered: s.delivered,
                error: s.error,
            },
        ),
        Some(Msg::PoolWorkerReady(r)) => pools.route(
            &r.pool_id,
            Event::WorkerReady {
                node: agent.to_owned(),
                process_id: r.process_id,
            },
        ),
        Some(Msg::PoolWorkerResults(r)) => pools.route(
            &r.pool_id,
            Event::WorkerResults {
                process_id: r.process_id,
                results: r.results,
            },
        ),
        Some(Msg::PoolWorkerInitFailed(f)) => pools.route(
            &f.pool_id,
            Event::WorkerInitFailed {
                process_id: f.process_id,
                message: f.message,
            },
        ),
    }
}
