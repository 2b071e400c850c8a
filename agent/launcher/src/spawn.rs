//! Starting one managed process, and the pipes of a start through a
//! forkserver.
//!
//! `std::process::Command` does the spawn. The child gets an empty signal
//! mask and default dispositions for every signal (see
//! [`spawn::clean_signals`]: std alone leaves the launcher's blocked
//! signals blocked in the child), a cleared and then
//! exactly specified environment, stdin on `/dev/null`, stdout and stderr on
//! pipes, and its own process group (so a `tree` signal reaches its
//! descendants). Every descriptor of the launcher is close-on-exec.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use mpctl_node::descriptors::{PREP_FD, RESULT_FD};
use mpctl_node::sys::{fds, pidfd, spawn};
use mpctl_node::Limits;

use crate::log;
use crate::output::OutPipe;
use crate::protocol::{Bootstrap, LaunchSpec};

/// A freshly started child.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// `None` only if `pidfd_open` failed (then signals fall back to kill(2),
    /// still safe because the pid cannot be reused before we reap it).
    pub pidfd: Option<OwnedFd>,
    pub stdout: OutPipe,
    pub stderr: OutPipe,
    /// Function targets: the pipe the child writes its result to.
    pub result: Option<OutPipe>,
}

/// The parent's ends of a function target's bootstrap pipes, prepared
/// before the spawn.
struct BootstrapPipes {
    /// High-numbered copies the child `dup2`s to fds 3 and 4; dropped (closed
    /// in the launcher) once the child exists.
    child_prep: OwnedFd,
    child_result: OwnedFd,
    result_read: OwnedFd,
}

fn bootstrap_pipes(b: &Bootstrap) -> Result<BootstrapPipes, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let io = |what: &str, e: nix::Error| format!("{what}: {e}");
    let (prep_read, prep_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io("pipe", e))?;
    let len = b.prep.len();
    if len > 64 * 1024 {
        fcntl(&prep_write, FcntlArg::F_SETPIPE_SZ(len as libc::c_int)).map_err(|e| {
            format!(
                "the preparation data ({len} bytes) does not fit in a pipe ({e}); pass smaller arguments"
            )
        })?;
    }
    // The pipe holds all of it, so these writes never block; closing the
    // write end then gives the child EOF after the data.
    let mut rest = b.prep.as_bytes();
    while !rest.is_empty() {
        let n = nix::unistd::write(&prep_write, rest)
            .map_err(|e| io("writing the preparation data", e))?;
        rest = &rest[n..];
    }
    drop(prep_write);
    let (result_read, result_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io("pipe", e))?;
    Ok(BootstrapPipes {
        child_prep: fds::dup_above(prep_read.as_fd()).map_err(|e| format!("dup: {e}"))?,
        child_result: fds::dup_above(result_write.as_fd()).map_err(|e| format!("dup: {e}"))?,
        result_read,
    })
}

/// Starts the process described by `spec`. The error is the OS reason
/// (the `io::Error` display), suitable for `LaunchFailed`.
pub fn spawn(spec: &LaunchSpec) -> Result<Spawned, String> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| "empty argv".to_owned())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    run_as(&mut cmd, spec.run_as);
    spawn::clean_signals(&mut cmd);
    let limits = limits(spec);
    if !limits.is_none() {
        spawn::limits(&mut cmd, limits);
    }
    let bootstrap = spec.bootstrap.as_ref().map(bootstrap_pipes).transpose()?;
    if let Some(b) = &bootstrap {
        spawn::fds_at(
            &mut cmd,
            vec![
                (b.child_prep.as_raw_fd(), PREP_FD),
                (b.child_result.as_raw_fd(), RESULT_FD),
            ],
        );
    }
    let mut child = cmd.spawn().map_err(|e| run_as_error(spec.run_as, e))?;
    // The pid stays ours until we reap it with waitpid; `child` is dropped
    // without waiting (dropping a std Child neither kills nor reaps).
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let pidfd = match pidfd::pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log(format_args!("pidfd_open({pid}) for {}: {e}", spec.id));
            None
        }
    };
    let pipes = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => OutPipe::new(out.into(), &spec.stdout_path, spec.log_limit_bytes)
            .and_then(|o| {
                OutPipe::new(err.into(), &spec.stderr_path, spec.log_limit_bytes).map(|e| (o, e))
            })
            .map_err(|e| format!("output pipes: {e}")),
        // Cannot happen with Stdio::piped(); stay robust anyway.
        _ => Err("spawned without output pipes".to_owned()),
    };
    let pipes = pipes.and_then(|(o, e)| match (bootstrap, &spec.bootstrap) {
        (Some(b), Some(boot)) => {
            // The child has its copies now; the launcher keeps only the read end.
            drop((b.child_prep, b.child_result));
            OutPipe::in_memory(b.result_read, &result_name(&spec.id), boot.result_limit)
                .map(|r| (o, e, Some(r)))
                .map_err(|e| format!("result pipe: {e}"))
        }
        _ => Ok((o, e, None)),
    });
    let (stdout, stderr, result) = match pipes {
        Ok(p) => p,
        Err(e) => {
            // Never leave a process running that nobody tracks; it is reaped
            // later as an unknown pid.
            let _ = pidfd::kill(pid, libc::SIGKILL);
            return Err(e);
        }
    };
    Ok(Spawned {
        pid,
        pidfd,
        stdout,
        stderr,
        result,
    })
}

/// How a result pipe is named in log lines.
pub fn result_name(id: &str) -> String {
    format!("the result of {id}")
}

/// For a start through a forkserver: the four descriptors its child gets
/// (stdout and stderr write ends, the preparation pipe's read end, the result
/// pipe's write end) and the launcher's ends of its output and result pipes.
pub fn forkserver_child(spec: &LaunchSpec) -> Result<([OwnedFd; 4], Vec<OutPipe>), String> {
    use nix::fcntl::OFlag;
    let b = spec
        .bootstrap
        .as_ref()
        .ok_or_else(|| "only function targets start through a forkserver".to_owned())?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let boot = bootstrap_pipes(b)?;
    let pipes = vec![
        OutPipe::new(out_read, &spec.stdout_path, spec.log_limit_bytes)
            .map_err(|e| format!("output pipes: {e}"))?,
        OutPipe::new(err_read, &spec.stderr_path, spec.log_limit_bytes)
            .map_err(|e| format!("output pipes: {e}"))?,
        OutPipe::in_memory(boot.result_read, &result_name(&spec.id), b.result_limit)
            .map_err(|e| format!("result pipe: {e}"))?,
    ];
    Ok((
        [out_write, err_write, boot.child_prep, boot.child_result],
        pipes,
    ))
}

/// The child drops to `run_as`: std's `Command` calls `setgroups(0)` (when
/// the launcher is root), `setgid`, then `setuid` in the child before exec,
/// and the spawn fails with the OS reason if any of them does.
pub fn run_as(cmd: &mut Command, run_as: Option<crate::protocol::RunAs>) {
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
}

/// The OS reason of a failed spawn; a refused user switch says what the
/// launcher lacks.
pub fn run_as_error(run_as: Option<crate::protocol::RunAs>, e: std::io::Error) -> String {
    match run_as {
        Some(r) if e.raw_os_error() == Some(libc::EPERM) => format!(
            "cannot run as uid {} gid {}: {e}; the launcher runs as uid {} and needs root or CAP_SETUID and CAP_SETGID for --run-as",
            r.uid,
            r.gid,
            nix::unistd::geteuid()
        ),
        _ => e.to_string(),
    }
}

/// The rlimits of `spec`.
pub fn limits(spec: &LaunchSpec) -> Limits {
    Limits {
        memory_bytes: spec.memory_limit,
        cpu_seconds: spec.cpu_limit,
    }
}
