//! Bounds on what arrives over the wire. Everything a client or agent sends is
//! checked here before it touches the table, with a message naming the field.

use mpctl_proto::v1::{Register, StartMethod, StartRequest};
use tonic::Status;

pub const MAX_ARGV: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_COMMAND_BYTES: usize = 1 << 20;
pub const MAX_NAME: usize = 256;
pub const MAX_LABELS: usize = 64;
pub const MAX_WAIT_IDS: usize = 10_000;
pub const MAX_SLOTS: u32 = 100_000;

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

pub fn start_request(req: &StartRequest) -> Result<(), Status> {
    match StartMethod::try_from(req.start_method) {
        Ok(StartMethod::Unspecified | StartMethod::Spawn) => {}
        Ok(StartMethod::Fork) => {
            return Err(Status::failed_precondition(
                "start method fork needs the parent on the target node (the child is a copy of its parent); use spawn or forkserver from here",
            ))
        }
        Ok(StartMethod::Forkserver) => {
            return Err(Status::unimplemented(
                "start method forkserver is not available in this version; use spawn",
            ))
        }
        Err(_) => return Err(bad(format!("unknown start method {}", req.start_method))),
    }
    if req.name.len() > MAX_NAME || req.request_id.len() > MAX_NAME {
        return Err(bad(format!(
            "name and request_id are limited to {MAX_NAME} bytes"
        )));
    }
    let Some(cmd) = &req.command else {
        return Err(bad("a start needs a command target (argv)".into()));
    };
    if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
        return Err(bad(
            "the command is empty: give the program and its arguments, e.g. `mpctl run -- echo hi`"
                .into(),
        ));
    }
    if cmd.argv.len() > MAX_ARGV || cmd.env.len() > MAX_ENV {
        return Err(bad(format!(
            "the command has {} arguments and {} environment variables; the limits are {MAX_ARGV} and {MAX_ENV}",
            cmd.argv.len(),
            cmd.env.len()
        )));
    }
    let bytes: usize = cmd.argv.iter().map(String::len).sum::<usize>()
        + cmd
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + cmd.cwd.len();
    if bytes > MAX_COMMAND_BYTES {
        return Err(bad(format!(
            "the command's arguments and environment take {bytes} bytes; the limit is {MAX_COMMAND_BYTES}"
        )));
    }
    if let Some(a) = cmd.argv.iter().find(|a| a.contains('\0')) {
        return Err(bad(format!("argument {a:?} contains a NUL byte")));
    }
    for k in cmd.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(format!(
                "environment variable name {k:?} is invalid (empty, or contains '=' or NUL)"
            )));
        }
    }
    if cmd.env.values().any(|v| v.contains('\0')) || cmd.cwd.contains('\0') {
        return Err(bad("environment values and cwd may not contain NUL".into()));
    }
    if let Some(p) = &req.placement {
        if p.labels.len() > MAX_LABELS {
            return Err(bad(format!("at most {MAX_LABELS} label selectors")));
        }
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
    Ok(())
}
