//! `ProcessManager`: the gRPC surface clients use. Thin: authenticate the
//! role, bound the input ([`crate::validate`]), translate ([`crate::wire`]),
//! call [`Core`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use mpctl_proto::v1::{
    process_manager_server::ProcessManager, GetRequest, JoinRequest, JoinResponse,
    ListAgentsRequest, ListAgentsResponse, ListRequest, ListResponse, LogChunk, LogStream,
    LogsRequest, ProcessInfo, SignalRequest, StartRequest, StartResponse, WaitMode, WaitRequest,
    WaitResponse,
};
use mpctl_transport::{require_role, Role};
use tonic::{Request, Response, Status};

use crate::core::logs::LogReader;
use crate::core::{Core, CoreError};
use crate::{page, validate, wire};

pub struct ProcessService {
    pub core: Arc<Core>,
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
        require_role(&req, Role::Client)?;
        let req = req.into_inner();
        if req
            .function
            .as_ref()
            .is_some_and(|f| f.pool_worker.is_some())
        {
            return Err(CoreError::PoolWorkerStart.into());
        }
        validate::start_request(&req)?;
        let process = self.core.start(wire::start_spec(req)).await?;
        Ok(Response::new(StartResponse {
            process: Some(wire::process_info(&process)),
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ProcessInfo>, Status> {
        require_role(&req, Role::Client)?;
        Ok(Response::new(wire::process_info(
            &self.core.get(&req.get_ref().id)?,
        )))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
        let after = page::list_cursor(&r.page_token)?;
        let (rows, more) = self.core.list_page(
            r.all,
            &r.node,
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
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
        let (process, timed_out) = self.core.join(&r.id, timeout(r.timeout_ms)).await?;
        Ok(Response::new(JoinResponse {
            process: Some(wire::process_info(&process)),
            timed_out,
        }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
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
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
        let p = self.core.signal(&r.id, libc::SIGTERM, r.tree).await?;
        Ok(Response::new(wire::process_info(&p)))
    }

    async fn kill(&self, req: Request<SignalRequest>) -> Result<Response<ProcessInfo>, Status> {
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
        let p = self.core.signal(&r.id, libc::SIGKILL, r.tree).await?;
        Ok(Response::new(wire::process_info(&p)))
    }

    type LogsStream = LogsStream;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<LogsStream>, Status> {
        require_role(&req, Role::Client)?;
        let r = req.into_inner();
        let stream = LogStream::try_from(r.stream).unwrap_or(LogStream::Both);
        let rx = self.core.open_logs(&r.id, wire::output(stream), r.follow)?;
        Ok(Response::new(LogsStream {
            rx,
            core: Arc::clone(&self.core),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        require_role(&req, Role::Client)?;
        Ok(Response::new(ListAgentsResponse {
            agents: self.core.agents(wire::agent_info),
        }))
    }
}
