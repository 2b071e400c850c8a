//! One JSON message per SOCK_SEQPACKET datagram, with descriptors by
//! SCM_RIGHTS: how the forkserver and adoption protocols travel.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    connect, recvmsg, sendmsg, socket, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::sys::fds::own;

/// Largest message on either socket.
pub const MAX_MESSAGE: usize = 64 << 10;
/// Most descriptors one message carries (a forkserver start).
pub const MAX_FDS: usize = 4;

/// What one receive produced.
#[derive(Debug)]
pub enum Received<T> {
    /// A message and the descriptors that came with it (close-on-exec).
    Message(T, Vec<OwnedFd>),
    /// Nothing waiting (non-blocking receive).
    WouldBlock,
    /// The peer closed its end.
    Closed,
}

/// Sends `msg` with `fds`. Never raises SIGPIPE.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    loop {
        match sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message; `blocking: false` answers [`Received::WouldBlock`]
/// when nothing is waiting. A message that is not a `T` is `InvalidData`.
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>, blocking: bool) -> io::Result<Received<T>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !blocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) =
            match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    // Owned at once, so none leaks whatever follows.
                    for c in msg.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            fds.extend(raw.into_iter().map(own));
                        }
                    }
                    (msg.bytes, fds)
                }
                Err(Errno::EAGAIN) => return Ok(Received::WouldBlock),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
        if len == 0 && fds.is_empty() {
            return Ok(Received::Closed);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed message: {e}"),
            )
        })?;
        return Ok(Received::Message(msg, fds));
    }
}

/// A close-on-exec SOCK_SEQPACKET connection to the socket at `path`.
pub fn connect_to(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adoption::ToAdopt;
    use nix::sys::socket::socketpair;
    use std::os::fd::AsFd;

    #[test]
    fn a_message_travels_with_its_descriptors() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let msg = ToAdopt::Adopt {
            id: "p".into(),
            pid: 42,
        };
        send(a.as_fd(), &msg, &[r.as_fd(), w.as_fd()]).unwrap();
        match recv::<ToAdopt>(b.as_fd(), true).unwrap() {
            Received::Message(got, fds) => {
                assert_eq!(got, msg);
                assert_eq!(fds.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv::<ToAdopt>(b.as_fd(), false).unwrap(),
            Received::WouldBlock
        ));
        drop(a);
        assert!(matches!(
            recv::<ToAdopt>(b.as_fd(), false).unwrap(),
            Received::Closed
        ));
    }
}
