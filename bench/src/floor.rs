//! The physical floor: what the kernel alone costs for a new process, timed
//! from a single-threaded process (`mpctl-bench floor N`, run as a
//! subprocess before the harness starts any thread), with libc directly.
//!
//! All of the crate's `unsafe` is in this module.

// This module is where the crate's `unsafe` lives (see the workspace lints).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::time::Instant;

/// `n` samples of a 4 KiB write + `fdatasync` in a temporary file, in ms: the
/// disk's share of a durable start (the coordinator commits with
/// `synchronous=FULL`, the launcher fsyncs its exit journal).
pub fn fsync(n: usize) -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    let mut f = tempfile::tempfile()?;
    let block = [0u8; 4096];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(v)
}

/// `n` samples, in ms, of the part of case 3 no manager can save: this
/// binary's `stamp` child (case 3's child) is released and the time from
/// its stamp to `waitpid` returning in this plain parent is taken. It is
/// the child's own exit (writing the stamp file, tearing the process down)
/// plus one wake-up of an idle parent (case 3's chain has several).
pub fn exit_wait(n: usize) -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    let me = std::env::current_exe()?;
    let dir = tempfile::Builder::new()
        .prefix("mpctl-bench-floor-")
        .tempdir()?;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let fifo = dir.path().join(format!("fifo-{i}"));
        let out = dir.path().join(format!("stamp-{i}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        let mut child = std::process::Command::new(&me)
            .arg("stamp")
            .arg(&fifo)
            .arg(&out)
            .spawn()?;
        // The same pause as case 3 before the release: the machine idles
        // meanwhile, and waking from idle is part of what both pay.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)?
            .write_all(b"go")?;
        let status = child.wait()?;
        let end = crate::monotonic_ns();
        anyhow::ensure!(status.success(), "stamp child: {status}");
        let stamp: i64 = std::fs::read_to_string(&out)?.trim().parse()?;
        v.push((end - stamp) as f64 / 1e6);
    }
    Ok(v)
}

/// `n` samples each, in ms: `posix_spawn("/bin/true")` + `waitpid`, and
/// `fork` + `_exit(0)` in the child + `waitpid`.
pub fn measure(n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let path = CString::new("/bin/true")?;
    let mut spawn = Vec::with_capacity(n);
    let mut fork = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        posix_spawn_wait(&path)?;
        spawn.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        fork_exit_wait()?;
        fork.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((spawn, fork))
}

fn wait_zero(pid: libc::pid_t) -> anyhow::Result<()> {
    let mut status = 0;
    // SAFETY: `status` is a valid, writable c_int; `pid` is our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    anyhow::ensure!(r == pid, "waitpid: {}", std::io::Error::last_os_error());
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child exited with status {status:#x}"
    );
    Ok(())
}

fn posix_spawn_wait(path: &CString) -> anyhow::Result<()> {
    let argv = [path.as_ptr() as *mut libc::c_char, std::ptr::null_mut()];
    let envp = [std::ptr::null_mut::<libc::c_char>()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are NULL-terminated
    // arrays of NUL-terminated strings that outlive the call (posix_spawn
    // copies them into the child before returning); null file actions and
    // attributes mean the defaults.
    let r = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    anyhow::ensure!(
        r == 0,
        "posix_spawn: {}",
        std::io::Error::from_raw_os_error(r)
    );
    wait_zero(pid)
}

fn fork_exit_wait() -> anyhow::Result<()> {
    // SAFETY: this process is single-threaded when `floor` runs (it is its
    // own subprocess, started before any runtime or thread), and the child
    // calls only `_exit`, which is async-signal-safe.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
        // SAFETY: `_exit` ends the child at once without running any of the
        // parent's atexit handlers or destructors.
        0 => unsafe { libc::_exit(0) },
        pid => wait_zero(pid),
    }
}
