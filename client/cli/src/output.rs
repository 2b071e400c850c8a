//! How listings print: aligned tables for people, `-o json` for programs.

use std::time::{SystemTime, UNIX_EPOCH};

use mpctl::{AgentInfo, ProcessInfo};
use serde_json::{json, Value};

/// Milliseconds since the epoch, or null: the JSON keeps the wire's units.
fn unix_ms(t: Option<SystemTime>) -> Value {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => json!(d.as_millis() as i64),
        None => Value::Null,
    }
}

pub fn process_json(p: &ProcessInfo) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "node": (!p.node.is_empty()).then_some(&p.node),
        "pid": p.pid,
        "state": p.state.as_str(),
        "exitcode": p.exitcode,
        "start_error": p.start_error,
        "daemon": p.daemon,
        "parent_id": (!p.parent_id.is_empty()).then_some(&p.parent_id),
        "argv": p.argv,
        "argv_omitted_bytes": p.argv_omitted_bytes,
        "cwd": (!p.cwd.is_empty()).then_some(&p.cwd),
        "start_method": p.start_method.as_str(),
        "function": (!p.function.is_empty()).then_some(&p.function),
        "pool_id": (!p.pool_id.is_empty()).then_some(&p.pool_id),
        "trace_id": (!p.trace_id.is_empty()).then_some(&p.trace_id),
        "limits": p.limits.map(|l| json!({
            "memory_bytes": (l.memory_bytes != 0).then_some(l.memory_bytes),
            "cpu_seconds": (l.cpu_seconds != 0).then_some(l.cpu_seconds),
        })),
        "created_unix_ms": unix_ms(p.created),
        "started_unix_ms": unix_ms(p.started),
        "stopped_unix_ms": unix_ms(p.stopped),
    })
}

pub fn agent_json(a: &AgentInfo) -> Value {
    json!({
        "name": a.name,
        "state": a.state.as_str(),
        "slots": a.slots,
        "used": a.used,
        "running": a.running,
        "labels": a.labels,
        "version": a.version,
        "hostname": a.hostname,
        "last_seen_unix_ms": unix_ms(a.last_seen),
        "degraded": a.degraded,
    })
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// `5s`, `3m`, `2h`, `4d` since `t`; `-` for none.
pub fn age(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let s = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
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

pub fn command_text(argv: &[String], omitted: u64) -> String {
    let s = argv.join(" ");
    let shown = s.chars().count() > 60;
    let text = if shown {
        s.chars().take(59).collect::<String>()
    } else {
        s
    };
    // What the listing row left out, beyond what the column cuts.
    match (omitted, shown) {
        (0, false) => text,
        (0, true) => format!("{text}…"),
        (n, _) => format!("{text}…(+{})", size_text(n)),
    }
}

/// Bytes for people: `940 KB`, `1.2 MB`, `812 B`.
pub fn size_text(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MB", n >> 20),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{} KB", n >> 10),
        n => format!("{n} B"),
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use mpctl::{Limits, ProcessInfo, ProcessState, StartMethod};

    use super::process_json;

    fn at(ms: u64) -> Option<std::time::SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The `-o json` record is a contract with scripts: the same keys, the
    /// same nulls for "none", milliseconds since the epoch.
    #[test]
    fn process_json_keeps_the_wire_shape() {
        let p = ProcessInfo {
            id: "00000000000000aa".into(),
            name: "Process-3:1".into(),
            node: "node-a".into(),
            pid: Some(4242),
            state: ProcessState::Stopped,
            exitcode: Some(-15),
            start_error: None,
            daemon: true,
            parent_id: "00000000000000bb".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            argv_omitted_bytes: 0,
            cwd: String::new(),
            start_method: StartMethod::Forkserver,
            function: "whoami".into(),
            result: Some(b"1".to_vec()),
            identity: vec![3, 1],
            limits: Some(Limits {
                memory_bytes: 1 << 20,
                cpu_seconds: 0,
            }),
            pool_id: String::new(),
            trace_id: String::new(),
            span_id: String::new(),
            request_id: "r".into(),
            created: at(1_700_000_000_001),
            started: at(1_700_000_000_002),
            stopped: None,
        };
        let text = serde_json::to_string(&process_json(&p)).unwrap();
        assert_eq!(
            text,
            r#"{"argv":["sh","-c","exit 3"],"argv_omitted_bytes":0,"created_unix_ms":1700000000001,"cwd":null,"daemon":true,"exitcode":-15,"function":"whoami","id":"00000000000000aa","limits":{"cpu_seconds":null,"memory_bytes":1048576},"name":"Process-3:1","node":"node-a","parent_id":"00000000000000bb","pid":4242,"pool_id":null,"start_error":null,"start_method":"forkserver","started_unix_ms":1700000000002,"state":"stopped","stopped_unix_ms":null,"trace_id":null}"#
        );
    }
}
