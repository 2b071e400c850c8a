//! End-to-end tests of the launcher: the real `mpctl-launcher` binary,
//! real child processes, the tokio client. Every test waits on real events
//! with deadlines, kills what it started and asserts that the launcher exits
//! at the end.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpctl_agent::launcher::{
    truncation_marker, Bootstrap, ExitRecord, Hello, LaunchError, LaunchSpec, LauncherClient,
    LauncherEvent, LOCK_FILE, SOCKET_FILE,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(15);

fn launcher_cmd() -> Vec<OsString> {
    vec![env!("CARGO_BIN_EXE_mpctl-launcher").into()]
}

/// One launcher directory and the current connection to it.
struct Node {
    dir: tempfile::TempDir,
    client: Option<LauncherClient>,
    events: UnboundedReceiver<LauncherEvent>,
    hello: Hello,
    /// Exits received while waiting for another id.
    early: HashMap<String, ExitRecord>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (client, hello, events) = connect(dir.path()).await;
        Node {
            dir,
            client: Some(client),
            events,
            hello,
            early: HashMap::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Drops the connection and opens a new one (same launcher if it still
    /// has work, a new one otherwise).
    async fn reconnect(&mut self) {
        self.disconnect();
        let (client, hello, events) = connect(self.dir.path()).await;
        self.client = Some(client);
        self.events = events;
        self.hello = hello;
        self.early.clear();
    }

    /// Drops every handle: the launcher sees the agent leave.
    fn disconnect(&mut self) {
        self.client = None;
        self.events = tokio::sync::mpsc::unbounded_channel().1;
    }

    fn client(&self) -> &LauncherClient {
        self.client.as_ref().expect("connected")
    }

    fn spec(&self, id: &str, argv: &[&str]) -> LaunchSpec {
        LaunchSpec {
            id: id.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: None,
            stdout_path: self.path().join(format!("{id}.out")),
            stderr_path: self.path().join(format!("{id}.err")),
            log_limit_bytes: 1 << 20,
            bootstrap: None,
            forkserver: None,
            memory_limit: 0,
            cpu_limit: 0,
            run_as: None,
        }
    }

    async fn launch(&self, id: &str, argv: &[&str]) -> i32 {
        self.launch_spec(self.spec(id, argv)).await
    }

    async fn launch_spec(&self, spec: LaunchSpec) -> i32 {
        let id = spec.id.clone();
        let launched = timeout(DEADLINE, self.client().launch(spec))
            .await
            .expect("launch timed out")
            .unwrap_or_else(|e| panic!("launch {id}: {e}"));
        assert_eq!(launched.id, id);
        assert!(launched.pid > 0);
        launched.pid
    }

    async fn launch_err(&self, spec: LaunchSpec) -> String {
        match timeout(DEADLINE, self.client().launch(spec)).await.unwrap() {
            Err(LaunchError::Failed { error, .. }) => error,
            other => panic!("expected LaunchFailed, got {other:?}"),
        }
    }

    async fn signal(&self, id: &str, signo: i32, tree: bool) -> bool {
        timeout(DEADLINE, self.client().signal(id, signo, tree))
            .await
            .expect("signal timed out")
            .expect("signal")
    }

    /// A request/response round trip: everything sent before it (acks
    /// included) has been handled by the launcher when it returns.
    async fn barrier(&self) {
        assert!(!self.signal("no-such-id", 0, false).await);
    }

    async fn exit_of(&mut self, id: &str) -> ExitRecord {
        if let Some(rec) = self.early.remove(id) {
            return rec;
        }
        loop {
            let ev = timeout(DEADLINE, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no exit of {id} before the deadline"))
                .expect("event channel closed");
            match ev {
                LauncherEvent::Exited(rec) if rec.id == id => return rec,
                LauncherEvent::Exited(rec) => {
                    self.early.insert(rec.id.clone(), rec);
                }
                LauncherEvent::Disconnected(r) => panic!("disconnected: {r}"),
                LauncherEvent::Adopted(l) => panic!("nothing forks in these tests: {l:?}"),
            }
        }
    }

    fn launcher_pid(&self) -> i32 {
        launcher_pid(self.path())
    }

    /// Kills `ids` (SIGKILL), waits for their exits, drops the connection
    /// and asserts the launcher exits and removes its socket.
    async fn finish(mut self, ids: &[&str]) {
        for id in ids {
            self.signal(id, 9, true).await;
            self.exit_of(id).await;
        }
        self.disconnect();
        assert_launcher_exits(self.dir.path()).await;
    }
}

async fn connect(dir: &Path) -> (LauncherClient, Hello, UnboundedReceiver<LauncherEvent>) {
    timeout(
        DEADLINE,
        LauncherClient::connect_or_start(dir, &launcher_cmd()),
    )
    .await
    .expect("connect timed out")
    .expect("connect_or_start")
}

fn launcher_pid(dir: &Path) -> i32 {
    fs::read_to_string(dir.join(LOCK_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The launcher is gone once its directory lock is free.
async fn assert_launcher_exits(dir: &Path) {
    let pid = launcher_pid(dir);
    eventually(&format!("launcher {pid} to exit"), || {
        let f = fs::File::open(dir.join(LOCK_FILE)).unwrap();
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    })
    .await;
    assert!(!dir.join(SOCKET_FILE).exists(), "socket left behind");
}

/// A line from /proc/PID/status, e.g. field "PPid".
fn proc_status(pid: i32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// (pid, state, cmdline) of every process whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<(i32, String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if proc_status(pid, "PPid").and_then(|p| p.parse().ok()) != Some(ppid) {
            continue;
        }
        let state = proc_status(pid, "State").unwrap_or_default();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, state, cmdline.trim().to_owned()));
    }
    out
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn exit_code_and_output_are_reported() {
    let mut n = Node::start().await;
    assert_eq!(n.hello, Hello::default());
    n.launch("p", &["/bin/sh", "-c", "echo hi; echo err >&2; exit 3"])
        .await;
    let rec = n.exit_of("p").await;
    assert_eq!(rec.exitcode, 3);
    assert!(rec.pid > 0 && rec.at_unix_ms > 0);
    // The exit is reported only after the output is in the files.
    assert_eq!(read(n.path().join("p.out")), "hi\n");
    assert_eq!(read(n.path().join("p.err")), "err\n");
    let mode = fs::metadata(n.path().join("p.out"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    n.finish(&[]).await;
}

#[tokio::test]
async fn a_silent_process_leaves_no_output_files() {
    let mut n = Node::start().await;
    let mut spec = n.spec("quiet", &["/bin/true"]);
    spec.stdout_path = n.path().join("quiet").join("stdout");
    spec.stderr_path = n.path().join("quiet").join("stderr");
    n.launch_spec(spec.clone()).await;
    assert_eq!(n.exit_of("quiet").await.exitcode, 0);
    assert!(!n.path().join("quiet").exists(), "created for no output");
    // The first byte creates the directory and the file, and only that one.
    spec.id = "loud".into();
    spec.argv = vec!["/bin/sh".into(), "-c".into(), "echo out".into()];
    spec.stdout_path = n.path().join("loud").join("stdout");
    spec.stderr_path = n.path().join("loud").join("stderr");
    n.launch_spec(spec).await;
    assert_eq!(n.exit_of("loud").await.exitcode, 0);
    assert_eq!(read(n.path().join("loud").join("stdout")), "out\n");
    assert!(!n.path().join("loud").join("stderr").exists());
    n.finish(&[]).await;
}

#[tokio::test]
async fn signals_give_negative_exit_codes() {
    let mut n = Node::start().await;
    n.launch("term", &["/bin/sleep", "30"]).await;
    n.launch("kill", &["/bin/sleep", "30"]).await;
    assert!(n.signal("term", 15, false).await);
    assert_eq!(n.exit_of("term").await.exitcode, -15);
    assert!(n.signal("kill", 9, false).await);
    assert_eq!(n.exit_of("kill").await.exitcode, -9);
    // Like CPython: signalling a finished or unknown process is not an error.
    assert!(!n.signal("term", 15, false).await);
    assert!(!n.signal("never-started", 15, true).await);
    n.finish(&[]).await;
}

#[tokio::test]
async fn launch_errors_carry_the_os_reason() {
    let n = Node::start().await;
    let err = n.launch_err(n.spec("a", &["/no/such/binary"])).await;
    assert!(err.contains("No such file or directory"), "{err}");

    let script = n.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let err = n.launch_err(n.spec("b", &[script.to_str().unwrap()])).await;
    assert!(err.contains("Permission denied"), "{err}");

    let mut spec = n.spec("c", &["/bin/true"]);
    spec.cwd = Some(n.path().join("no-such-dir"));
    let err = n.launch_err(spec).await;
    assert!(err.contains("No such file or directory"), "{err}");

    let err = n.launch_err(n.spec("d", &[])).await;
    assert!(err.contains("empty argv"), "{err}");

    // A failed launch leaves nothing behind.
    let mut n = n;
    n.reconnect().await;
    assert_eq!(n.hello, Hello::default());
    n.finish(&[]).await;
}

#[tokio::test]
async fn child_inherits_only_stdio_and_no_signal_state() {
    let mut n = Node::start().await;
    // `; true` keeps sh from exec'ing ls, so the listing is of the shell's
    // own descriptors (ls's directory handle is in ls, not in the shell).
    n.launch("fds", &["/bin/sh", "-c", "ls /proc/$$/fd; true"])
        .await;
    assert_eq!(n.exit_of("fds").await.exitcode, 0);
    assert_eq!(read(n.path().join("fds.out")), "0\n1\n2\n");
    assert!(!n.path().join("fds.err").exists(), "nothing went to stderr");

    // grep is the spawned process itself: its status shows what it inherited.
    n.launch(
        "mask",
        &["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
    )
    .await;
    assert_eq!(n.exit_of("mask").await.exitcode, 0);
    assert_eq!(
        read(n.path().join("mask.out")),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    n.finish(&[]).await;
}

#[tokio::test]
async fn environment_is_exactly_the_given_one() {
    let mut n = Node::start().await;
    let mut spec = n.spec("env", &["/usr/bin/env"]);
    spec.env = vec![("A".into(), "1".into()), ("B".into(), "two words".into())];
    n.launch_spec(spec).await;
    assert_eq!(n.exit_of("env").await.exitcode, 0);
    assert_eq!(read(n.path().join("env.out")), "A=1\nB=two words\n");

    let mut spec = n.spec("cwd", &["/bin/pwd"]);
    spec.cwd = Some(n.path().canonicalize().unwrap());
    n.launch_spec(spec).await;
    assert_eq!(n.exit_of("cwd").await.exitcode, 0);
    assert_eq!(
        read(n.path().join("cwd.out")),
        format!("{}\n", n.path().canonicalize().unwrap().display())
    );
    n.finish(&[]).await;
}

#[tokio::test]
async fn reconnect_reports_running_and_missed_exits() {
    let mut n = Node::start().await;
    let fifo = n.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let sleeper = n.launch("sleeper", &["/bin/sleep", "30"]).await;
    let script = format!("read x < {}; exit 7", fifo.display());
    let waiter = n.launch("waiter", &["/bin/sh", "-c", &script]).await;

    // Disconnect, then let `waiter` exit while no agent is connected.
    n.disconnect();
    tokio::fs::write(&fifo, "go\n").await.unwrap();
    // Reaped (and therefore journaled: the launcher journals in the same
    // step, before it accepts the next connection).
    eventually("waiter reaped", || {
        !Path::new(&format!("/proc/{waiter}")).exists()
    })
    .await;

    n.reconnect().await;
    assert_eq!(n.hello.running.len(), 1, "{:?}", n.hello);
    assert_eq!(n.hello.running[0].id, "sleeper");
    assert_eq!(n.hello.running[0].pid, sleeper);
    assert_eq!(n.hello.exited.len(), 1, "{:?}", n.hello);
    assert_eq!(n.hello.exited[0].id, "waiter");
    assert_eq!(n.hello.exited[0].pid, waiter);
    assert_eq!(n.hello.exited[0].exitcode, 7);

    // Acknowledged: gone from the next Hello.
    n.client().ack("waiter").await.unwrap();
    n.barrier().await;
    n.reconnect().await;
    assert_eq!(n.hello.exited, vec![]);
    assert_eq!(n.hello.running.len(), 1);
    n.finish(&["sleeper"]).await;
}

/// A function target as the launcher sees it: fd 3 holds the preparation,
/// whatever goes to fd 4 is the result.
fn function_like(n: &Node, id: &str, script: &str) -> LaunchSpec {
    let mut spec = n.spec(id, &["/bin/sh", "-c", script]);
    spec.bootstrap = Some(Bootstrap {
        prep: "{}".into(),
        result_limit: (1 << 20) + 1,
    });
    spec
}

#[tokio::test]
async fn results_come_with_their_exits_even_past_one_frame() {
    let mut n = Node::start().await;
    // 800 kB of `"`, which JSON escapes to twice that in every frame.
    let quotes = "head -c 800000 /dev/zero | tr '\\0' '\"' >&4";
    let expected = "\"".repeat(800_000);
    n.launch_spec(function_like(&n, "live", quotes)).await;
    assert_eq!(n.exit_of("live").await.result.as_deref(), Some(&*expected));
    n.launch_spec(function_like(&n, "silent", "exit 0")).await;
    assert_eq!(n.exit_of("silent").await.result, None, "nothing written");
    assert!(!n.path().join("live.out").exists() && !n.path().join("silent.out").exists());

    // Four exit while no agent is connected: together they are too large
    // for the Hello, so some follow it as exits of their own.
    let mut pids = Vec::new();
    for i in 0..4 {
        let gate = n.path().join(format!("gate{i}"));
        nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let script = format!("read x < {}; {quotes}", gate.display());
        pids.push(
            n.launch_spec(function_like(&n, &format!("r{i}"), &script))
                .await,
        );
    }
    n.disconnect();
    for i in 0..4 {
        tokio::fs::write(n.path().join(format!("gate{i}")), "go\n")
            .await
            .unwrap();
    }
    for pid in pids {
        eventually("reaped", || !Path::new(&format!("/proc/{pid}")).exists()).await;
    }
    n.reconnect().await;
    let in_hello = n.hello.exited.clone();
    assert!(
        !in_hello.is_empty() && in_hello.len() < 4,
        "{} of 4 in the Hello",
        in_hello.len()
    );
    for i in 0..4 {
        let id = format!("r{i}");
        let rec = match in_hello.iter().find(|r| r.id == id) {
            Some(rec) => rec.clone(),
            None => n.exit_of(&id).await,
        };
        assert_eq!(rec.exitcode, 0);
        assert_eq!(rec.result.as_deref(), Some(&*expected), "{id}");
    }
    n.finish(&[]).await;
}

#[tokio::test]
async fn unacked_exits_survive_a_launcher_restart() {
    let mut n = Node::start().await;
    let first = n.launcher_pid();
    n.launch("p", &["/bin/sh", "-c", "exit 4"]).await;
    assert_eq!(n.exit_of("p").await.exitcode, 4);
    // No child, no connection: the launcher exits, the exit stays journaled.
    n.disconnect();
    assert_launcher_exits(n.path()).await;
    n.reconnect().await;
    assert_ne!(n.launcher_pid(), first, "a new launcher was started");
    assert_eq!(n.hello.running, vec![]);
    assert_eq!(n.hello.exited.len(), 1);
    assert_eq!(n.hello.exited[0].exitcode, 4);

    // Launching an id with an unacknowledged exit does not run it again.
    let pid = n.launch("p", &["/bin/sh", "-c", "exit 99"]).await;
    assert_eq!(pid, n.hello.exited[0].pid);
    assert_eq!(n.exit_of("p").await.exitcode, 4);

    n.client().ack("p").await.unwrap();
    n.barrier().await;
    n.reconnect().await;
    assert_eq!(n.hello, Hello::default());
    n.finish(&[]).await;
}

#[tokio::test]
async fn launching_a_running_id_returns_the_same_process() {
    let n = Node::start().await;
    let a = n.launch("dup", &["/bin/sleep", "31.7"]).await;
    let b = n.launch("dup", &["/bin/sleep", "31.7"]).await;
    assert_eq!(a, b);
    let sleeps: Vec<_> = children_of(n.launcher_pid())
        .into_iter()
        .filter(|(_, _, cmd)| cmd == "/bin/sleep 31.7")
        .collect();
    assert_eq!(sleeps.len(), 1, "{sleeps:?}");
    n.finish(&["dup"]).await;
}

#[tokio::test]
async fn output_is_capped_and_the_child_never_blocks() {
    let mut n = Node::start().await;
    let mut spec = n.spec("big", &["/usr/bin/head", "-c", "1048576", "/dev/zero"]);
    spec.log_limit_bytes = 1000;
    n.launch_spec(spec).await;
    assert_eq!(n.exit_of("big").await.exitcode, 0);
    let out = fs::read(n.path().join("big.out")).unwrap();
    let marker = truncation_marker(1000);
    assert!(out.len() <= 1000 + marker.len());
    assert_eq!(&out[..1000], &[0u8; 1000][..]);
    assert_eq!(&out[1000..], marker.as_bytes());
    n.finish(&[]).await;
}

#[tokio::test]
async fn tree_signal_reaches_grandchildren() {
    let mut n = Node::start().await;
    n.launch("tree", &["/bin/sh", "-c", "sleep 30 & echo $!; wait"])
        .await;
    let out = n.path().join("tree.out");
    eventually("grandchild pid printed", || {
        fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let grandchild: i32 = read(out).trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{grandchild}")).exists());
    assert!(n.signal("tree", 15, true).await);
    assert_eq!(n.exit_of("tree").await.exitcode, -15);
    // Killed, and reaped (by sh or by the launcher as subreaper).
    eventually("grandchild gone", || {
        !Path::new(&format!("/proc/{grandchild}")).exists()
    })
    .await;
    n.finish(&[]).await;
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped() {
    let mut n = Node::start().await;
    let launcher = n.launcher_pid();
    let fifo = n.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = format!("(read x < {}; exit 5) & exit 0", fifo.display());
    let parent = n.launch("parent", &["/bin/sh", "-c", &script]).await;
    assert_eq!(n.exit_of("parent").await.exitcode, 0);
    // The subshell was reparented to the launcher (child subreaper).
    let orphans = children_of(launcher);
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let (orphan, _, _) = orphans[0];
    assert_ne!(orphan, parent);
    tokio::fs::write(&fifo, "go\n").await.unwrap();
    eventually("orphan reaped, no zombie left", || {
        !Path::new(&format!("/proc/{orphan}")).exists() && children_of(launcher).is_empty()
    })
    .await;
    // Its exit is not reported: it is not a managed process.
    n.barrier().await;
    assert!(n.events.try_recv().is_err());
    n.finish(&[]).await;
}

#[tokio::test]
async fn launcher_survives_bad_frames_and_defers_to_a_running_one() {
    let mut n = Node::start().await;
    let launcher = n.launcher_pid();
    let pid = n.launch("keep", &["/bin/sleep", "30"]).await;
    // A second launcher for the same directory defers to the first.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mpctl-launcher"))
        .arg("--dir")
        .arg(n.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"ready\n");

    // A malformed (oversized) frame closes that connection only.
    n.disconnect();
    let mut raw = StdUnixStream::connect(n.path().join(SOCKET_FILE)).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).unwrap();
    let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut hello).unwrap();
    let expected =
        format!(r#"{{"hello":{{"running":[{{"id":"keep","pid":{pid}}}],"exited":[]}}}}"#);
    assert_eq!(String::from_utf8(hello).unwrap(), expected);
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "closed by launcher");
    drop(raw);

    // Garbage JSON in a well-sized frame: same.
    let mut raw = StdUnixStream::connect(n.path().join(SOCKET_FILE)).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    raw.write_all(&5u32.to_be_bytes()).unwrap();
    raw.write_all(b"{bad}").unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).expect("closed by launcher");
    drop(raw);

    n.reconnect().await;
    assert_eq!(n.launcher_pid(), launcher, "same launcher");
    assert_eq!(n.hello.running.len(), 1);
    n.launch("ok", &["/bin/true"]).await;
    assert_eq!(n.exit_of("ok").await.exitcode, 0);
    n.finish(&["keep"]).await;
}

#[tokio::test]
async fn launcher_exits_by_itself_when_idle() {
    let mut n = Node::start().await;
    let pid = n.launcher_pid();
    n.disconnect();
    assert_launcher_exits(n.path()).await;
    assert!(
        !Path::new(&format!("/proc/{pid}/status")).exists()
            || proc_status(pid, "State").is_some_and(|s| s.starts_with('Z'))
    );
}

#[tokio::test]
async fn sigterm_stops_the_launcher_only_when_no_process_runs() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut n = Node::start().await;
    let launcher = Pid::from_raw(n.launcher_pid());
    n.launch("keep", &["/bin/sleep", "30"]).await;
    kill(launcher, Signal::SIGTERM).unwrap();
    let log = n.path().join(mpctl_agent::launcher::LOG_FILE);
    eventually("SIGTERM logged as ignored", || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("signal 15 ignored"))
    })
    .await;
    // Still serving, and its process still running.
    n.barrier().await;
    assert!(n.signal("keep", 9, false).await);
    assert_eq!(n.exit_of("keep").await.exitcode, -9);

    // Idle now: SIGTERM stops it even with an agent connected.
    kill(launcher, Signal::SIGTERM).unwrap();
    match timeout(DEADLINE, n.events.recv()).await.unwrap() {
        Some(LauncherEvent::Disconnected(_)) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(n
        .client()
        .launch(n.spec("late", &["/bin/true"]))
        .await
        .is_err());
    n.disconnect();
    assert_launcher_exits(n.path()).await;
}

/// Exits a (1), b (21), c (3) journaled by a launcher that then stopped;
/// the journal's text is handed to `damage`, which returns it changed, and
/// a new launcher reads it.
async fn journal_damaged_by(damage: impl FnOnce(&str) -> String) -> Node {
    let mut n = Node::start().await;
    for (id, code) in [("a", 1), ("b", 21), ("c", 3)] {
        n.launch(id, &["/bin/sh", "-c", &format!("exit {code}")])
            .await;
        assert_eq!(n.exit_of(id).await.exitcode, code);
    }
    n.disconnect();
    assert_launcher_exits(n.path()).await;
    let path = n.path().join("exits.journal");
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    fs::write(&path, damage(&text)).unwrap();
    n.reconnect().await;
    n
}

fn codes(hello: &Hello) -> Vec<(String, i32)> {
    hello
        .exited
        .iter()
        .map(|e| (e.id.clone(), e.exitcode))
        .collect()
}

/// b's record was damaged: the Hello has a and c, never b, and says which
/// record is damaged; the launcher's log says so loudly.
async fn assert_b_reported_damaged(n: Node) {
    assert_eq!(codes(&n.hello), vec![("a".into(), 1), ("c".into(), 3)]);
    assert_eq!(n.hello.journal_damage.len(), 1, "{:?}", n.hello);
    let d = &n.hello.journal_damage[0];
    assert_eq!(d.line, 2);
    assert_eq!(d.suspect_id.as_deref(), Some("b"));
    assert!(d.preserved.starts_with(n.path()));
    assert!(d
        .preserved
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("exits.journal.damaged-"));
    let log = read(n.path().join("launcher.log"));
    assert!(
        log.contains("JOURNAL DAMAGED: damaged exit record at line 2"),
        "{log}"
    );
    // Every later agent connection hears it too.
    let mut n = n;
    n.reconnect().await;
    assert_eq!(n.hello.journal_damage.len(), 1);
    // b may have run already: launching it again is refused, not repeated.
    let error = n
        .launch_err(n.spec("b", &["/bin/sh", "-c", "exit 0"]))
        .await;
    assert!(
        error.starts_with("not launched: this node may have run it already, and its exit record is damaged (damaged exit record at line 2"),
        "{error}"
    );
    for id in ["a", "c"] {
        n.client().ack(id).await.unwrap();
    }
    n.barrier().await;
    // The operator dealt with it and removed the kept file: the next
    // connection hears no more of it.
    fs::remove_file(&n.hello.journal_damage[0].preserved).unwrap();
    n.reconnect().await;
    assert_eq!(n.hello, Hello::default());
    n.finish(&[]).await;
}

#[tokio::test]
async fn an_edited_exit_code_in_the_journal_is_reported_never_believed() {
    let n = journal_damaged_by(|t| t.replacen(r#""exitcode":21"#, r#""exitcode":31"#, 1)).await;
    assert!(!codes(&n.hello).iter().any(|(_, c)| *c == 31 || *c == 21));
    assert_b_reported_damaged(n).await;
}

#[tokio::test]
async fn a_flipped_byte_in_the_journal_is_reported_never_believed() {
    let n = journal_damaged_by(|t| {
        let mut b = t.as_bytes().to_vec();
        let second = b.iter().position(|x| *x == b'\n').unwrap() + 1;
        let pid = second + t[second..].find(r#""pid":"#).unwrap() + 6;
        b[pid] ^= 0x01;
        String::from_utf8(b).unwrap()
    })
    .await;
    assert_b_reported_damaged(n).await;
}

#[tokio::test]
async fn a_torn_journal_tail_is_cut_at_the_last_good_record_and_logged() {
    let mut n = journal_damaged_by(|t| t[..t.len() - 10].to_owned()).await;
    assert_eq!(codes(&n.hello), vec![("a".into(), 1), ("b".into(), 21)]);
    assert_eq!(n.hello.journal_damage, vec![]);
    let log = read(n.path().join("launcher.log"));
    assert!(log.contains("journal: torn tail cut off"), "{log}");
    let text = read(n.path().join("exits.journal"));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.ends_with('\n'));
    for id in ["a", "b"] {
        n.client().ack(id).await.unwrap();
    }
    n.barrier().await;
    n.reconnect().await;
    assert_eq!(n.hello, Hello::default());
    n.finish(&[]).await;
}
