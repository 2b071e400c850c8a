//! The fork start method (DESIGN §3): a managed process forks itself; the
//! child runs a registered function in a copy of the parent's memory, so it
//! sees the parent's state as it was at `start()`. The parent hands the
//! child's pidfd and result pipe to its node's launcher (the adoption
//! socket), which tracks the child like any other; the parent reaps it and
//! reports its exit code, and if the parent dies first the launcher (a
//! subreaper) reaps the orphan itself.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use mpctl_proto::bootstrap::{FromAdopt, Preparation, ToAdopt, MAX_FORKSERVER_MESSAGE};
use nix::sys::socket::{
    connect, recv, send, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;

use super::{bootstrap, sys, ADOPT_SOCKET, RUNTIME};

/// Why a fork cannot happen here, for the caller's error.
pub const NOT_ON_A_NODE: &str = "start method fork needs the parent on the target node (the child is a copy of its parent): this program is not a managed process on a node; use spawn or forkserver";

/// Forks this process for `prep` and has the node adopt the child; returns
/// the child's pid.
pub fn start(prep: Preparation, limits: (u64, u64)) -> Result<i32, String> {
    let runtime = RUNTIME
        .get()
        .ok_or("fork runs a registered function: call Runtime::init() first in main")?;
    let adopt_socket = ADOPT_SOCKET.get().ok_or(NOT_ON_A_NODE)?;
    let sock = connect_adoption(Path::new(adopt_socket))
        .map_err(|e| format!("cannot reach the node's launcher at {adopt_socket}: {e}"))?;
    let (result_read, result_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(result_read);
            drop(sock);
            bootstrap::run_forked(runtime, prep, std::fs::File::from(result_write), limits)
        }
        ForkResult::Parent { child } => {
            drop(result_write);
            let pid = child.as_raw();
            match adopt(&sock, &prep.id, pid, result_read) {
                Ok(()) => {
                    // The parent is the child's real parent: reap it and report.
                    std::thread::Builder::new()
                        .name(format!("mpctl-reap-{pid}"))
                        .spawn(move || reap_and_report(sock, pid))
                        .map_err(|e| format!("reaper thread: {e}"))?;
                    Ok(pid)
                }
                Err(e) => {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    Err(format!("the node's launcher did not adopt the child: {e}"))
                }
            }
        }
    }
}

fn connect_adoption(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

fn adopt(sock: &OwnedFd, id: &str, pid: i32, result_read: OwnedFd) -> Result<(), String> {
    let pidfd = sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let body = serde_json::to_vec(&ToAdopt::Adopt {
        id: id.to_owned(),
        pid,
    })
    .map_err(|e| e.to_string())?;
    let fds = [pidfd.as_raw_fd(), result_read.as_raw_fd()];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_FORKSERVER_MESSAGE];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| e.to_string())?;
    match serde_json::from_slice::<FromAdopt>(&buf[..n]) {
        Ok(FromAdopt::Adopted) => Ok(()),
        Ok(FromAdopt::Refused { error }) => Err(error),
        Err(_) if n == 0 => Err("the launcher closed the connection".into()),
        Err(e) => Err(format!("malformed answer: {e}")),
    }
}

/// Waits for the child and reports its exit code (CPython's rules). If this
/// process dies first, the launcher reaps the orphan instead.
fn reap_and_report(sock: OwnedFd, pid: i32) {
    let exitcode = match waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => -(sig as i32),
        _ => return,
    };
    if let Ok(body) = serde_json::to_vec(&ToAdopt::Exited { pid, exitcode }) {
        let _ = send(sock.as_raw_fd(), &body, MsgFlags::MSG_NOSIGNAL);
    }
}
