//! Messages between the agent and the launcher, and their framing.
//!
//! A frame is a `u32` big-endian body length followed by that many bytes of
//! JSON. Frames are bounded by [`MAX_FRAME`]; a larger length is a protocol
//! error, never an allocation. The launcher sends [`FromLauncher::Hello`]
//! first on every connection.

use std::path::PathBuf;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::ProtocolError;

/// Largest accepted frame body, in bytes: an [`ExitRecord`] carries a result
/// of up to `MAX_RESULT` (1 MiB), which JSON escaping at most triples.
pub const MAX_FRAME: usize = 8 << 20;

/// What to start: the complete description of one managed process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Cluster-unique process id; a launch is idempotent per id.
    pub id: String,
    /// Program and arguments; `argv[0]` is the program (resolved with the
    /// child's `PATH` when it has no slash).
    pub argv: Vec<String>,
    /// The COMPLETE environment of the child: nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory; the launcher's own when `None`.
    pub cwd: Option<PathBuf>,
    /// File receiving the child's stdout (created 0600 with the first byte;
    /// a silent child leaves none).
    pub stdout_path: PathBuf,
    /// File receiving the child's stderr (created 0600 with the first byte;
    /// a silent child leaves none).
    pub stderr_path: PathBuf,
    /// Cap on the bytes kept in each of the two files.
    pub log_limit_bytes: u64,
    /// Function targets: the bootstrap's pipes (see [`Bootstrap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// Function targets started by forkserver: the preload hooks its server
    /// runs once (the server is keyed by program and this list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forkserver: Option<Vec<String>>,
    /// RLIMIT_AS in bytes (0: none).
    #[serde(default)]
    pub memory_limit: u64,
    /// RLIMIT_CPU in seconds (0: none).
    #[serde(default)]
    pub cpu_limit: u64,
    /// Run the child (and its forkserver) as this user instead of the
    /// launcher's: `setgroups([])`, `setgid`, `setuid` before exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

/// A uid and gid a child runs as (`--run-as USER` on the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// What a function target's child gets besides stdio: fd 3 reads the
/// preparation data (a pipe holding exactly `prep`, then EOF), fd 4 writes
/// the result, which the launcher keeps in memory (at most `result_limit`
/// bytes) and reports with the exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub prep: String,
    pub result_limit: u64,
}

/// One exit, as journaled and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub id: String,
    pub pid: i32,
    /// CPython's rule: the exit status, or `-N` when killed by signal `N`.
    pub exitcode: i32,
    pub at_unix_ms: i64,
    /// A function target's result as its child wrote it (JSON): absent when
    /// nothing was written (the function did not return) or for a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// A managed process that is still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRecord {
    pub id: String,
    pub pid: i32,
}

/// First message on every connection: what the launcher is responsible for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub running: Vec<RunningRecord>,
    /// Exits not yet acknowledged, oldest first. Those that would make the
    /// frame too large follow the Hello as [`FromLauncher::Exited`].
    pub exited: Vec<ExitRecord>,
    /// Records of the exit journal that failed their checksum (see
    /// `journal`): their exits are not in `exited`, and the node cannot
    /// vouch for them until an operator has looked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal_damage: Vec<JournalDamage>,
}

/// One damaged record of the exit journal: never believed, always reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalDamage {
    /// The damaged journal, kept byte for byte (remove it to clear the
    /// report once it has been dealt with).
    pub preserved: PathBuf,
    /// 1-based line and byte offset of the record in that file.
    pub line: u64,
    pub offset: u64,
    /// What is wrong with it (e.g. the checksum mismatch).
    pub reason: String,
    /// The process id the record seems to name: a hint for the operator,
    /// not trusted (the record is damaged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_id: Option<String>,
}

impl std::fmt::Display for JournalDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "damaged exit record at line {} (byte {}) of {}: {}",
            self.line,
            self.offset,
            self.preserved.display(),
            self.reason
        )?;
        if let Some(id) = &self.suspect_id {
            write!(
                f,
                "; it seems to name process {id}, whose exit code is therefore unknown"
            )?;
        }
        Ok(())
    }
}

/// A successful launch (or the existing process for an id already launched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub id: String,
    pub pid: i32,
    pub at_unix_ms: i64,
}

/// Agent → launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToLauncher {
    Launch(Box<LaunchSpec>),
    /// `tree`: signal the process group instead of the process alone.
    Signal {
        id: String,
        signo: i32,
        tree: bool,
    },
    /// The exit of `id` is safely stored elsewhere; forget it.
    Ack {
        id: String,
    },
}

/// Launcher → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromLauncher {
    Hello(Hello),
    Launched(Launched),
    LaunchFailed {
        id: String,
        error: String,
    },
    Signaled {
        id: String,
        delivered: bool,
    },
    Exited(ExitRecord),
    /// A process forked by a managed process on this node was adopted (the
    /// fork start method); it is tracked like a launched one from now on.
    Adopted(Launched),
}

/// Serializes `msg` into one complete frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, msg).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    // len <= MAX_FRAME < u32::MAX, so the cast is lossless.
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Checks a received length prefix against [`MAX_FRAME`].
pub fn check_len(prefix: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(n) if n <= MAX_FRAME => Ok(n),
        _ => Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME,
        }),
    }
}

/// Parses one frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Incremental decoder for a non-blocking byte stream.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Removes and decodes the next complete frame, if any. An oversized
    /// length is reported as soon as the prefix has arrived, before any body
    /// is buffered.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = check_len(*prefix)?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wire_shape() {
        let msg = ToLauncher::Ack { id: "p1".into() };
        let frame = encode(&msg).unwrap();
        assert_eq!(&frame[4..], br#"{"ack":{"id":"p1"}}"#);
        let mut fb = FrameBuffer::default();
        fb.push(&frame[..3]);
        assert_eq!(fb.next_frame::<ToLauncher>().unwrap(), None);
        fb.push(&frame[3..]);
        assert_eq!(fb.next_frame::<ToLauncher>().unwrap(), Some(msg));
        assert_eq!(fb.next_frame::<ToLauncher>().unwrap(), None);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut fb = FrameBuffer::default();
        fb.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            fb.next_frame::<ToLauncher>(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let mut fb = FrameBuffer::default();
        fb.push(&3u32.to_be_bytes());
        fb.push(b"{x}");
        assert!(matches!(
            fb.next_frame::<ToLauncher>(),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
