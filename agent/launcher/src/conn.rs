//! The launcher's side of the one agent connection: non-blocking reads into
//! a frame decoder, and a bounded output queue flushed when writable.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use crate::protocol::{encode, FrameBuffer, FromLauncher, ToLauncher};

/// Queued output beyond this means the agent stopped reading: drop it.
const MAX_QUEUED: usize = 64 << 20;

/// One accepted agent connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    inbuf: FrameBuffer,
    out: Vec<u8>,
}

/// The result of reading what is available.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Complete messages, in order.
    pub messages: Vec<ToLauncher>,
    /// Set when the connection must be closed (after handling `messages`).
    pub closed: Option<String>,
}

impl Conn {
    pub fn new(stream: UnixStream) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            inbuf: FrameBuffer::default(),
            out: Vec::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether queued output is waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads everything available and decodes the complete frames.
    pub fn read(&mut self) -> Incoming {
        let mut incoming = Incoming::default();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    incoming.closed = Some("closed by the agent".into());
                    break;
                }
                Ok(n) => {
                    self.inbuf.push(&buf[..n]);
                    loop {
                        match self.inbuf.next_frame::<ToLauncher>() {
                            Ok(Some(msg)) => incoming.messages.push(msg),
                            Ok(None) => break,
                            Err(e) => {
                                incoming.closed = Some(format!("protocol error: {e}"));
                                return incoming;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    incoming.closed = Some(format!("read error: {e}"));
                    break;
                }
            }
        }
        incoming
    }

    /// Queues `msg` and writes as much as the socket takes. An error means
    /// the connection is unusable and must be closed.
    pub fn send(&mut self, msg: &FromLauncher) -> Result<(), String> {
        let frame = encode(msg).map_err(|e| format!("encoding a message: {e}"))?;
        if self.out.len() + frame.len() > MAX_QUEUED {
            return Err(format!(
                "agent is not reading: {} bytes queued",
                self.out.len()
            ));
        }
        self.out.extend_from_slice(&frame);
        self.flush()
    }

    /// Writes queued output until the socket would block.
    pub fn flush(&mut self) -> Result<(), String> {
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            match self.stream.write(&self.out[written..]) {
                Ok(0) => break Err("write returned 0".to_owned()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("write error: {e}")),
            }
        };
        self.out.drain(..written);
        result
    }
}
