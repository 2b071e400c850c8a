//! How listings print: aligned tables for people, `-o json` for programs.

use std::time::{SystemTime, UNIX_EPOCH};

use mpctl::proto::{AgentInfo, AgentState, ProcessInfo, ProcessState, StartMethod};
use serde_json::{json, Value};

pub fn state_name(state: i32) -> &'static str {
    match ProcessState::try_from(state).unwrap_or(ProcessState::Unspecified) {
        ProcessState::Queued => "queued",
        ProcessState::Launching => "launching",
        ProcessState::Started => "started",
        ProcessState::Stopped => "stopped",
        ProcessState::Failed => "failed",
        ProcessState::Lost => "lost",
        ProcessState::Unspecified => "unknown",
    }
}

pub fn agent_state_name(state: i32) -> &'static str {
    match AgentState::try_from(state).unwrap_or(AgentState::Unspecified) {
        AgentState::Ready => "ready",
        AgentState::Disconnected => "disconnected",
        AgentState::Lost => "lost",
        AgentState::Unspecified => "unknown",
    }
}

fn opt_ms(ms: i64) -> Value {
    if ms > 0 {
        json!(ms)
    } else {
        Value::Null
    }
}

pub fn process_json(p: &ProcessInfo) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "node": (!p.node.is_empty()).then_some(&p.node),
        "pid": (p.pid != 0).then_some(p.pid),
        "state": state_name(p.state),
        "exitcode": p.exitcode,
        "start_error": (!p.start_error.is_empty()).then_some(&p.start_error),
        "daemon": p.daemon,
        "parent_id": (!p.parent_id.is_empty()).then_some(&p.parent_id),
        "argv": p.argv,
        "cwd": (!p.cwd.is_empty()).then_some(&p.cwd),
        "start_method": match StartMethod::try_from(p.start_method) {
            Ok(StartMethod::Forkserver) => "forkserver",
            Ok(StartMethod::Fork) => "fork",
            _ => "spawn",
        },
        "function": (!p.function.is_empty()).then_some(&p.function),
        "pool_id": (!p.pool_id.is_empty()).then_some(&p.pool_id),
        "limits": p.limits.map(|l| json!({
            "memory_bytes": (l.memory_bytes != 0).then_some(l.memory_bytes),
            "cpu_seconds": (l.cpu_seconds != 0).then_some(l.cpu_seconds),
        })),
        "created_unix_ms": opt_ms(p.created_unix_ms),
        "started_unix_ms": opt_ms(p.started_unix_ms),
        "stopped_unix_ms": opt_ms(p.stopped_unix_ms),
    })
}

pub fn agent_json(a: &AgentInfo) -> Value {
    json!({
        "name": a.name,
        "state": agent_state_name(a.state),
        "slots": a.slots,
        "used": a.used,
        "labels": a.labels,
        "version": a.version,
        "hostname": a.hostname,
        "last_seen_unix_ms": opt_ms(a.last_seen_unix_ms),
    })
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// `5s`, `3m`, `2h`, `4d` since `ms`.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn exitcode_text(p: &ProcessInfo) -> String {
    p.exitcode.map_or_else(|| "-".into(), |c| c.to_string())
}

pub fn command_text(argv: &[String]) -> String {
    let s = argv.join(" ");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// Prints rows under a header with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
