//! Process-wide setup of the launcher before it serves: directory, the
//! single-instance lock, signals, the listening socket and stdio.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use mpctl_node::sys::{fds, signals};

use crate::error::LauncherError;

/// Lock file; holds the pid of the launcher that owns the directory.
pub const LOCK_FILE: &str = "launcher.lock";
/// The socket the agent connects to.
pub const SOCKET_FILE: &str = "launcher.sock";
/// Where the launcher's stderr goes once it is ready.
pub const LOG_FILE: &str = "launcher.log";

/// Creates `dir` and the directories above it that are missing, 0700, and
/// makes `dir` 0700 if it already existed (state from before files were
/// kept private): node state, output and sockets are for this user only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates `dir` (0700) and takes the non-blocking exclusive lock. `None`
/// when another launcher holds it.
pub fn lock_dir(dir: &Path) -> Result<Option<Flock<File>>, LauncherError> {
    create_private_dir(dir).map_err(|e| LauncherError::path("create directory", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| LauncherError::path("open lock", &path, e))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| LauncherError::path("chmod", &path, e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(LauncherError::path("lock", &path, e.into())),
    };
    lock.set_len(0)
        .and_then(|()| writeln!(&mut *lock, "{}", std::process::id()))
        .map_err(|e| LauncherError::path("write pid to", &path, e))?;
    Ok(Some(lock))
}

/// Subreaper, signal dispositions, the blocked signal set and its signalfd.
pub fn signals() -> Result<SignalFd, LauncherError> {
    fds::cloexec_inherited().map_err(|e| LauncherError::setup("cloexec", e))?;
    signals::for_signalfd().map_err(|e| LauncherError::setup("signal dispositions", e))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| LauncherError::setup("PR_SET_CHILD_SUBREAPER", e))?;
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    mask.thread_block()
        .map_err(|e| LauncherError::setup("sigprocmask", e))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| LauncherError::setup("signalfd", e))
}

/// Binds the socket (replacing a stale one: we hold the lock, so nobody
/// serves it), 0600, non-blocking.
pub fn listen(dir: &Path) -> Result<UnixListener, LauncherError> {
    let path = dir.join(SOCKET_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LauncherError::path("remove stale socket", &path, e)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| LauncherError::path("bind", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| LauncherError::path("chmod", &path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| LauncherError::path("set non-blocking", &path, e))?;
    Ok(listener)
}

/// Prints "ready" for the starter, then detaches stdio: stdin and stdout on
/// `/dev/null`, stderr appended to `DIR/launcher.log`.
pub fn ready_and_detach(dir: &Path) -> Result<(), LauncherError> {
    announce_ready()?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| LauncherError::path("open", Path::new("/dev/null"), e))?;
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| LauncherError::path("open log", &log_path, e))?;
    log.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| LauncherError::path("chmod", &log_path, e))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| LauncherError::setup("dup2 stdin", e))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| LauncherError::setup("dup2 stdout", e))?;
    nix::unistd::dup2_stderr(&log).map_err(|e| LauncherError::setup("dup2 stderr", e))?;
    Ok(())
}

/// Writes the "ready" line the starter waits for.
pub fn announce_ready() -> Result<(), LauncherError> {
    let mut out = io::stdout().lock();
    out.write_all(b"ready\n")
        .and_then(|()| out.flush())
        .map_err(|e| LauncherError::setup("write ready", e))
}
