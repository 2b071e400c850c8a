//! Copying a child's stdout or stderr pipe into its size-capped file.
//!
//! The pipe is non-blocking and drained whenever it is readable. Up to the
//! cap, bytes go to the file; past it one marker line is written and the rest
//! is read and discarded, so the child never blocks on a full pipe.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::log;

/// Size of one read from a pipe.
const CHUNK: usize = 64 * 1024;

/// The marker appended once when output passes the cap.
pub fn truncation_marker(limit: u64) -> String {
    format!("\n[mpctl: output truncated at {limit} bytes]\n")
}

/// Creates (0600) and truncates an output file. Called before the spawn, so
/// an unwritable path is a launch failure.
pub fn create_log_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Whether the pipe is still open after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    Open,
    Eof,
}

/// One pipe from a child and the file it is copied into.
#[derive(Debug)]
pub struct OutPipe {
    src: File,
    dst: Option<File>,
    path: PathBuf,
    limit: u64,
    written: u64,
    truncated: bool,
}

impl OutPipe {
    /// Makes `src` non-blocking and pairs it with `dst`.
    pub fn new(src: OwnedFd, dst: File, path: &Path, limit: u64) -> io::Result<OutPipe> {
        let flags = OFlag::from_bits_truncate(fcntl(&src, FcntlArg::F_GETFL)?);
        fcntl(&src, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(OutPipe {
            src: File::from(src),
            dst: Some(dst),
            path: path.to_path_buf(),
            limit,
            written: 0,
            truncated: false,
        })
    }

    /// The pipe's descriptor, for polling.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.src.as_fd()
    }

    /// Reads until the pipe would block, reaches EOF, or `max` bytes were
    /// read (so one busy pipe cannot starve the others).
    pub fn pump(&mut self, max: usize) -> PipeState {
        let mut buf = [0u8; CHUNK];
        let mut total = 0usize;
        while total < max {
            match self.src.read(&mut buf) {
                Ok(0) => return PipeState::Eof,
                Ok(n) => {
                    total += n;
                    self.store(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return PipeState::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log(format_args!(
                        "reading output for {}: {e}",
                        self.path.display()
                    ));
                    return PipeState::Eof;
                }
            }
        }
        PipeState::Open
    }

    fn store(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.written);
        let take = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
        self.write(&data[..take]);
        self.written += take as u64;
        if take < data.len() {
            self.truncated = true;
            self.write(truncation_marker(self.limit).as_bytes());
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some(dst) = self.dst.as_mut() else {
            return;
        };
        if let Err(e) = dst.write_all(bytes) {
            log(format_args!(
                "writing output to {}: {e}; discarding the rest",
                self.path.display()
            ));
            self.dst = None;
        }
    }
}
