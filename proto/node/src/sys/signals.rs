//! Signal dispositions of a process that reads its signals from a signalfd
//! (the launcher).

#![allow(unsafe_code)]

use std::io;

/// SIGPIPE ignored (a vanished peer must show up as EPIPE, not kill us);
/// SIGCHLD, SIGTERM, SIGINT and SIGHUP at their default, since an ignored
/// signal is discarded before a signalfd can read it (and an inherited
/// SIG_IGN for SIGCHLD would make the kernel reap our children and lose
/// their exit codes).
pub fn for_signalfd() -> io::Result<()> {
    let defaults = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    for (signo, handler) in defaults
        .iter()
        .map(|s| (*s, libc::SIG_DFL))
        .chain([(libc::SIGPIPE, libc::SIG_IGN)])
    {
        // SAFETY: installing SIG_DFL or SIG_IGN registers no code of ours.
        if unsafe { libc::signal(signo, handler) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
