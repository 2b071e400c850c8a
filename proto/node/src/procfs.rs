//! What the kernel says about a process through `/proc` and its pidfd:
//! the checks behind adoption (`docs/node-contract.md` §8, §12), where the
//! launcher must know that a pidfd it was handed names the claimed pid and
//! that the sender is that process's parent, and that an adopted child has
//! really ended before it believes a reported exit code.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The parent pid of `pid`, from `/proc/PID/stat` (field 4, after the
/// command name in parentheses, which may itself hold spaces or `)`).
pub fn ppid_of(pid: i32) -> io::Result<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_ppid(&stat).ok_or_else(|| invalid(format!("/proc/{pid}/stat: no parent pid")))
}

fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// The pid a pidfd names, from `/proc/self/fdinfo/FD` (`Pid:`): -1 once
/// that process has been reaped (Linux 5.x and later).
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<i32> {
    let fd = pidfd.as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid(format!("descriptor {fd} is not a pidfd")))
}

/// Whether the process a pidfd names has ended (the pidfd polls readable
/// from its exit on, reaped or not).
pub fn pidfd_exited(pidfd: impl AsFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => {
                return Ok(fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)))
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pidfd::pidfd_open;

    #[test]
    fn parses_the_parent_pid_past_a_tricky_command_name() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 17 42 42 0 -1"), Some(17));
        assert_eq!(parse_ppid("42 (sleep) R 1 42"), Some(1));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn a_child_of_ours_names_us_and_its_pidfd_follows_its_life() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(ppid_of(pid).unwrap(), std::process::id() as i32);
        let fd = pidfd_open(pid).unwrap();
        assert_eq!(pidfd_pid(fd.as_fd()).unwrap(), pid);
        assert!(!pidfd_exited(&fd).unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd).unwrap());
        assert_eq!(pidfd_pid(fd.as_fd()).unwrap(), -1);
    }

    #[test]
    fn a_pipe_is_not_a_pidfd() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(pidfd_pid(r.as_fd()).is_err());
    }
}
