//! Bounds on what arrives over the wire. Everything a client or agent sends is
//! checked here before it touches the table, with a message naming the field.

use std::collections::HashMap;

use mpctl_proto::v1::{Register, StartMethod, StartRequest};
use tonic::Status;

pub const MAX_ARGV: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_COMMAND_BYTES: usize = 1 << 20;
pub const MAX_NAME: usize = 256;
pub const MAX_LABELS: usize = 64;
pub const MAX_WAIT_IDS: usize = 10_000;
pub const MAX_SLOTS: u32 = 100_000;
pub use mpctl_node::{MAX_ARGS as MAX_FUNCTION_ARGS, MAX_RESULT};

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

pub fn start_request(req: &StartRequest) -> Result<(), Status> {
    match StartMethod::try_from(req.start_method) {
        Ok(StartMethod::Unspecified | StartMethod::Spawn) => {}
        Ok(StartMethod::Fork) => {
            // The SDK forks the caller itself, then asks the node to adopt
            // the child; the coordinator only records it.
            if req.parent_id.is_empty() || req.placement.as_ref().is_none_or(|p| p.node.is_empty())
            {
                return Err(Status::failed_precondition(
                    "start method fork needs the parent on the target node (the child is a copy of its parent): only a managed process can fork, through the SDK; use spawn or forkserver from here",
                ));
            }
            if req.function.is_none() {
                return Err(bad(
                    "start method fork starts function targets (the child runs a registered function of the forking program)".into(),
                ));
            }
        }
        Ok(StartMethod::Forkserver) => {}
        Err(_) => return Err(bad(format!("unknown start method {}", req.start_method))),
    }
    if req.name.len() > MAX_NAME || req.request_id.len() > MAX_NAME {
        return Err(bad(format!(
            "name and request_id are limited to {MAX_NAME} bytes"
        )));
    }
    match (&req.command, &req.function) {
        (Some(cmd), None) => {
            if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
                return Err(bad(
                    "the command is empty: give the program and its arguments, e.g. `mpctl run -- echo hi`".into(),
                ));
            }
            target(&cmd.argv, &cmd.env, &cmd.cwd)?;
        }
        (None, Some(f)) => {
            // A pool worker (started by the coordinator's pool driver only)
            // may run the agent's own program and have no initializer.
            let worker = f.pool_worker.is_some();
            if f.program.is_empty() && !worker {
                return Err(bad(
                    "a function target needs the program that registers the function".into(),
                ));
            }
            if (f.function.is_empty() && !worker) || f.function.len() > MAX_NAME {
                return Err(bad(format!(
                    "a function target needs the function's registered name (1 to {MAX_NAME} bytes)"
                )));
            }
            if std::str::from_utf8(&f.args).is_err() {
                return Err(bad(
                    "the function's arguments must be JSON text (UTF-8)".into()
                ));
            }
            if f.args.len() > MAX_FUNCTION_ARGS {
                return Err(bad(format!(
                    "the function's arguments take {} bytes serialized; the limit is {MAX_FUNCTION_ARGS}",
                    f.args.len()
                )));
            }
            let mut argv = vec![f.program.clone()];
            argv.extend(f.program_args.iter().cloned());
            target(&argv, &f.env, &f.cwd)?;
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "a start has either a command or a function target, not both".into(),
            ))
        }
        (None, None) => {
            return Err(bad(
                "a start needs a target: a command (argv) or a function".into(),
            ))
        }
    }
    if let Some(p) = &req.placement {
        if p.labels.len() > MAX_LABELS {
            return Err(bad(format!("at most {MAX_LABELS} label selectors")));
        }
    }
    if let Some(l) = &req.limits {
        if l.memory_bytes != 0 && l.memory_bytes < 1 << 20 {
            return Err(bad(format!(
                "a memory limit of {} bytes is too small to start a program; give at least 1 MiB",
                l.memory_bytes
            )));
        }
        if l.cpu_seconds > 1 << 32 {
            return Err(bad(format!(
                "a CPU limit of {} s is not sensible",
                l.cpu_seconds
            )));
        }
    }
    Ok(())
}

/// Bounds shared by command and function targets.
fn target(argv: &[String], env: &HashMap<String, String>, cwd: &str) -> Result<(), Status> {
    if argv.len() > MAX_ARGV || env.len() > MAX_ENV {
        return Err(bad(format!(
            "the command has {} arguments and {} environment variables; the limits are {MAX_ARGV} and {MAX_ENV}",
            argv.len(),
            env.len()
        )));
    }
    let bytes: usize = argv.iter().map(String::len).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + cwd.len();
    if bytes > MAX_COMMAND_BYTES {
        return Err(bad(format!(
            "the command's arguments and environment take {bytes} bytes; the limit is {MAX_COMMAND_BYTES}"
        )));
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(bad(format!("argument {a:?} contains a NUL byte")));
    }
    for k in env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(format!(
                "environment variable name {k:?} is invalid (empty, or contains '=' or NUL)"
            )));
        }
    }
    if env.values().any(|v| v.contains('\0')) || cwd.contains('\0') {
        return Err(bad("environment values and cwd may not contain NUL".into()));
    }
    Ok(())
}

pub fn register(reg: &Register) -> Result<(), Status> {
    if reg.name.is_empty() || reg.name.len() > MAX_NAME {
        return Err(bad(format!("agent name must be 1 to {MAX_NAME} bytes")));
    }
    if reg.slots == 0 || reg.slots > MAX_SLOTS {
        return Err(bad(format!(
            "agent {} offers {} slots; it must offer 1 to {MAX_SLOTS}",
            reg.name, reg.slots
        )));
    }
    if reg.labels.len() > MAX_LABELS {
        return Err(bad(format!(
            "agent {}: at most {MAX_LABELS} labels",
            reg.name
        )));
    }
    if !matches!(reg.node_credential.len(), 0 | 32) {
        return Err(bad(format!(
            "agent {}: a node credential is 32 bytes, this one {}",
            reg.name,
            reg.node_credential.len()
        )));
    }
    Ok(())
}
