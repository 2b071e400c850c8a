//! The launcher's loop: one thread, one `poll` over the descriptors of
//! every handler ([`AgentLink`], [`Children`], [`Forkservers`],
//! [`Adoption`], [`Signals`]); each ready descriptor goes to the handler
//! that owns it, and what a handler reports is routed here: launches and
//! exits to the agent and the [`Journal`], adopted and forked children to
//! [`Children`].

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mpctl_node::adoption::FromAdopt;
use mpctl_node::peer::PeerPolicy;
use mpctl_node::sys::wait;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::adoption::{self, Adoption};
use crate::agent::AgentLink;
use crate::children::Children;
use crate::error::LauncherError;
use crate::forkservers::{self, Forkservers};
use crate::journal::{self, Journal};
use crate::log;
use crate::protocol::{
    ExitRecord, FromLauncher, Hello, JournalDamage, LaunchSpec, ToLauncher, MAX_FRAME,
};
use crate::setup::{self, SOCKET_FILE};
use crate::signals::Signals;

/// Which handler a ready descriptor belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Token {
    AgentListener,
    Agent,
    Signals,
    Pipe(u64),
    Forkserver(u64),
    AdoptListener,
    Adopt(u64),
}

impl Token {
    /// Output before exits (so files are complete when an exit is
    /// reported), and the current connection before a new one (so nothing
    /// the old agent sent is lost when it is replaced).
    fn order(self) -> u8 {
        match self {
            Token::Pipe(_) => 0,
            Token::Forkserver(_) | Token::Adopt(_) => 1,
            Token::Signals => 2,
            Token::Agent => 3,
            Token::AgentListener | Token::AdoptListener => 4,
        }
    }
}

/// The descriptors to poll, each with its handler's token.
#[derive(Default)]
pub struct Interest<'a> {
    fds: Vec<PollFd<'a>>,
    tokens: Vec<Token>,
}

impl<'a> Interest<'a> {
    pub fn add(&mut self, fd: BorrowedFd<'a>, events: PollFlags, token: Token) {
        self.fds.push(PollFd::new(fd, events));
        self.tokens.push(token);
    }
}

/// How a launcher serves its directory.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Never idle: see [`run_persistent`].
    pub persistent: bool,
    /// The uids that may use `adopt.sock` (default: the launcher's own).
    /// `launcher.sock` always takes only the launcher's own uid.
    pub job_peers: PeerPolicy,
}

/// Runs the launcher serving `dir` until it is idle: no agent connection,
/// no running child, no open output pipe. Returns at once (after printing
/// "ready") when another launcher already serves `dir`.
pub fn run(dir: &Path) -> Result<(), LauncherError> {
    run_with(dir, &Options::default())
}

/// [`run`] for a launcher that is its container's main process (started on
/// its own, not by the agent): it does not exit when idle, only on SIGTERM
/// or SIGINT with no managed process running.
pub fn run_persistent(dir: &Path) -> Result<(), LauncherError> {
    run_with(
        dir,
        &Options {
            persistent: true,
            ..Options::default()
        },
    )
}

/// [`run`] with explicit [`Options`].
pub fn run_with(dir: &Path, options: &Options) -> Result<(), LauncherError> {
    let persistent = options.persistent;
    let Some(_lock) = setup::lock_dir(dir)? else {
        return setup::announce_ready();
    };
    let sigfd = setup::signals()?;
    let (journal, report) = Journal::open(dir)?;
    let listener = setup::listen(dir)?;
    let adoption = Adoption::listen(dir, options.job_peers.clone())?;
    setup::ready_and_detach(dir)?;
    log(format_args!(
        "launcher {} serving {}",
        std::process::id(),
        dir.display()
    ));
    journal::log_report(&report);
    let mut launcher = Launcher {
        dir: dir.to_owned(),
        agent: AgentLink::new(listener, PeerPolicy::own_uid()),
        signals: Signals::new(sigfd),
        children: Children::default(),
        forkservers: Forkservers::new(dir),
        adoption,
        journal,
        journal_damage: report.damaged,
        stop: false,
        persistent,
    };
    let result = launcher.serve();
    let socket = dir.join(SOCKET_FILE);
    if let Err(e) = fs::remove_file(&socket) {
        log(format_args!("removing socket: {e}"));
    }
    log(format_args!("launcher {} exiting", std::process::id()));
    result
}

struct Launcher {
    dir: PathBuf,
    agent: AgentLink,
    signals: Signals,
    children: Children,
    forkservers: Forkservers,
    adoption: Adoption,
    journal: Journal,
    /// Damaged journal records, reported in every Hello.
    journal_damage: Vec<JournalDamage>,
    stop: bool,
    /// Never idle: see [`run_persistent`].
    persistent: bool,
}

impl Launcher {
    fn serve(&mut self) -> Result<(), LauncherError> {
        while !self.stop && !self.idle() {
            let mut ready = self.wait()?;
            ready.sort_by_key(|(token, _)| token.order());
            for (token, revents) in ready {
                match token {
                    Token::Pipe(key) => self.children.on_pipe(key),
                    Token::Forkserver(t) => {
                        let events = self.forkservers.on_ready(t);
                        self.forkserver_events(events);
                    }
                    Token::AdoptListener => self.adoption.accept_all(),
                    Token::Adopt(k) => self.on_adopt(k),
                    Token::Signals => self.on_signals(),
                    Token::Agent => self.on_agent(revents),
                    Token::AgentListener => self.accept_agents(),
                }
            }
            self.flush_journal(false);
        }
        self.flush_journal(true);
        Ok(())
    }

    /// Nothing left to serve (and the first agent had its chance to come).
    fn idle(&self) -> bool {
        !self.persistent && self.agent.is_idle() && self.children.is_idle()
    }

    /// Polls every handler's descriptors; returns the ready ones.
    fn wait(&self) -> Result<Vec<(Token, PollFlags)>, LauncherError> {
        let mut set = Interest::default();
        self.agent.interest(&mut set);
        self.signals.interest(&mut set);
        self.children.interest(&mut set);
        self.forkservers.interest(&mut set);
        self.adoption.interest(&mut set);
        let journal = self
            .journal
            .due()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match self.agent.grace_left().into_iter().chain(journal).min() {
            None => PollTimeout::NONE,
            // Round up so the loop does not spin on the last millisecond.
            Some(left) => {
                PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut set.fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(LauncherError::setup("poll", e)),
        }
        Ok(set
            .tokens
            .into_iter()
            .zip(set.fds.iter())
            .filter_map(|(t, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (t, r)))
            .collect())
    }

    // ---- the agent

    fn accept_agents(&mut self) {
        while let Some(stream) = self.agent.accept() {
            if self.agent.connected() {
                // Handle what the old one already sent, then replace it.
                self.on_agent(PollFlags::POLLIN);
            }
            if self.agent.install(stream) {
                self.refresh_journal_damage();
                let (hello, rest) = self.hello();
                self.agent.send(&FromLauncher::Hello(hello));
                for rec in rest {
                    self.agent.send(&FromLauncher::Exited(rec));
                }
            }
        }
    }

    /// Damage is reported while its kept file is there: an operator who
    /// removed it clears the report for the next agent connection.
    fn refresh_journal_damage(&mut self) {
        if self.journal_damage.is_empty() {
            return;
        }
        match journal::damage_kept_in(&self.dir) {
            Ok(damage) => self.journal_damage = damage,
            Err(e) => log(format_args!("journal: listing damaged journals: {e}")),
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
            running: self.children.running(),
            exited,
            journal_damage: self.journal_damage.clone(),
        };
        (hello, rest)
    }

    fn on_agent(&mut self, revents: PollFlags) {
        let incoming = self.agent.on_ready(revents);
        for msg in incoming.messages {
            self.handle(msg);
        }
        if let Some(reason) = incoming.closed {
            self.agent.close(&reason);
        }
    }

    fn handle(&mut self, msg: ToLauncher) {
        match msg {
            ToLauncher::Launch(spec) => self.launch(*spec),
            ToLauncher::Signal { id, signo, tree } => {
                let delivered = self.children.signal(&id, signo, tree);
                self.agent.send(&FromLauncher::Signaled { id, delivered });
            }
            ToLauncher::Ack { id } => {
                if let Err(e) = self.journal.ack(&id) {
                    log(format_args!("acknowledging {id}: {e}"));
                }
            }
        }
    }

    /// Starts `spec` (idempotent per id: a running or exited-unacknowledged
    /// id answers what it is).
    fn launch(&mut self, spec: LaunchSpec) {
        if let Some(launched) = self.children.launched(&spec.id) {
            self.agent.send(&FromLauncher::Launched(launched));
            return;
        }
        if let Some(rec) = self.journal.unacked(&spec.id).cloned() {
            self.agent
                .send(&FromLauncher::Launched(crate::protocol::Launched {
                    id: spec.id,
                    pid: rec.pid,
                    at_unix_ms: rec.at_unix_ms,
                }));
            self.agent.send(&FromLauncher::Exited(rec));
            return;
        }
        if let Some(d) = self
            .journal_damage
            .iter()
            .find(|d| d.suspect_id.as_deref() == Some(spec.id.as_str()))
        {
            // It may have run and exited already: never run it twice.
            let error = format!(
                "not launched: this node may have run it already, and its exit record is damaged ({d})"
            );
            log(format_args!("launch {} refused: {error}", spec.id));
            self.agent
                .send(&FromLauncher::LaunchFailed { id: spec.id, error });
            return;
        }
        let outcome = match spec.forkserver.clone() {
            // Answered when the server reports the child.
            Some(preload) => self.forkservers.start(&spec, preload).map(|()| None),
            None => self.children.spawn(&spec).map(Some),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(launched)) => {
                // Reported before it is logged: the start is on the caller's path.
                let pid = launched.pid;
                self.agent.send(&FromLauncher::Launched(launched));
                log(format_args!("launched {} as pid {pid}", spec.id));
            }
            Err(error) => self.launch_failed(spec.id, error),
        }
    }

    fn launch_failed(&mut self, id: String, error: String) {
        log(format_args!("launch {id} failed: {error}"));
        self.agent.send(&FromLauncher::LaunchFailed { id, error });
    }

    // ---- forkservers and adoption

    fn forkserver_events(&mut self, events: Vec<forkservers::Event>) {
        for event in events {
            match event {
                forkservers::Event::Started { id, pid, pipes } => {
                    let launched = self.children.forked(&id, pid, pipes);
                    self.agent.send(&FromLauncher::Launched(launched));
                    log(format_args!("forked {id} as pid {pid}"));
                }
                forkservers::Event::StartFailed { id, error } => self.launch_failed(id, error),
                forkservers::Event::Exited { pid, exitcode } => self.child_exited(pid, exitcode),
            }
        }
    }

    fn on_adopt(&mut self, k: u64) {
        let (messages, closed) = self.adoption.on_ready(k);
        for msg in messages {
            match msg {
                adoption::Incoming::Adopt { id, pid, fds } => {
                    let answer = match self.adopt(k, &id, pid, fds) {
                        Ok(launched) => {
                            log(format_args!("adopted {id} as pid {pid}"));
                            self.adoption.adopted(k, pid);
                            self.agent.send(&FromLauncher::Adopted(launched));
                            FromAdopt::Adopted
                        }
                        Err(error) => {
                            self.adoption
                                .refuse(&format_args!("adopting {id} (pid {pid}): {error}"));
                            FromAdopt::Refused { error }
                        }
                    };
                    self.adoption.reply(k, &answer);
                }
                adoption::Incoming::Exited { pid, exitcode } => match self.adopted_exit(k, pid) {
                    Ok(()) => {
                        self.adoption.reported(k, pid);
                        self.child_exited(pid, exitcode);
                    }
                    Err(error) => self
                        .adoption
                        .refuse(&format_args!("exit {exitcode} refused: {error}")),
                },
            }
        }
        if closed {
            self.adoption.close(k);
        }
    }

    /// The checks of an adoption (docs/node-contract.md §12), then the
    /// child is tracked.
    fn adopt(
        &mut self,
        k: u64,
        id: &str,
        pid: i32,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<crate::protocol::Launched, String> {
        let parent = self.adoption.check_adopt(k, pid, &fds)?;
        if !self.children.is_managed_pid(parent) {
            return Err(format!(
                "the sender (pid {parent}) is not a managed process of this node"
            ));
        }
        self.children.adopt(id, pid, fds)
    }

    /// An exit reported on adoption connection `k` is believed only from
    /// the connection that adopted `pid`, and only once `pid` has ended.
    fn adopted_exit(&self, k: u64, pid: i32) -> Result<(), String> {
        self.adoption.owns(k, pid)?;
        match self.children.has_ended(pid) {
            Some(true) => Ok(()),
            Some(false) => Err(format!("pid {pid} is still running")),
            None => Err(format!("pid {pid} is not a running managed process")),
        }
    }

    // ---- signals, reaping, exits

    fn on_signals(&mut self) {
        let arrived = self.signals.on_ready();
        if let Some(signo) = arrived.stop {
            let running = self.children.running_count();
            if running == 0 {
                log(format_args!("signal {signo}: idle, exiting"));
                self.stop = true;
            } else {
                log(format_args!(
                    "signal {signo} ignored: {running} managed processes still running"
                ));
            }
        }
        if arrived.reap {
            self.reap();
        }
    }

    /// Reaps every terminated child; records and reports managed ones.
    fn reap(&mut self) {
        loop {
            let reaped = match wait::reap_any() {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    log(format_args!("waitpid: {e}"));
                    return;
                }
            };
            match self.forkservers.reaped(reaped.pid, reaped.exitcode) {
                Some(events) => self.forkserver_events(events),
                None => self.child_exited(reaped.pid, reaped.exitcode),
            }
        }
    }

    /// A managed process ended (reaped here, or reported by its forkserver
    /// or its forking parent).
    fn child_exited(&mut self, pid: i32, exitcode: i32) {
        let Some(rec) = self.children.exited(pid, exitcode) else {
            return;
        };
        // Reported first: the journal writes it within SYNC_DELAY, off the
        // notification path, and before its acknowledgement is applied.
        self.agent.send(&FromLauncher::Exited(rec.clone()));
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
