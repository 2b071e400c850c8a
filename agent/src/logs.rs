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
use tokio::io::AsyncReadExt;

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
}

impl Source {
    /// Sends everything new in the file.
    async fn drain(&mut self, state: &NodeState, request_id: u64) -> std::io::Result<()> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(f) => self.file = Some(f),
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

/// Streams the output of `id` as `LogData` for `request_id` until done.
pub async fn serve(
    state: Arc<NodeState>,
    watcher: Arc<OutputWatcher>,
    procs_dir: PathBuf,
    id: String,
    request_id: u64,
    which: LogStream,
    follow: bool,
) {
    let result = serve_inner(&state, &watcher, &procs_dir, &id, request_id, which, follow).await;
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
    id: &str,
    request_id: u64,
    which: LogStream,
    follow: bool,
) -> std::io::Result<()> {
    let (stdout, stderr) = output_paths(procs_dir, id);
    let both = matches!(which, LogStream::Both | LogStream::Unspecified);
    let mut sources: Vec<Source> = [(LogStream::Stdout, stdout), (LogStream::Stderr, stderr)]
        .into_iter()
        .filter(|(stream, _)| both || *stream == which)
        .map(|(stream, path)| Source {
            stream,
            path,
            file: None,
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
