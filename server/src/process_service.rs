//! `ProcessManager`: the gRPC surface clients use. Thin: authenticate the
//! role and scope the caller ([`crate::scope`]: a job acts on its own
//! subtree only), bound the input ([`crate::validate`]), translate ([`crate::wire`]),
//! call [`Core`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use mpctl_proto::v1::{
    process_manager_server::ProcessManager, ForgetAgentRequest, ForgetAgentResponse, GetRequest,
    JoinRequest, JoinResponse, ListAgentsRequest, ListAgentsResponse, ListRequest, ListResponse,
    LogChunk, LogStream, LogsRequest, ProcessInfo, SignalRequest, StartRequest, StartResponse,
    WaitMode, WaitRequest, WaitResponse,
};
use tonic::{Request, Response, Status};

use crate::core::logs::{LogReader, Offsets};
use crate::core::{Core, CoreError};
use crate::scope::{caller, client_only, own_lineage, own_subtree, Caller};
use crate::{page, validate, wire};

pub struct ProcessService {
    pub core: Arc<Core>,
    /// The cluster's authkey, only to derive the job key a forking job
    /// hands its fork child (never sent anywhere else).
    pub authkey: mpctl_transport::AuthKey,
}

fn timeout(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// Output of one process on its way from the agent; dropping it (the client
/// went away) stops the agent's reader.
pub struct LogsStream {
    rx: Option<LogReader>,
    core: Arc<Core>,
}

impl Stream for LogsStream {
    type Item = Result<LogChunk, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.rx {
            Some(rx) => rx
                .poll_next(cx)
                .map(|c| c.map(|c| c.map(wire::log_chunk).map_err(wire::status))),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for LogsStream {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.core.cancel_logs(rx.request_id);
        }
    }
}

#[tonic::async_trait]
impl ProcessManager for ProcessService {
    async fn start(&self, req: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let who = caller(&self.core, &req)?;
        let mut req = req.into_inner();
        if let Caller::Job(me) = &who {
            if !req.parent_id.is_empty() && &req.parent_id != me {
                return Err(Status::permission_denied(format!(
                    "process {me} may start only its own children; this start names parent {}",
                    req.parent_id
                )));
            }
            req.parent_id = me.clone();
        }
        let fork = req.start_method == mpctl_proto::v1::StartMethod::Fork as i32;
        if req
            .function
            .as_ref()
            .is_some_and(|f| f.pool_worker.is_some())
        {
            return Err(CoreError::PoolWorkerStart.into());
        }
        validate::start_request(&req)?;
        let process = self.core.start(wire::start_spec(req)).await?;
        // A forking job makes its child itself: it hands it the child's own key.
        let job_key = match who {
            Caller::Job(_) if fork => self.authkey.job_key(&process.id).expose_bytes().to_vec(),
            _ => Vec::new(),
        };
        Ok(Response::new(StartResponse {
            process: Some(wire::process_info(&process)),
            job_key,
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ProcessInfo>, Status> {
        let who = caller(&self.core, &req)?;
        own_lineage(&self.core, &who, &req.get_ref().id, "look at")?;
        Ok(Response::new(wire::process_info(
            &self.core.get(&req.get_ref().id)?,
        )))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        let after = page::list_cursor(&r.page_token)?;
        // A job sees its own descendants only.
        let within = match &who {
            Caller::Client => None,
            Caller::Job(me) => Some(me.as_str()),
        };
        let (rows, more) = self.core.list_page(
            r.all,
            &r.node,
            within,
            after.as_ref(),
            page::size(r.page_size),
            wire::list_row,
        );
        let (processes, next_page_token) = page::fill(rows, more, page::list_token);
        Ok(Response::new(ListResponse {
            processes,
            next_page_token,
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        own_lineage(&self.core, &who, &r.id, "join")?;
        let (process, timed_out) = self.core.join(&r.id, timeout(r.timeout_ms)).await?;
        Ok(Response::new(JoinResponse {
            process: Some(wire::process_info(&process)),
            timed_out,
        }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        for id in &r.ids {
            own_lineage(&self.core, &who, id, "wait for")?;
        }
        let all = r.mode == WaitMode::All as i32;
        let from = page::wait_offset(&r.page_token, r.ids.len())?;
        let ready = self
            .core
            .wait(
                &r.ids,
                timeout(r.timeout_ms),
                all,
                from.unwrap_or(0),
                from.is_none(),
                |id, p| match p {
                    Some(p) => wire::list_row(p),
                    // Removed by retention: ready, and nothing else is known.
                    None => ProcessInfo {
                        id: id.to_owned(),
                        ..ProcessInfo::default()
                    },
                },
            )
            .await?;
        let (ready, next_page_token) =
            page::fill_sized(ready, page::size(r.page_size), page::wait_token);
        Ok(Response::new(WaitResponse {
            ready,
            next_page_token,
        }))
    }

    async fn terminate(
        &self,
        req: Request<SignalRequest>,
    ) -> Result<Response<ProcessInfo>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        own_subtree(&self.core, &who, &r.id, "terminate")?;
        let p = self.core.signal(&r.id, libc::SIGTERM, r.tree).await?;
        Ok(Response::new(wire::process_info(&p)))
    }

    async fn kill(&self, req: Request<SignalRequest>) -> Result<Response<ProcessInfo>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        own_subtree(&self.core, &who, &r.id, "kill")?;
        let p = self.core.signal(&r.id, libc::SIGKILL, r.tree).await?;
        Ok(Response::new(wire::process_info(&p)))
    }

    type LogsStream = LogsStream;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<LogsStream>, Status> {
        let who = caller(&self.core, &req)?;
        let r = req.into_inner();
        own_subtree(&self.core, &who, &r.id, "read the output of")?;
        let stream = LogStream::try_from(r.stream).unwrap_or(LogStream::Both);
        let from = Offsets {
            stdout: r.stdout_offset,
            stderr: r.stderr_offset,
        };
        let rx = self
            .core
            .open_logs(&r.id, wire::output(stream), r.follow, from)?;
        Ok(Response::new(LogsStream {
            rx,
            core: Arc::clone(&self.core),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        client_only(&caller(&self.core, &req)?, "listing agents")?;
        Ok(Response::new(ListAgentsResponse {
            agents: self.core.agents_with_load(wire::agent_load),
        }))
    }

    async fn forget_agent(
        &self,
        req: Request<ForgetAgentRequest>,
    ) -> Result<Response<ForgetAgentResponse>, Status> {
        client_only(&caller(&self.core, &req)?, "forgetting an agent")?;
        let name = &req.get_ref().name;
        if name.is_empty() || name.len() > validate::MAX_NAME {
            return Err(Status::invalid_argument(format!(
                "agent name must be 1 to {} bytes",
                validate::MAX_NAME
            )));
        }
        let had_credential = self.core.forget_agent(name).await?;
        Ok(Response::new(ForgetAgentResponse { had_credential }))
    }
}
