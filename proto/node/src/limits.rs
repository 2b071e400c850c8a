//! Per-process resource limits, applied as rlimits by whoever makes the
//! child: the launcher between fork and exec, a forkserver's or a forking
//! parent's child before it runs.

use serde::{Deserialize, Serialize};

/// RLIMIT_AS in bytes and RLIMIT_CPU in seconds; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub cpu_seconds: u64,
}

impl Limits {
    pub fn is_none(&self) -> bool {
        self.memory_bytes == 0 && self.cpu_seconds == 0
    }

    /// Applies the limits to the calling process. setrlimit(2) is
    /// async-signal-safe (and nix allocates nothing for it), so this may run
    /// between fork and exec.
    pub fn apply(&self) -> nix::Result<()> {
        use nix::sys::resource::{setrlimit, Resource};
        if self.memory_bytes > 0 {
            setrlimit(Resource::RLIMIT_AS, self.memory_bytes, self.memory_bytes)?;
        }
        if self.cpu_seconds > 0 {
            // Soft at the limit (SIGXCPU, exit code -24), hard one second
            // later (SIGKILL) for a process that ignores SIGXCPU.
            setrlimit(Resource::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        }
        Ok(())
    }
}
