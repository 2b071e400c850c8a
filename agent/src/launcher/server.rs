//! The launcher process: one thread, one `poll` loop over the listening
//! socket, the current agent connection, a signalfd and every child's
//! output pipes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;

use super::adopt::{self, Adoption, Incoming};
use super::children::{self, exitcode};
use super::conn::Conn;
use super::error::LauncherError;
use super::forkservers::{self, Forkservers, PendingStart};
use super::journal::Journal;
use super::output::{OutPipe, PipeState};
use super::protocol::{
    ExitRecord, FromLauncher, Hello, LaunchSpec, Launched, RunningRecord, ToLauncher, MAX_FRAME,
};
use super::setup::{self, SOCKET_FILE};
use super::{log, sys};
use mpctl_proto::bootstrap::{FromAdopt, FromForkserver};

/// How long a freshly started launcher waits for its first agent before it
/// exits for lack of anything to do.
const FIRST_CONNECTION_GRACE: Duration = Duration::from_secs(30);
/// Bytes read from one pipe per wake-up, for fairness between children.
const PUMP_SLICE: usize = 256 * 1024;
/// Bytes drained from a dead child's pipes before its exit is reported: far
/// more than a pipe buffer holds, so everything the child wrote is in.
const FINAL_DRAIN: usize = 16 << 20;

/// Runs the launcher serving `dir` until it is idle: no agent connection,
/// no running child, no open output pipe. Returns at once (after printing
/// "ready") when another launcher already serves `dir`.
pub fn run(dir: &Path) -> Result<(), LauncherError> {
    serve_dir(dir, false)
}

/// [`run`] for a launcher that is its container's main process (started on
/// its own, not by the agent): it does not exit when idle, only on SIGTERM
/// or SIGINT with no managed process running.
pub fn run_persistent(dir: &Path) -> Result<(), LauncherError> {
    serve_dir(dir, true)
}

fn serve_dir(dir: &Path, persistent: bool) -> Result<(), LauncherError> {
    let Some(_lock) = setup::lock_dir(dir)? else {
        return setup::announce_ready();
    };
    let sigfd = setup::signals()?;
    let (journal, skipped) = Journal::open(dir)?;
    let listener = setup::listen(dir)?;
    let adoption = Adoption::listen(dir)?;
    setup::ready_and_detach(dir)?;
    log(format_args!(
        "launcher {} serving {}",
        std::process::id(),
        dir.display()
    ));
    for line in skipped {
        log(format_args!("journal: {line}"));
    }
    let mut server = Server {
        socket_path: dir.join(SOCKET_FILE),
        listener,
        sigfd,
        journal,
        conn: None,
        seen_agent: false,
        started: Instant::now(),
        running: BTreeMap::new(),
        by_pid: HashMap::new(),
        pipes: HashMap::new(),
        results: HashMap::new(),
        next_pipe: 0,
        forkservers: Forkservers::default(),
        adoption,
        stop: false,
        persistent,
    };
    let result = server.serve();
    if let Err(e) = fs::remove_file(&server.socket_path) {
        log(format_args!("removing socket: {e}"));
    }
    log(format_args!("launcher {} exiting", std::process::id()));
    result
}

/// A managed process that has not been reaped yet.
#[derive(Debug)]
struct Running {
    pid: i32,
    pidfd: Option<OwnedFd>,
    started_ms: i64,
    pipes: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Listener,
    Signals,
    Conn,
    Pipe(u64),
    Forkserver(u64),
    AdoptListener,
    Adopt(u64),
}

struct Server {
    socket_path: PathBuf,
    listener: UnixListener,
    sigfd: SignalFd,
    journal: Journal,
    conn: Option<Conn>,
    seen_agent: bool,
    started: Instant,
    running: BTreeMap<String, Running>,
    by_pid: HashMap<i32, String>,
    /// Output pipes of running and exited children, until EOF.
    pipes: HashMap<u64, OutPipe>,
    /// Results whose pipe ended before their process did, by pipe key.
    results: HashMap<u64, Vec<u8>>,
    next_pipe: u64,
    forkservers: Forkservers,
    adoption: Adoption,
    stop: bool,
    /// Never idle: see [`run_persistent`].
    persistent: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Server {
    fn serve(&mut self) -> Result<(), LauncherError> {
        while !self.stop && !self.idle() {
            let mut ready = self.wait()?;
            // Output before exits (so files are complete when an exit is
            // reported), and the current connection before a new one (so
            // nothing the old agent sent is lost when it is replaced).
            ready.sort_by_key(|(token, _)| match token {
                Token::Pipe(_) => 0,
                Token::Forkserver(_) | Token::Adopt(_) => 1,
                Token::Signals => 2,
                Token::Conn => 3,
                Token::Listener | Token::AdoptListener => 4,
            });
            for (token, revents) in ready {
                match token {
                    Token::Pipe(key) => self.pump(key, PUMP_SLICE),
                    Token::Forkserver(t) => self.on_forkserver(t),
                    Token::AdoptListener => self.adoption.accept_all(),
                    Token::Adopt(k) => self.on_adopt(k),
                    Token::Signals => self.on_signals(),
                    Token::Conn => self.on_conn(revents),
                    Token::Listener => self.accept(),
                }
            }
            self.flush_journal(false);
        }
        self.flush_journal(true);
        Ok(())
    }

    /// Nothing left to serve (and the first agent had its chance to come).
    fn idle(&self) -> bool {
        !self.persistent
            && self.conn.is_none()
            && self.running.is_empty()
            && self.pipes.is_empty()
            && (self.seen_agent || self.started.elapsed() >= FIRST_CONNECTION_GRACE)
    }

    /// Polls every descriptor; returns the ready ones.
    fn wait(&self) -> Result<Vec<(Token, PollFlags)>, LauncherError> {
        let mut tokens: Vec<Token> = Vec::new();
        let mut fds = Vec::new();
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Listener);
        fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Signals);
        if let Some(conn) = &self.conn {
            let mut ev = PollFlags::POLLIN;
            if conn.wants_write() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(conn.fd(), ev));
            tokens.push(Token::Conn);
        }
        for (key, pipe) in &self.pipes {
            fds.push(PollFd::new(pipe.fd(), PollFlags::POLLIN));
            tokens.push(Token::Pipe(*key));
        }
        for (token, (_, server)) in &self.forkservers.servers {
            fds.push(PollFd::new(server.sock.as_fd(), PollFlags::POLLIN));
            tokens.push(Token::Forkserver(*token));
        }
        fds.push(PollFd::new(
            self.adoption.listener.as_fd(),
            PollFlags::POLLIN,
        ));
        tokens.push(Token::AdoptListener);
        for (k, conn) in &self.adoption.conns {
            fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
            tokens.push(Token::Adopt(*k));
        }
        let grace = (!self.seen_agent)
            .then(|| FIRST_CONNECTION_GRACE.saturating_sub(self.started.elapsed()));
        let journal = self
            .journal
            .due()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match grace.into_iter().chain(journal).min() {
            None => PollTimeout::NONE,
            // Round up so the loop does not spin on the last millisecond.
            Some(left) => {
                PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(LauncherError::setup("poll", e)),
        }
        Ok(tokens
            .into_iter()
            .zip(fds.iter())
            .filter_map(|(t, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (t, r)))
            .collect())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conn.is_some() {
                        // Handle what the old one already sent, then drop it.
                        self.on_conn(PollFlags::POLLIN);
                        log(format_args!("new agent connection replaces the old one"));
                        self.conn = None;
                    }
                    match Conn::new(stream) {
                        Ok(conn) => {
                            self.conn = Some(conn);
                            self.seen_agent = true;
                            let (hello, rest) = self.hello();
                            self.send(&FromLauncher::Hello(hello));
                            for rec in rest {
                                self.send(&FromLauncher::Exited(rec));
                            }
                        }
                        Err(e) => log(format_args!("setting up agent connection: {e}")),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log(format_args!("accept: {e}"));
                    return;
                }
            }
        }
    }

    /// The Hello, and the exits that do not fit in its frame (results make
    /// exits large), to be sent after it.
    fn hello(&self) -> (Hello, Vec<ExitRecord>) {
        let mut exited = self.journal.all_unacked();
        let mut size = 0;
        let fit = exited
            .iter()
            .take_while(|rec| {
                size += 3 * rec.result.as_ref().map_or(0, String::len) + 256;
                size <= MAX_FRAME / 2
            })
            .count();
        let rest = exited.split_off(fit);
        let hello = Hello {
            running: self
                .running
                .iter()
                .map(|(id, r)| RunningRecord {
                    id: id.clone(),
                    pid: r.pid,
                })
                .collect(),
            exited,
        };
        (hello, rest)
    }

    /// Sends to the agent if one is connected; a failed send drops it.
    fn send(&mut self, msg: &FromLauncher) {
        if let Some(conn) = &mut self.conn {
            if let Err(e) = conn.send(msg) {
                log(format_args!("agent connection closed: {e}"));
                self.conn = None;
            }
        }
    }

    fn on_conn(&mut self, revents: PollFlags) {
        let Some(conn) = &mut self.conn else { return };
        if revents.contains(PollFlags::POLLOUT) {
            if let Err(e) = conn.flush() {
                log(format_args!("agent connection closed: {e}"));
                self.conn = None;
                return;
            }
        }
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let incoming = conn.read();
        for msg in incoming.messages {
            self.handle(msg);
        }
        if let Some(reason) = incoming.closed {
            log(format_args!("agent connection closed: {reason}"));
            self.conn = None;
        }
    }

    fn handle(&mut self, msg: ToLauncher) {
        match msg {
            ToLauncher::Launch(spec) => self.launch(*spec),
            ToLauncher::Signal { id, signo, tree } => {
                let delivered = self.signal(&id, signo, tree);
                self.send(&FromLauncher::Signaled { id, delivered });
            }
            ToLauncher::Ack { id } => {
                if let Err(e) = self.journal.ack(&id) {
                    log(format_args!("acknowledging {id}: {e}"));
                }
            }
        }
    }

    fn launch(&mut self, spec: LaunchSpec) {
        if let Some(r) = self.running.get(&spec.id) {
            let reply = Launched {
                id: spec.id,
                pid: r.pid,
                at_unix_ms: r.started_ms,
            };
            self.send(&FromLauncher::Launched(reply));
            return;
        }
        if let Some(rec) = self.journal.unacked(&spec.id).cloned() {
            let reply = Launched {
                id: spec.id,
                pid: rec.pid,
                at_unix_ms: rec.at_unix_ms,
            };
            self.send(&FromLauncher::Launched(reply));
            self.send(&FromLauncher::Exited(rec));
            return;
        }
        if let Some(preload) = spec.forkserver.clone() {
            if let Err(error) = self.launch_forkserver(&spec, preload) {
                log(format_args!("launch {} failed: {error}", spec.id));
                self.send(&FromLauncher::LaunchFailed { id: spec.id, error });
            }
            return;
        }
        let spawned = match children::spawn(&spec) {
            Ok(s) => s,
            Err(error) => {
                log(format_args!("launch {} failed: {error}", spec.id));
                self.send(&FromLauncher::LaunchFailed { id: spec.id, error });
                return;
            }
        };
        let started_ms = now_ms();
        let pid = spawned.pid;
        let mut pipes = vec![self.add_pipe(spawned.stdout), self.add_pipe(spawned.stderr)];
        if let Some(result) = spawned.result {
            pipes.push(self.add_pipe(result));
        }
        self.running.insert(
            spec.id.clone(),
            Running {
                pid,
                pidfd: spawned.pidfd,
                started_ms,
                pipes,
            },
        );
        self.by_pid.insert(pid, spec.id.clone());
        // Reported before it is logged: the start is on the caller's path.
        self.send(&FromLauncher::Launched(Launched {
            id: spec.id.clone(),
            pid,
            at_unix_ms: started_ms,
        }));
        log(format_args!("launched {} as pid {pid}", spec.id));
    }

    /// Sends the start to the forkserver for (program, preload), starting
    /// that server first if there is none; the answer comes on its socket.
    fn launch_forkserver(&mut self, spec: &LaunchSpec, preload: Vec<String>) -> Result<(), String> {
        let program = spec.argv.first().cloned().ok_or("empty argv")?;
        let (fds, pipes) = children::forkserver_child(spec)?;
        let key = (program, preload);
        let token = match self.forkservers.find(&key) {
            Some(t) => t,
            None => {
                let dir = self
                    .socket_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_owned();
                let token = self.forkservers.start(key, spec, &dir)?;
                let (k, s) = &self.forkservers.servers[&token];
                log(format_args!(
                    "forkserver {} for {:?} preload {:?} started",
                    s.pid, k.0, k.1
                ));
                token
            }
        };
        let (_, server) = self
            .forkservers
            .servers
            .get_mut(&token)
            .expect("found or started");
        forkservers::send_start(server, spec, &fds)
            .map_err(|e| format!("sending the start to the forkserver: {e}"))?;
        server
            .pending
            .insert(spec.id.clone(), PendingStart { pipes });
        Ok(())
    }

    fn on_forkserver(&mut self, token: u64) {
        let Some((_, server)) = self.forkservers.servers.get(&token) else {
            return;
        };
        match forkservers::receive(server) {
            Ok(messages) => {
                for m in messages {
                    self.forkserver_says(token, m);
                }
            }
            Err(reason) => self.forkserver_gone(token, &reason),
        }
    }

    fn forkserver_says(&mut self, token: u64, msg: FromForkserver) {
        match msg {
            FromForkserver::Ready { pid } => log(format_args!("forkserver {pid} ready")),
            FromForkserver::PreloadFailed { error } => self.forkserver_gone(token, &error),
            FromForkserver::Started { id, pid } => {
                let Some(pending) = self
                    .forkservers
                    .servers
                    .get_mut(&token)
                    .and_then(|(_, s)| s.pending.remove(&id))
                else {
                    return;
                };
                let started_ms = now_ms();
                let pidfd = sys::pidfd_open(pid).ok();
                let pipes = pending
                    .pipes
                    .into_iter()
                    .map(|p| self.add_pipe(p))
                    .collect();
                self.running.insert(
                    id.clone(),
                    Running {
                        pid,
                        pidfd,
                        started_ms,
                        pipes,
                    },
                );
                self.by_pid.insert(pid, id.clone());
                self.send(&FromLauncher::Launched(Launched {
                    id: id.clone(),
                    pid,
                    at_unix_ms: started_ms,
                }));
                log(format_args!("forked {id} as pid {pid}"));
            }
            FromForkserver::StartFailed { id, error } => {
                if let Some((_, s)) = self.forkservers.servers.get_mut(&token) {
                    s.pending.remove(&id);
                }
                self.send(&FromLauncher::LaunchFailed { id, error });
            }
            FromForkserver::Exited { pid, exitcode } => self.child_exited(pid, exitcode),
        }
    }

    /// A server stopped: the starts it had not answered fail; its running
    /// children are ours now (subreaper) and are reaped like any child.
    fn forkserver_gone(&mut self, token: u64, reason: &str) {
        let Some(((program, _), server)) = self.forkservers.servers.remove(&token) else {
            return;
        };
        log(format_args!(
            "forkserver {} for {program:?} gone: {reason}",
            server.pid
        ));
        for id in server.pending.into_keys() {
            let error = format!(
                "the forkserver for {program} stopped ({reason}); its log is {}",
                server.log_path.display()
            );
            self.send(&FromLauncher::LaunchFailed { id, error });
        }
    }

    fn on_adopt(&mut self, k: u64) {
        let Some(conn) = self.adoption.conns.get(&k) else {
            return;
        };
        let Some(messages) = adopt::receive(conn) else {
            self.adoption.conns.remove(&k);
            return;
        };
        for m in messages {
            match m {
                Incoming::Adopt { id, pid, fds } => {
                    let answer = match self.adopt(&id, pid, fds) {
                        Ok(()) => FromAdopt::Adopted,
                        Err(error) => {
                            log(format_args!("adopting {id} (pid {pid}) refused: {error}"));
                            FromAdopt::Refused { error }
                        }
                    };
                    if let Some(conn) = self.adoption.conns.get(&k) {
                        adopt::reply(conn, &answer);
                    }
                }
                Incoming::Exited { pid, exitcode } => self.child_exited(pid, exitcode),
            }
        }
    }

    /// Tracks a child forked by a managed process: its pidfd for signals,
    /// its result pipe like any other, its exit from its parent's report or
    /// from our own reaping once it is an orphan.
    fn adopt(&mut self, id: &str, pid: i32, fds: Vec<OwnedFd>) -> Result<(), String> {
        let [pidfd, result]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| "an adoption carries exactly a pidfd and a result pipe".to_owned())?;
        if self.running.contains_key(id) || self.by_pid.contains_key(&pid) {
            return Err(format!("{id} (pid {pid}) is already tracked"));
        }
        let limit = mpctl_proto::bootstrap::MAX_RESULT as u64 + 1;
        let pipe = OutPipe::in_memory(result, &children::result_name(id), limit)
            .map_err(|e| e.to_string())?;
        let started_ms = now_ms();
        let pipes = vec![self.add_pipe(pipe)];
        self.running.insert(
            id.to_owned(),
            Running {
                pid,
                pidfd: Some(pidfd),
                started_ms,
                pipes,
            },
        );
        self.by_pid.insert(pid, id.to_owned());
        log(format_args!("adopted {id} as pid {pid}"));
        self.send(&FromLauncher::Adopted(Launched {
            id: id.to_owned(),
            pid,
            at_unix_ms: started_ms,
        }));
        Ok(())
    }

    fn add_pipe(&mut self, pipe: OutPipe) -> u64 {
        self.next_pipe += 1;
        self.pipes.insert(self.next_pipe, pipe);
        self.next_pipe
    }

    /// Delivers `signo` to a running process (or its group); false when the
    /// id is unknown or already exited, or the kernel refused.
    fn signal(&mut self, id: &str, signo: i32, tree: bool) -> bool {
        let Some(r) = self.running.get(id) else {
            return false;
        };
        // An unreaped child keeps its pid and group id, so neither can have
        // been recycled: killpg and kill are as safe as the pidfd here.
        let result = match (&r.pidfd, tree) {
            (_, true) => sys::killpg(r.pid, signo),
            (Some(fd), false) => sys::pidfd_send_signal(fd.as_fd(), signo),
            (None, false) => sys::kill(r.pid, signo),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                log(format_args!("signal {signo} to {id} (pid {}): {e}", r.pid));
                false
            }
        }
    }

    fn pump(&mut self, key: u64, max: usize) {
        if let Some(pipe) = self.pipes.get_mut(&key) {
            if pipe.pump(max) == PipeState::Eof {
                if let Some(result) = pipe.take_memory() {
                    self.results.insert(key, result);
                }
                self.pipes.remove(&key);
            }
        }
    }

    /// The result among `pipes` (a function target has one): what its pipe
    /// held when it ended, or holds now (later bytes are dropped); `None`
    /// when nothing was written.
    fn take_result(&mut self, pipes: &[u64]) -> Option<String> {
        let bytes = pipes
            .iter()
            .find_map(|key| {
                self.results
                    .remove(key)
                    .or_else(|| self.pipes.get_mut(key).and_then(OutPipe::take_memory))
            })
            .filter(|bytes| !bytes.is_empty())?;
        // A result is JSON, so UTF-8; anything else is kept recognisable
        // (and fails to decode at the caller, as it would have anyway).
        Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    fn on_signals(&mut self) {
        let mut reap = false;
        loop {
            match self.sigfd.read_signal() {
                Ok(Some(info)) => match i32::try_from(info.ssi_signo).unwrap_or(0) {
                    libc::SIGCHLD => reap = true,
                    libc::SIGHUP => log(format_args!("SIGHUP ignored")),
                    signo => {
                        if self.running.is_empty() {
                            log(format_args!("signal {signo}: idle, exiting"));
                            self.stop = true;
                        } else {
                            log(format_args!(
                                "signal {signo} ignored: {} managed processes still running",
                                self.running.len()
                            ));
                        }
                    }
                },
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log(format_args!("reading signalfd: {e}"));
                    reap = true;
                    break;
                }
            }
        }
        if reap {
            self.reap();
        }
    }

    /// Reaps every terminated child; records and reports managed ones.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match sys::wait_any_nohang() {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    log(format_args!("waitpid: {e}"));
                    return;
                }
            };
            let Some(code) = exitcode(status) else {
                continue;
            };
            if let Some(token) = self
                .forkservers
                .servers
                .iter()
                .find(|(_, (_, s))| s.pid == pid)
                .map(|(t, _)| *t)
            {
                self.forkserver_gone(token, &format!("exited with {code}"));
                continue;
            }
            self.child_exited(pid, code);
        }
    }

    /// A managed process ended (reaped here, or reported by its forkserver).
    fn child_exited(&mut self, pid: i32, code: i32) {
        let Some(id) = self.by_pid.remove(&pid) else {
            log(format_args!("reaped orphan pid {pid} (exitcode {code})"));
            return;
        };
        let Some(r) = self.running.remove(&id) else {
            return;
        };
        // Everything the child wrote before exiting goes in its files
        // before its exit is reported; pipes still held open by
        // descendants keep being drained afterwards.
        for &key in &r.pipes {
            self.pump(key, FINAL_DRAIN);
        }
        let result = self.take_result(&r.pipes);
        self.exited(ExitRecord {
            id,
            pid,
            exitcode: code,
            at_unix_ms: now_ms(),
            result,
        });
    }

    fn exited(&mut self, rec: ExitRecord) {
        // Reported first: the journal writes it within SYNC_DELAY, off the
        // notification path, and before its acknowledgement is applied.
        self.send(&FromLauncher::Exited(rec.clone()));
        self.journal.record_exit(&rec);
        log(format_args!(
            "{} (pid {}) exited with {}",
            rec.id, rec.pid, rec.exitcode
        ));
    }

    /// Writes the journal's buffered lines once they are due (and when the
    /// launcher stops).
    fn flush_journal(&mut self, force: bool) {
        let Some(due) = self.journal.due() else {
            return;
        };
        if force || due <= Instant::now() {
            if let Err(e) = self.journal.flush() {
                // The agent and the coordinator hold the exits; say so loudly.
                log(format_args!("JOURNAL WRITE FAILED: {e}; retrying"));
            }
        }
    }
}
