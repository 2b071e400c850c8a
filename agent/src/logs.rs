//! Serving a process's output files to the coordinator.
//!
//! Without follow, the files are sent as they are. With follow, the reader
//! sends what is there, then waits for the files to change (inotify) or the
//! process to exit; once it has exited, a last read drains the files (the
//! launcher copies everything a process wrote before reporting its exit) and
//! the stream ends.
//!
//! Changes are seen through the agent's one [`OutputWatcher`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mpctl_proto::v1::{agent_message::Msg, LogData, LogStream};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::output_watch::{OutputWatcher, Subscription};
use crate::state::NodeState;

const CHUNK: usize = 64 * 1024;

/// Where a process's output lives on this node.
pub fn output_paths(procs_dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    let dir = procs_dir.join(id);
    (dir.join("stdout"), dir.join("stderr"))
}

/// What a follower watches: its process's directory, or, until that
/// exists, the node's output directory (for the directory's creation).
enum Watching {
    Own(Subscription),
    Parent(Subscription),
}

struct Source {
    stream: LogStream,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Where to start reading once the file exists.
    offset: u64,
}

impl Source {
    /// Sends everything new in the file.
    async fn drain(&mut self, state: &NodeState, request_id: u64) -> std::io::Result<()> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut f) => {
                    // Past the end (a reader that counted more than there
                    // is) reads nothing until the file grows there.
                    f.seek(std::io::SeekFrom::Start(self.offset)).await?;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            state.send(Msg::LogData(LogData {
                request_id,
                stream: self.stream as i32,
                data: buf[..n].to_vec(),
                eof: false,
                error: String::new(),
            }));
        }
    }
}

/// What a coordinator asked to read: which output of which process, from
/// which byte of each file, and whether to follow it.
pub struct Request {
    pub id: String,
    pub request_id: u64,
    pub which: LogStream,
    pub follow: bool,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
}

/// Streams the output asked for as `LogData` for its `request_id` until done.
pub async fn serve(
    state: Arc<NodeState>,
    watcher: Arc<OutputWatcher>,
    procs_dir: PathBuf,
    r: Request,
) {
    let (id, request_id, which) = (r.id.clone(), r.request_id, r.which);
    let result = serve_inner(&state, &watcher, &procs_dir, &r).await;
    state.send(Msg::LogData(LogData {
        request_id,
        stream: which as i32,
        data: Vec::new(),
        eof: true,
        error: match result {
            Ok(()) => String::new(),
            Err(e) => format!("reading the output of {id}: {e}"),
        },
    }));
}

async fn serve_inner(
    state: &NodeState,
    watcher: &Arc<OutputWatcher>,
    procs_dir: &Path,
    r: &Request,
) -> std::io::Result<()> {
    let (id, request_id, which, follow) = (r.id.as_str(), r.request_id, r.which, r.follow);
    let (stdout, stderr) = output_paths(procs_dir, id);
    let both = matches!(which, LogStream::Both | LogStream::Unspecified);
    let mut sources: Vec<Source> = [
        (LogStream::Stdout, stdout, r.stdout_offset),
        (LogStream::Stderr, stderr, r.stderr_offset),
    ]
    .into_iter()
    .filter(|(stream, _, _)| both || *stream == which)
    .map(|(stream, path, offset)| Source {
        stream,
        path,
        file: None,
        offset,
    })
    .collect();
    if !follow {
        for s in &mut sources {
            s.drain(state, request_id).await?;
        }
        return Ok(());
    }
    let mut exits = state.exit_events();
    let dir = procs_dir.join(id);
    let mut subscription: Option<Watching> = None;
    loop {
        exits.borrow_and_update();
        let live = state.is_live(id);
        for s in &mut sources {
            s.drain(state, request_id).await?;
        }
        if !live {
            return Ok(());
        }
        // The launcher creates the process's directory with its first
        // output. Until it exists, watch the node's output directory for it
        // (creating it here would cost an inode for a process that may never
        // write). Output written before a watch existed is read on the next
        // round, hence `continue` after each new watch.
        let watching = match subscription.take() {
            Some(Watching::Own(sub)) => Watching::Own(sub),
            parent => match watcher.subscribe(&dir) {
                Ok(sub) => {
                    subscription = Some(Watching::Own(sub));
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match parent {
                    Some(parent) => parent,
                    None => {
                        subscription = Some(Watching::Parent(watcher.subscribe(procs_dir)?));
                        continue;
                    }
                },
                Err(e) => return Err(e),
            },
        };
        let (Watching::Own(sub) | Watching::Parent(sub)) = &watching;
        tokio::select! {
            _ = sub.changed.notified() => {}
            changed = exits.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
        subscription = Some(watching);
    }
}
