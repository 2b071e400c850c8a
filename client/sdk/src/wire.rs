//! The SDK's edge: protobuf messages from the coordinator become the SDK's
//! own types ([`crate::status`]) here, and the SDK's enums become protobuf
//! values. A value the coordinator should never send (an unknown state) is
//! an [`Error::Decode`] naming the process, not a guess.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mpctl_proto::v1 as proto;

use crate::error::{Error, Result};
use crate::status::{
    AgentInfo, AgentState, Limits, LogChunk, LogStream, ProcessInfo, ProcessState, StartMethod,
};

/// Milliseconds since the epoch on the wire; 0 (or less) is "not yet".
fn time(ms: i64) -> Option<SystemTime> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

fn text(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn undecodable(what: String, message: String) -> Error {
    Error::Decode { what, message }
}

fn process_state(state: i32, id: &str) -> Result<ProcessState> {
    use proto::ProcessState as P;
    match P::try_from(state) {
        Ok(P::Queued) => Ok(ProcessState::Queued),
        Ok(P::Launching) => Ok(ProcessState::Launching),
        Ok(P::Started) => Ok(ProcessState::Started),
        Ok(P::Stopped) => Ok(ProcessState::Stopped),
        Ok(P::Failed) => Ok(ProcessState::Failed),
        Ok(P::Lost) => Ok(ProcessState::Lost),
        Ok(P::Unspecified) | Err(_) => Err(undecodable(
            format!("the state of process {id}"),
            format!("unknown state {state} from the coordinator (is it newer than this client?)"),
        )),
    }
}

/// The wire leaves "unspecified" to mean spawn.
fn start_method(method: i32) -> StartMethod {
    match proto::StartMethod::try_from(method) {
        Ok(proto::StartMethod::Forkserver) => StartMethod::Forkserver,
        Ok(proto::StartMethod::Fork) => StartMethod::Fork,
        _ => StartMethod::Spawn,
    }
}

pub(crate) fn process_info(p: proto::ProcessInfo) -> Result<ProcessInfo> {
    let state = process_state(p.state, &p.id)?;
    Ok(ProcessInfo {
        state,
        pid: (p.pid != 0).then_some(p.pid),
        exitcode: p.exitcode,
        start_error: text(p.start_error),
        daemon: p.daemon,
        start_method: start_method(p.start_method),
        result: p.result,
        identity: p.identity,
        limits: p.limits.map(|l| Limits {
            memory_bytes: l.memory_bytes,
            cpu_seconds: l.cpu_seconds,
        }),
        created: time(p.created_unix_ms),
        started: time(p.started_unix_ms),
        stopped: time(p.stopped_unix_ms),
        id: p.id,
        name: p.name,
        node: p.node,
        parent_id: p.parent_id,
        argv: p.argv,
        argv_omitted_bytes: p.argv_omitted_bytes,
        cwd: p.cwd,
        function: p.function,
        pool_id: p.pool_id,
        request_id: p.request_id,
        trace_id: p.traceparent.get(3..35).unwrap_or_default().to_owned(),
        span_id: p.traceparent.get(36..52).unwrap_or_default().to_owned(),
    })
}

pub(crate) fn process_infos(list: Vec<proto::ProcessInfo>) -> Result<Vec<ProcessInfo>> {
    list.into_iter().map(process_info).collect()
}

pub(crate) fn agent_info(a: proto::AgentInfo) -> Result<AgentInfo> {
    use proto::AgentState as A;
    let state = match A::try_from(a.state) {
        Ok(A::Ready) => AgentState::Ready,
        Ok(A::Disconnected) => AgentState::Disconnected,
        Ok(A::Lost) => AgentState::Lost,
        Ok(A::Unspecified) | Err(_) => {
            return Err(undecodable(
                format!("the state of agent {}", a.name),
                format!("unknown state {} from the coordinator", a.state),
            ))
        }
    };
    Ok(AgentInfo {
        state,
        slots: a.slots,
        used: a.used,
        running: a.running,
        labels: a.labels.into_iter().collect(),
        version: a.version,
        hostname: a.hostname,
        last_seen: time(a.last_seen_unix_ms),
        degraded: (!a.degraded_reason.is_empty()).then_some(a.degraded_reason),
        name: a.name,
    })
}

pub(crate) fn log_chunk(c: proto::LogChunk, id: &str) -> Result<LogChunk> {
    let stream = match proto::LogStream::try_from(c.stream) {
        Ok(proto::LogStream::Stdout) => LogStream::Stdout,
        Ok(proto::LogStream::Stderr) => LogStream::Stderr,
        _ => {
            return Err(undecodable(
                format!("the output of process {id}"),
                format!("a chunk from stream {} (not stdout or stderr)", c.stream),
            ))
        }
    };
    Ok(LogChunk {
        stream,
        data: c.data,
    })
}

impl From<StartMethod> for proto::StartMethod {
    fn from(m: StartMethod) -> proto::StartMethod {
        match m {
            StartMethod::Spawn => proto::StartMethod::Spawn,
            StartMethod::Forkserver => proto::StartMethod::Forkserver,
            StartMethod::Fork => proto::StartMethod::Fork,
        }
    }
}

impl From<LogStream> for proto::LogStream {
    fn from(s: LogStream) -> proto::LogStream {
        match s {
            LogStream::Stdout => proto::LogStream::Stdout,
            LogStream::Stderr => proto::LogStream::Stderr,
            LogStream::Both => proto::LogStream::Both,
        }
    }
}

pub(crate) fn start_method_wire(m: StartMethod) -> i32 {
    proto::StartMethod::from(m) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_millisecond_and_zero_is_none() {
        assert_eq!(time(0), None);
        assert_eq!(time(-5), None);
        let t = time(1_700_000_000_123).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_700_000_000_123
        );
    }

    #[test]
    fn an_unknown_state_is_an_error_naming_the_process() {
        let p = proto::ProcessInfo {
            id: "00ff".into(),
            state: 42,
            ..Default::default()
        };
        let e = process_info(p).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot decode the state of process 00ff: unknown state 42 from the coordinator (is it newer than this client?)"
        );
    }

    #[test]
    fn empty_wire_fields_become_none() {
        let p = process_info(proto::ProcessInfo {
            id: "a".into(),
            state: proto::ProcessState::Queued as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (p.pid, p.start_error, p.created, p.start_method),
            (None, None, None, StartMethod::Spawn)
        );
    }
}
