//! The running managed processes: their pids and pidfds, and the output and
//! result pipes of running and exited children (until each pipe's EOF).
//! Owns every [`Token::Pipe`] descriptor.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};

use mpctl_node::sys::pidfd;
use nix::poll::PollFlags;

use crate::output::{OutPipe, PipeState};
use crate::protocol::{ExitRecord, LaunchSpec, Launched, RunningRecord};
use crate::server::{Interest, Token};
use crate::spawn;
use crate::{log, now_ms};

/// Bytes read from one pipe per wake-up, for fairness between children.
const PUMP_SLICE: usize = 256 * 1024;
/// Bytes drained from a dead child's pipes before its exit is reported: far
/// more than a pipe buffer holds, so everything the child wrote is in.
const FINAL_DRAIN: usize = 16 << 20;

/// A managed process that has not been reaped yet.
#[derive(Debug)]
struct Running {
    pid: i32,
    /// `None` only if `pidfd_open` failed (then signals fall back to
    /// kill(2), still safe because the pid cannot be reused before it is
    /// reaped).
    pidfd: Option<OwnedFd>,
    started_ms: i64,
    pipes: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct Children {
    running: BTreeMap<String, Running>,
    by_pid: HashMap<i32, String>,
    /// Output pipes of running and exited children, until EOF.
    pipes: HashMap<u64, OutPipe>,
    /// Results whose pipe ended before their process did, by pipe key.
    results: HashMap<u64, Vec<u8>>,
    next_pipe: u64,
}

impl Children {
    pub fn interest<'a>(&'a self, set: &mut Interest<'a>) {
        for (key, pipe) in &self.pipes {
            set.add(pipe.fd(), PollFlags::POLLIN, Token::Pipe(*key));
        }
    }

    /// No running child and no open pipe.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.pipes.is_empty()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    pub fn running(&self) -> Vec<RunningRecord> {
        self.running
            .iter()
            .map(|(id, r)| RunningRecord {
                id: id.clone(),
                pid: r.pid,
            })
            .collect()
    }

    /// The running process `id`, as its launch reported it.
    pub fn launched(&self, id: &str) -> Option<Launched> {
        self.running.get(id).map(|r| Launched {
            id: id.to_owned(),
            pid: r.pid,
            at_unix_ms: r.started_ms,
        })
    }

    /// Whether `pid` is a running managed process (one the launcher
    /// spawned, a forkserver forked or a managed parent handed over).
    pub fn is_managed_pid(&self, pid: i32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Whether the running managed process `pid` has ended, by its pidfd
    /// (`None`: not a running managed process, or no pidfd to ask).
    pub fn has_ended(&self, pid: i32) -> Option<bool> {
        let id = self.by_pid.get(&pid)?;
        let fd = self.running.get(id)?.pidfd.as_ref()?;
        mpctl_node::procfs::pidfd_exited(fd).ok()
    }

    /// Spawns the process of `spec` (not through a forkserver).
    pub fn spawn(&mut self, spec: &LaunchSpec) -> Result<Launched, String> {
        let spawned = spawn::spawn(spec)?;
        let mut pipes = vec![spawned.stdout, spawned.stderr];
        pipes.extend(spawned.result);
        Ok(self.track(&spec.id, spawned.pid, spawned.pidfd, pipes))
    }

    /// Tracks a child forked by a forkserver.
    pub fn forked(&mut self, id: &str, pid: i32, pipes: Vec<OutPipe>) -> Launched {
        let pidfd = pidfd::pidfd_open(pid).ok();
        self.track(id, pid, pidfd, pipes)
    }

    /// Tracks a child forked by a managed process (the fork start method):
    /// its pidfd for signals, its result pipe like any other.
    pub fn adopt(&mut self, id: &str, pid: i32, fds: Vec<OwnedFd>) -> Result<Launched, String> {
        let [pidfd, result]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| "an adoption carries exactly a pidfd and a result pipe".to_owned())?;
        if self.running.contains_key(id) || self.by_pid.contains_key(&pid) {
            return Err(format!("{id} (pid {pid}) is already tracked"));
        }
        let limit = mpctl_node::MAX_RESULT as u64 + 1;
        let pipe = OutPipe::in_memory(result, &spawn::result_name(id), limit)
            .map_err(|e| e.to_string())?;
        Ok(self.track(id, pid, Some(pidfd), vec![pipe]))
    }

    fn track(
        &mut self,
        id: &str,
        pid: i32,
        pidfd: Option<OwnedFd>,
        pipes: Vec<OutPipe>,
    ) -> Launched {
        let started_ms = now_ms();
        let pipes = pipes
            .into_iter()
            .map(|p| {
                self.next_pipe += 1;
                self.pipes.insert(self.next_pipe, p);
                self.next_pipe
            })
            .collect();
        self.running.insert(
            id.to_owned(),
            Running {
                pid,
                pidfd,
                started_ms,
                pipes,
            },
        );
        self.by_pid.insert(pid, id.to_owned());
        Launched {
            id: id.to_owned(),
            pid,
            at_unix_ms: started_ms,
        }
    }

    /// Delivers `signo` to a running process (or its group); false when the
    /// id is unknown or already exited, or the kernel refused.
    pub fn signal(&self, id: &str, signo: i32, tree: bool) -> bool {
        let Some(r) = self.running.get(id) else {
            return false;
        };
        // An unreaped child keeps its pid and group id, so neither can have
        // been recycled: killpg and kill are as safe as the pidfd here.
        let result = match (&r.pidfd, tree) {
            (_, true) => pidfd::killpg(r.pid, signo),
            (Some(fd), false) => pidfd::pidfd_send_signal(fd.as_fd(), signo),
            (None, false) => pidfd::kill(r.pid, signo),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                log(format_args!("signal {signo} to {id} (pid {}): {e}", r.pid));
                false
            }
        }
    }

    /// A pipe is readable.
    pub fn on_pipe(&mut self, key: u64) {
        self.pump(key, PUMP_SLICE);
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

    /// A managed process ended (reaped by the launcher, or reported by its
    /// forkserver or forking parent): its exit, once everything it wrote
    /// before exiting is in its files. `None` for a pid that is not ours.
    pub fn exited(&mut self, pid: i32, exitcode: i32) -> Option<ExitRecord> {
        let Some(id) = self.by_pid.remove(&pid) else {
            log(format_args!(
                "reaped orphan pid {pid} (exitcode {exitcode})"
            ));
            return None;
        };
        let r = self.running.remove(&id)?;
        // Pipes still held open by descendants keep being drained
        // afterwards.
        for &key in &r.pipes {
            self.pump(key, FINAL_DRAIN);
        }
        let result = self.take_result(&r.pipes);
        Some(ExitRecord {
            id,
            pid,
            exitcode,
            at_unix_ms: now_ms(),
            result,
        })
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
}
