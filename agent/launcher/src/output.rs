//! Copying a child's stdout or stderr pipe into its size-capped file, and a
//! function target's result pipe into memory.
//!
//! The pipe is non-blocking and drained whenever it is readable. Up to the
//! cap, bytes go to the file; past it one marker line is written and the rest
//! is read and discarded, so the child never blocks on a full pipe.
//!
//! The file (and its process's directory) is created with the first byte, so
//! a silent process leaves nothing on disk and its launch creates no inode.
//! Creating one is the costliest file-system step of a launch: without a
//! journal, ext4 steps one by one over every inode freed in the last minutes,
//! so on a node that has just removed many files (a finished job's
//! directory) one creation took 0.2 ms or more here. Readers treat a missing
//! file as empty output. For the same reason a result never touches the disk
//! here: it is kept in memory and travels, and is journaled, with its exit.

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

/// Creates (0600) and truncates an output file, and its directory (0700)
/// if needed.
fn create_log_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        super::setup::create_private_dir(dir)?;
    }
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

/// Where a pipe's bytes go.
#[derive(Debug)]
enum Sink {
    /// A file that nothing has been written to yet: it does not exist.
    NotCreated,
    Open(File),
    /// A result, held until its process's exit is reported.
    Memory(Vec<u8>),
    /// Failed (logged once) or no longer wanted: the rest is read and dropped.
    Discard,
}

/// One pipe from a child and the file it is copied into.
#[derive(Debug)]
pub struct OutPipe {
    src: File,
    dst: Sink,
    /// The file, or what the bytes are (for a memory pipe), for log lines.
    path: PathBuf,
    limit: u64,
    written: u64,
    truncated: bool,
}

impl OutPipe {
    /// Makes `src` non-blocking and pairs it with the file at `path`, which
    /// is created when the first byte arrives.
    pub fn new(src: OwnedFd, path: &Path, limit: u64) -> io::Result<OutPipe> {
        let flags = OFlag::from_bits_truncate(fcntl(&src, FcntlArg::F_GETFL)?);
        fcntl(&src, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(OutPipe {
            src: File::from(src),
            dst: Sink::NotCreated,
            path: path.to_path_buf(),
            limit,
            written: 0,
            truncated: false,
        })
    }

    /// Like [`OutPipe::new`], but the bytes are kept in memory until
    /// [`OutPipe::take_memory`]; `what` names them in log lines.
    pub fn in_memory(src: OwnedFd, what: &str, limit: u64) -> io::Result<OutPipe> {
        let mut pipe = OutPipe::new(src, Path::new(what), limit)?;
        pipe.dst = Sink::Memory(Vec::new());
        Ok(pipe)
    }

    /// A memory pipe's bytes so far; what arrives afterwards is dropped.
    /// `None` for a file pipe, or when they were already taken.
    pub fn take_memory(&mut self) -> Option<Vec<u8>> {
        let Sink::Memory(held) = &mut self.dst else {
            return None;
        };
        let bytes = std::mem::take(held);
        self.dst = Sink::Discard;
        Some(bytes)
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
        if let Sink::NotCreated = self.dst {
            self.dst = match create_log_file(&self.path) {
                Ok(f) => Sink::Open(f),
                Err(e) => {
                    log(format_args!(
                        "creating {}: {e}; discarding this output",
                        self.path.display()
                    ));
                    Sink::Discard
                }
            };
        }
        match &mut self.dst {
            Sink::Open(dst) => {
                if let Err(e) = dst.write_all(bytes) {
                    log(format_args!(
                        "writing output to {}: {e}; discarding the rest",
                        self.path.display()
                    ));
                    self.dst = Sink::Discard;
                }
            }
            // Bounded: `store` passes at most `limit` bytes and one marker.
            Sink::Memory(held) => held.extend_from_slice(bytes),
            Sink::NotCreated | Sink::Discard => {}
        }
    }
}
