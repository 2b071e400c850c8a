//! The edge between the coordinator's domain ([`crate::core`]) and the
//! protobuf messages of `mpctl.v1`: the gRPC services and the store convert
//! here, and [`status`] is the one place a [`CoreError`] becomes a gRPC
//! status (its code; the text is the error's).

use std::sync::Arc;

use mpctl_proto::v1::{
    self as pb, coordinator_message::Msg as ToAgent, AgentInfo, CoordinatorMessage, Exited,
    ProcessInfo, ProcessState, Register, StartMethod, StartRequest,
};
use tokio::time::Instant;
use tonic::Status;

use crate::core::effects::ToNode;
use crate::core::logs::{Chunk, Output};
use crate::core::model::{
    Agent, AgentState, ExitReport, JournalDamage, LaunchSpec, Method, Placement, Proc, ProcState,
    Registration, StartSpec,
};
use crate::core::CoreError;

/// The gRPC status of an error: today's codes, the error's text.
pub fn status(e: CoreError) -> Status {
    use CoreError as E;
    let msg = e.to_string();
    match e {
        E::UnknownProcess(_) | E::Removed(_) => Status::not_found(msg),
        E::RemovedRequest { .. } | E::BadPageToken(_) => Status::invalid_argument(msg),
        E::UnknownParent(_) | E::PoolWorkerStart | E::WaitNoIds | E::WaitTooMany { .. } => {
            Status::invalid_argument(msg)
        }
        E::DaemonicParent(_) | E::CannotPlace(_) | E::StartFailed(_) => {
            Status::failed_precondition(msg)
        }
        E::SignalNodeDown { .. }
        | E::SignalLost { .. }
        | E::SignalFailed { .. }
        | E::SignalDisconnected { .. }
        | E::LogsNodeDown { .. }
        | E::LogsNode(_)
        | E::LogsNodeGone { .. } => Status::unavailable(msg),
        E::SignalTimeout { .. } => Status::deadline_exceeded(msg),
        E::LogsTooSlow { .. } => Status::resource_exhausted(msg),
        E::Node(crate::core::identity::Refused::ForgetConnected { .. }) => {
            Status::failed_precondition(msg)
        }
        E::Node(_) => Status::permission_denied(msg),
        // The change was rolled back: the same request may be retried.
        E::Store(_) => Status::unavailable(msg),
    }
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        status(e)
    }
}

pub fn proc_state(s: ProcState) -> ProcessState {
    match s {
        ProcState::Queued => ProcessState::Queued,
        ProcState::Launching => ProcessState::Launching,
        ProcState::Started => ProcessState::Started,
        ProcState::Stopped => ProcessState::Stopped,
        ProcState::Failed => ProcessState::Failed,
        ProcState::Lost => ProcessState::Lost,
    }
}

/// A stored state; one the coordinator never writes (unspecified, or from
/// a newer version) reads as lost, which a returning node corrects.
fn proc_state_from(raw: i32) -> ProcState {
    match ProcessState::try_from(raw) {
        Ok(ProcessState::Queued) => ProcState::Queued,
        Ok(ProcessState::Launching) => ProcState::Launching,
        Ok(ProcessState::Started) => ProcState::Started,
        Ok(ProcessState::Stopped) => ProcState::Stopped,
        Ok(ProcessState::Failed) => ProcState::Failed,
        _ => ProcState::Lost,
    }
}

pub fn method(m: Method) -> StartMethod {
    match m {
        Method::Spawn => StartMethod::Spawn,
        Method::Forkserver => StartMethod::Forkserver,
        Method::Fork => StartMethod::Fork,
    }
}

/// Unspecified (or unknown: refused at the edge before) is spawn.
pub fn method_from(raw: i32) -> Method {
    match StartMethod::try_from(raw) {
        Ok(StartMethod::Forkserver) => Method::Forkserver,
        Ok(StartMethod::Fork) => Method::Fork,
        _ => Method::Spawn,
    }
}

fn placement(p: &Placement) -> pb::Placement {
    pb::Placement {
        node: p.node.clone(),
        labels: p.labels.clone().into_iter().collect(),
    }
}

fn placement_from(p: Option<pb::Placement>) -> Placement {
    let p = p.unwrap_or_default();
    Placement {
        node: p.node,
        labels: p.labels.into_iter().collect(),
    }
}

/// A start request (validated by [`crate::validate::start_request`]).
pub fn start_spec(r: StartRequest) -> StartSpec {
    StartSpec {
        request_id: r.request_id,
        name: r.name,
        placement: placement_from(r.placement),
        daemon: r.daemon,
        parent_id: r.parent_id,
        child_number: r.child_number,
        method: method_from(r.start_method),
        launch: LaunchSpec {
            command: r.command,
            function: r.function,
            log_limit_bytes: r.log_limit_bytes,
            limits: r.limits,
        },
        // Made by `Core` once it knows the start is new.
        trace: Default::default(),
    }
}

pub fn process_info(p: &Proc) -> ProcessInfo {
    ProcessInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        node: p.node.clone(),
        pid: p.pid,
        state: proc_state(p.state) as i32,
        exitcode: p.exitcode,
        start_error: p.start_error.clone(),
        daemon: p.daemon,
        parent_id: p.parent_id.clone(),
        argv: p.argv.clone(),
        created_unix_ms: p.created_unix_ms,
        started_unix_ms: p.started_unix_ms,
        stopped_unix_ms: p.stopped_unix_ms,
        request_id: p.request_id.clone(),
        start_method: method(p.method) as i32,
        cwd: p.cwd.clone(),
        function: p.function.clone(),
        result: p.result.clone(),
        identity: p.identity.clone(),
        limits: p.launch.limits,
        pool_id: p.pool_id.clone(),
        traceparent: p.trace.w3c.traceparent.clone(),
        tracestate: p.trace.w3c.tracestate.clone(),
        argv_omitted_bytes: 0,
    }
}

/// How much of argv a listing row carries; the rest is counted in
/// `argv_omitted_bytes` (Get has the whole).
pub const ROW_ARGV_BYTES: usize = 1024;
/// How much of cwd and of start_error a listing row carries.
pub const ROW_TEXT_BYTES: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn cut_text(s: &str) -> String {
    if s.len() <= ROW_TEXT_BYTES {
        return s.to_owned();
    }
    format!("{}…", prefix(s, ROW_TEXT_BYTES))
}

/// A process as a List or Wait row: bounded whatever the process (argv up
/// to [`ROW_ARGV_BYTES`], cwd and start_error up to [`ROW_TEXT_BYTES`], no
/// result), so a page of them fits in one message.
pub fn list_row(p: &Proc) -> ProcessInfo {
    let mut budget = ROW_ARGV_BYTES;
    let mut argv = Vec::new();
    let mut omitted = 0u64;
    for a in &p.argv {
        if budget == 0 {
            omitted += a.len() as u64;
            continue;
        }
        let kept = prefix(a, budget);
        omitted += (a.len() - kept.len()) as u64;
        budget -= kept.len();
        argv.push(kept.to_owned());
    }
    ProcessInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        node: p.node.clone(),
        pid: p.pid,
        state: proc_state(p.state) as i32,
        exitcode: p.exitcode,
        start_error: cut_text(&p.start_error),
        daemon: p.daemon,
        parent_id: p.parent_id.clone(),
        argv,
        created_unix_ms: p.created_unix_ms,
        started_unix_ms: p.started_unix_ms,
        stopped_unix_ms: p.stopped_unix_ms,
        request_id: p.request_id.clone(),
        start_method: method(p.method) as i32,
        cwd: cut_text(&p.cwd),
        function: p.function.clone(),
        result: None,
        identity: p.identity.clone(),
        limits: p.launch.limits,
        pool_id: p.pool_id.clone(),
        argv_omitted_bytes: omitted,
        traceparent: p.trace.w3c.traceparent.clone(),
        tracestate: p.trace.w3c.tracestate.clone(),
    }
}

/// The request half of a process's row (as stored since the first version).
pub fn start_row(p: &Proc) -> StartRequest {
    StartRequest {
        request_id: p.request_id.clone(),
        name: p.requested_name.clone(),
        command: p.launch.command.clone(),
        placement: Some(placement(&p.placement)),
        daemon: p.daemon,
        parent_id: p.parent_id.clone(),
        start_method: method(p.method) as i32,
        log_limit_bytes: p.launch.log_limit_bytes,
        function: p.launch.function.clone(),
        limits: p.launch.limits,
        // The row's identity holds the number; kept here for a faithful row.
        child_number: if p.parent_id.is_empty() {
            0
        } else {
            p.identity.last().copied().unwrap_or(0)
        },
    }
}

/// A process from its stored row.
pub fn proc_from_row(info: ProcessInfo, request: StartRequest) -> Proc {
    Proc {
        state: proc_state_from(info.state),
        method: method_from(info.start_method),
        id: info.id,
        name: info.name,
        identity: info.identity,
        daemon: info.daemon,
        parent_id: info.parent_id,
        node: info.node,
        pid: info.pid,
        exitcode: info.exitcode,
        start_error: info.start_error,
        argv: info.argv,
        cwd: info.cwd,
        function: info.function,
        pool_id: info.pool_id,
        request_id: info.request_id,
        result: info.result,
        created_unix_ms: info.created_unix_ms,
        started_unix_ms: info.started_unix_ms,
        stopped_unix_ms: info.stopped_unix_ms,
        requested_name: request.name,
        placement: placement_from(request.placement),
        launch: Arc::new(LaunchSpec {
            command: request.command,
            function: request.function,
            log_limit_bytes: request.log_limit_bytes,
            limits: info.limits.or(request.limits),
        }),
        trace: crate::core::model::ProcTrace::stored(mpctl_transport::trace::W3c {
            traceparent: info.traceparent,
            tracestate: info.tracestate,
        }),
    }
}

pub fn agent_info(a: &Agent) -> AgentInfo {
    AgentInfo {
        name: a.name.clone(),
        state: match a.state {
            AgentState::Ready => pb::AgentState::Ready,
            AgentState::Disconnected => pb::AgentState::Disconnected,
            AgentState::Lost => pb::AgentState::Lost,
        } as i32,
        slots: a.slots,
        used: a.used(),
        labels: a.labels.clone().into_iter().collect(),
        version: a.version.clone(),
        last_seen_unix_ms: a.last_seen_unix_ms,
        hostname: a.hostname.clone(),
        degraded_reason: a
            .journal_damage
            .as_ref()
            .map(JournalDamage::reason)
            .unwrap_or_default(),
        journal_damage: a.journal_damage.as_ref().map(|d| pb::JournalDamage {
            count: d.count,
            first_offset: d.first_offset,
            first: d.first.clone(),
            kept_file: d.kept_file.clone(),
            suspect_ids: d.suspect_ids.clone(),
        }),
        running: 0,
    }
}

/// An agent as `ListAgents` answers: with its started processes.
pub fn agent_load(a: &Agent, running: u32) -> AgentInfo {
    AgentInfo {
        running,
        ..agent_info(a)
    }
}

/// Longest text kept from a node's damage report, and most suspect ids.
const MAX_DAMAGE_TEXT: usize = 1024;
const MAX_SUSPECTS: usize = 16;

fn bounded(mut s: String) -> String {
    if s.len() > MAX_DAMAGE_TEXT {
        let mut end = MAX_DAMAGE_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A node's journal damage (bounded: it comes from the network); count 0
/// or absent: none.
pub fn journal_damage(d: Option<pb::JournalDamage>) -> Option<JournalDamage> {
    let d = d.filter(|d| d.count > 0)?;
    Some(JournalDamage {
        count: d.count,
        first_offset: d.first_offset,
        first: bounded(d.first),
        kept_file: bounded(d.kept_file),
        suspect_ids: d
            .suspect_ids
            .into_iter()
            .take(MAX_SUSPECTS)
            .map(bounded)
            .collect(),
    })
}

/// An agent from its stored row; its lease clock starts at `now`.
pub fn agent_from_row(info: AgentInfo, now: Instant) -> Agent {
    Agent {
        state: match pb::AgentState::try_from(info.state) {
            Ok(pb::AgentState::Ready) => AgentState::Ready,
            Ok(pb::AgentState::Lost) => AgentState::Lost,
            _ => AgentState::Disconnected,
        },
        name: info.name,
        slots: info.slots,
        labels: info.labels.into_iter().collect(),
        version: info.version,
        hostname: info.hostname,
        last_seen_unix_ms: info.last_seen_unix_ms,
        last_seen: now,
        session: None,
        journal_damage: journal_damage(info.journal_damage),
        running: Default::default(),
    }
}

pub fn exit_report(e: Exited) -> ExitReport {
    ExitReport {
        process_id: e.process_id,
        pid: e.pid,
        exitcode: e.exitcode,
        at_unix_ms: e.at_unix_ms,
        result: e.result,
    }
}

/// A Register (validated by [`crate::validate::register`]).
pub fn registration(r: Register) -> Registration {
    Registration {
        name: r.name,
        slots: r.slots,
        labels: r.labels.into_iter().collect(),
        version: r.version,
        hostname: r.hostname,
        running: r
            .running
            .into_iter()
            .map(|p| (p.process_id, p.pid))
            .collect(),
        exited: r.exited.into_iter().map(exit_report).collect(),
        journal_damage: journal_damage(r.journal_damage),
    }
}

fn launch(p: &Proc) -> pb::Launch {
    pb::Launch {
        process_id: p.id.clone(),
        name: p.name.clone(),
        command: p.launch.command.clone(),
        log_limit_bytes: p.launch.log_limit_bytes,
        start_method: method(p.method) as i32,
        function: p.launch.function.clone(),
        parent_id: p.parent_id.clone(),
        limits: p.launch.limits,
        traceparent: p.trace.w3c.traceparent.clone(),
        tracestate: p.trace.w3c.tracestate.clone(),
    }
}

pub fn to_node(m: ToNode) -> CoordinatorMessage {
    let msg = match m {
        ToNode::Launch(p) => ToAgent::Launch(launch(&p)),
        ToNode::Signal {
            process_id,
            signo,
            tree,
            request_id,
        } => ToAgent::Signal(pb::Signal {
            process_id,
            signo,
            tree,
            request_id,
        }),
        ToNode::AckExit(process_id) => ToAgent::AckExit(pb::AckExit { process_id }),
        ToNode::ReadLogs {
            request_id,
            process_id,
            stream,
            follow,
            from,
        } => ToAgent::ReadLogs(pb::ReadLogs {
            request_id,
            process_id,
            stream: log_stream(stream) as i32,
            follow,
            stdout_offset: from.stdout,
            stderr_offset: from.stderr,
        }),
        ToNode::CancelLogs(request_id) => ToAgent::CancelLogs(pb::CancelLogs { request_id }),
        ToNode::ResendReports => ToAgent::ResendReports(pb::ResendReports {}),
        ToNode::RemoveOutputs(process_ids) => {
            ToAgent::RemoveOutputs(pb::RemoveOutputs { process_ids })
        }
    };
    CoordinatorMessage { msg: Some(msg) }
}

pub fn output(s: pb::LogStream) -> Output {
    match s {
        pb::LogStream::Stdout => Output::Stdout,
        pb::LogStream::Stderr => Output::Stderr,
        pb::LogStream::Both | pb::LogStream::Unspecified => Output::Both,
    }
}

pub fn log_stream(o: Output) -> pb::LogStream {
    match o {
        Output::Stdout => pb::LogStream::Stdout,
        Output::Stderr => pb::LogStream::Stderr,
        Output::Both => pb::LogStream::Both,
    }
}

pub fn output_from(raw: i32) -> Output {
    output(pb::LogStream::try_from(raw).unwrap_or(pb::LogStream::Both))
}

pub fn log_chunk(c: Chunk) -> pb::LogChunk {
    pb::LogChunk {
        stream: log_stream(c.stream) as i32,
        data: c.data,
    }
}
