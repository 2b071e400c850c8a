//! The agent's side of the launcher socket (tokio).
//!
//! [`LauncherClient::connect_or_start`] connects to `DIR/launcher.sock`,
//! starting a detached launcher first when nobody listens. The handle is
//! cheap to clone and usable from many tasks: requests go out through one
//! writer task, replies are matched to callers by id (the launcher answers
//! requests in order), and exits arrive on an event channel. When the
//! connection drops, pending calls fail and [`LauncherEvent::Disconnected`]
//! is sent. Dropping every handle closes the connection.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout_at, Instant};

use mpctl_launcher::protocol::{
    check_len, decode, encode, ExitRecord, FromLauncher, Hello, LaunchSpec, Launched, ToLauncher,
};
use mpctl_launcher::{LaunchError, LauncherError, SOCKET_FILE};

/// Deadline for reaching a launcher, starting one included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Something the launcher reports without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LauncherEvent {
    /// A managed process exited (journaled by the launcher; ack it once it is
    /// stored elsewhere).
    Exited(ExitRecord),
    /// A forked child was adopted (the fork start method).
    Adopted(Launched),
    /// The connection is gone (the reason); reconnect to get the Hello again.
    Disconnected(String),
}

type LaunchReply = oneshot::Sender<Result<Launched, LaunchError>>;
type SignalReply = oneshot::Sender<Result<bool, LauncherError>>;

#[derive(Default)]
struct Pending {
    /// Set once the connection is gone; new calls fail with it.
    closed: Option<String>,
    launches: HashMap<String, VecDeque<LaunchReply>>,
    signals: HashMap<String, VecDeque<SignalReply>>,
}

struct Shared {
    pending: Mutex<Pending>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails every pending call and refuses new ones.
    fn close(&self, reason: &str) {
        let mut p = self.lock();
        if p.closed.is_none() {
            p.closed = Some(reason.to_owned());
        }
        let err = || LauncherError::Disconnected {
            reason: reason.to_owned(),
        };
        for (_, q) in p.launches.drain() {
            for tx in q {
                let _ = tx.send(Err(err().into()));
            }
        }
        for (_, q) in p.signals.drain() {
            for tx in q {
                let _ = tx.send(Err(err()));
            }
        }
    }
}

/// What the writer task takes, in order.
enum Outgoing {
    Frame(Vec<u8>),
    /// Answered once every frame queued before it is written.
    Flushed(oneshot::Sender<()>),
}

struct Inner {
    frames: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
}

/// A handle to the launcher connection; clone it freely.
#[derive(Clone)]
pub struct LauncherClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LauncherClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherClient").finish_non_exhaustive()
    }
}

impl LauncherClient {
    /// Connects to `DIR/launcher.sock`; if nobody listens, starts
    /// `launcher_cmd` (program and leading arguments; `--dir DIR` is
    /// appended) detached in its own session, waits for its "ready" line,
    /// then connects. Returns the launcher's Hello (running processes and
    /// unacknowledged exits) and the receiver of later events.
    pub async fn connect_or_start(
        dir: &Path,
        launcher_cmd: &[OsString],
    ) -> Result<
        (
            LauncherClient,
            Hello,
            mpsc::UnboundedReceiver<LauncherEvent>,
        ),
        LauncherError,
    > {
        let sock = dir.join(SOCKET_FILE);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        let mut started = false;
        let mut last: String;
        loop {
            match UnixStream::connect(&sock).await {
                Ok(mut stream) => match timeout_at(deadline, read_frame(&mut stream)).await {
                    Ok(Ok(FromLauncher::Hello(hello))) => {
                        let (client, events) = LauncherClient::spawn_tasks(stream);
                        return Ok((client, hello, events));
                    }
                    Ok(Ok(other)) => {
                        return Err(LauncherError::Connect {
                            path: sock,
                            reason: format!("expected Hello, got {other:?}"),
                        })
                    }
                    // A launcher that was exiting as we connected: retry.
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no Hello from the launcher".to_owned(),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    last = e.to_string();
                    start_launcher(dir, launcher_cmd, deadline).await?;
                    // It said "ready" once its socket listened: connect at
                    // once. Only the first time, so that a launcher that
                    // exits as soon as it is ready cannot make this spin.
                    if !started {
                        started = true;
                        continue;
                    }
                }
                Err(e) => {
                    return Err(LauncherError::Connect {
                        path: sock,
                        reason: e.to_string(),
                    })
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(LauncherError::Connect {
                    path: sock,
                    reason: format!("gave up after {CONNECT_TIMEOUT:?}: {last}"),
                });
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn spawn_tasks(stream: UnixStream) -> (LauncherClient, mpsc::UnboundedReceiver<LauncherEvent>) {
        let (mut rd, mut wr) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
        });
        let (frames, mut frames_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (events, events_rx) = mpsc::unbounded_channel();

        let writer_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Ends when every handle is dropped; dropping `wr` then shuts the
            // write side down and the launcher sees the agent leave.
            while let Some(out) = frames_rx.recv().await {
                let frame = match out {
                    Outgoing::Frame(frame) => frame,
                    Outgoing::Flushed(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                if let Err(e) = wr.write_all(&frame).await {
                    writer_shared.close(&format!("write to launcher: {e}"));
                    return;
                }
            }
        });

        let reader_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let reason = loop {
                match read_frame(&mut rd).await {
                    Ok(msg) => dispatch(&reader_shared, &events, msg),
                    Err(e) => break e.to_string(),
                }
            };
            reader_shared.close(&reason);
            let _ = events.send(LauncherEvent::Disconnected(reason));
        });

        let client = LauncherClient {
            inner: Arc::new(Inner { frames, shared }),
        };
        (client, events_rx)
    }

    /// Starts a process; resolves on the launcher's answer. Launching an id
    /// that is already running returns the existing process.
    pub async fn launch(&self, spec: LaunchSpec) -> Result<Launched, LaunchError> {
        let id = spec.id.clone();
        let frame = encode(&ToLauncher::Launch(Box::new(spec))).map_err(LauncherError::from)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.shared.lock();
            self.send_locked(&p, frame)?;
            p.launches.entry(id).or_default().push_back(tx);
        }
        rx.await.unwrap_or_else(|_| Err(self.gone().into()))
    }

    /// Sends signal `signo` to process `id` (its whole process group when
    /// `tree`). `Ok(false)` when the id is unknown or already exited.
    pub async fn signal(&self, id: &str, signo: i32, tree: bool) -> Result<bool, LauncherError> {
        let frame = encode(&ToLauncher::Signal {
            id: id.to_owned(),
            signo,
            tree,
        })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.shared.lock();
            self.send_locked(&p, frame)?;
            p.signals.entry(id.to_owned()).or_default().push_back(tx);
        }
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Tells the launcher the exit of `id` is stored elsewhere, so it may
    /// forget it.
    pub async fn ack(&self, id: &str) -> Result<(), LauncherError> {
        let frame = encode(&ToLauncher::Ack { id: id.to_owned() })?;
        let p = self.inner.shared.lock();
        self.send_locked(&p, frame)
    }

    /// Queues a frame; called with the pending lock held so that the order
    /// of registrations matches the order of requests on the wire.
    /// (Must not lock again.)
    fn send_locked(&self, p: &Pending, frame: Vec<u8>) -> Result<(), LauncherError> {
        if let Some(reason) = &p.closed {
            return Err(LauncherError::Disconnected {
                reason: reason.clone(),
            });
        }
        self.inner
            .frames
            .send(Outgoing::Frame(frame))
            .map_err(|_| LauncherError::Disconnected {
                reason: "launcher connection writer stopped".to_owned(),
            })
    }

    /// Why the connection is gone, or `None` while it is up (for readiness).
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.shared.lock().closed.clone()
    }

    /// Resolves once every frame queued so far is written to the launcher
    /// (or the connection is gone): for a clean stop, so that acks sent
    /// just before it reach the launcher.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.frames.send(Outgoing::Flushed(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn gone(&self) -> LauncherError {
        let reason = self.inner.shared.lock().closed.clone();
        LauncherError::Disconnected {
            reason: reason.unwrap_or_else(|| "connection closed".to_owned()),
        }
    }
}

/// Routes one message from the launcher to its waiting caller or to events.
fn dispatch(shared: &Shared, events: &mpsc::UnboundedSender<LauncherEvent>, msg: FromLauncher) {
    let mut p = shared.lock();
    match msg {
        FromLauncher::Launched(l) => match pop(&mut p.launches, &l.id) {
            Some(tx) => drop(tx.send(Ok(l))),
            None => tracing::warn!(id = %l.id, "unexpected Launched from launcher"),
        },
        FromLauncher::LaunchFailed { id, error } => match pop(&mut p.launches, &id) {
            Some(tx) => drop(tx.send(Err(LaunchError::Failed { id, error }))),
            None => tracing::warn!(%id, "unexpected LaunchFailed from launcher"),
        },
        FromLauncher::Signaled { id, delivered } => match pop(&mut p.signals, &id) {
            Some(tx) => drop(tx.send(Ok(delivered))),
            None => tracing::warn!(%id, "unexpected Signaled from launcher"),
        },
        FromLauncher::Exited(rec) => drop(events.send(LauncherEvent::Exited(rec))),
        FromLauncher::Adopted(l) => drop(events.send(LauncherEvent::Adopted(l))),
        FromLauncher::Hello(_) => tracing::warn!("unexpected second Hello from launcher"),
    }
}

fn pop<T>(map: &mut HashMap<String, VecDeque<T>>, id: &str) -> Option<T> {
    let q = map.get_mut(id)?;
    let first = q.pop_front();
    if q.is_empty() {
        map.remove(id);
    }
    first
}

/// Reads one frame and decodes it.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<FromLauncher, LauncherError> {
    let io_err = |e: io::Error| LauncherError::Disconnected {
        reason: if e.kind() == io::ErrorKind::UnexpectedEof {
            "launcher closed the connection".to_owned()
        } else {
            e.to_string()
        },
    };
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await.map_err(io_err)?;
    let mut body = vec![0u8; check_len(prefix)?];
    r.read_exact(&mut body).await.map_err(io_err)?;
    Ok(decode(&body)?)
}

/// Starts the launcher detached and waits for its "ready" line. The child is
/// reaped in the background when it exits.
async fn start_launcher(
    dir: &Path,
    launcher_cmd: &[OsString],
    deadline: Instant,
) -> Result<(), LauncherError> {
    let Some((program, args)) = launcher_cmd.split_first() else {
        return Err(LauncherError::Start {
            program: String::new(),
            reason: "empty launcher command".to_owned(),
        });
    };
    let start_err = |reason: String| LauncherError::Start {
        program: program.to_string_lossy().into_owned(),
        reason,
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    mpctl_node::sys::spawn::new_session(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    let mut child = cmd.spawn().map_err(|e| start_err(e.to_string()))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(start_err("no stdout pipe".to_owned()));
    };
    let mut line = String::new();
    let read = timeout_at(deadline, BufReader::new(stdout).read_line(&mut line)).await;
    let outcome = match read {
        Ok(Ok(_)) if line == "ready\n" => Ok(()),
        Ok(Ok(0)) => {
            let status = child.wait().await;
            return Err(start_err(format!(
                "exited before it was ready ({})",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            )));
        }
        Ok(Ok(_)) => Err(start_err(format!("unexpected output {line:?}"))),
        Ok(Err(e)) => Err(start_err(format!("reading its stdout: {e}"))),
        Err(_) => Err(start_err("not ready before the deadline".to_owned())),
    };
    if outcome.is_err() {
        let _ = child.start_kill();
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    outcome
}
