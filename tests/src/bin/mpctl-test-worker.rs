//! A program that serves function targets for the integration tests: each
//! function produces one of the outcomes of docs/design.md §2.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mpctl::runtime::{self, Runtime};
use serde::Serialize;

#[derive(Serialize)]
struct WhoAmI {
    id: String,
    name: String,
    node: String,
    bootstrap_env: bool,
    open_fds: Vec<String>,
}

fn whoami(_: ()) -> WhoAmI {
    let me = runtime::current_process().expect("running as a function target");
    let mut open_fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    open_fds.sort();
    WhoAmI {
        id: me.id.clone(),
        name: me.name.clone(),
        node: me.node.clone(),
        bootstrap_env: std::env::var_os("MPCTL_BOOTSTRAP").is_some(),
        open_fds,
    }
}

/// The seed test's module-level flag: 0 in a fresh program, 1 once a
/// parent set it (`seed_test`), 2 where the `set_flag` preload ran.
static FLAG: AtomicU32 = AtomicU32::new(0);

/// Preload hook: sets the flag to 2 and appends a line to the file named by
/// `MPCTL_TEST_PRELOAD_LOG`, so a test can count how often it ran.
fn set_flag() {
    FLAG.store(2, Ordering::SeqCst);
    if let Some(path) = std::env::var_os("MPCTL_TEST_PRELOAD_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("preload log");
        // One write: concurrent appends from several processes stay whole lines.
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
            .expect("preload log write");
    }
}

/// How often this process's pool initializer ran.
static INITIALIZED: AtomicU32 = AtomicU32::new(0);

/// Pool initializer: counts itself and appends this pid to `log`.
fn pool_init(log: String) {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("init log");
    // One write: concurrent appends from several processes stay whole lines.
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .expect("init log write");
}

/// The first call (no `marker` file yet) creates the marker and dies by
/// SIGKILL; later calls return the worker's pid.
fn die_once(marker: String) -> u32 {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    std::process::id()
}

/// Writes one byte to the FIFO `gate` (the test counts running tasks by
/// reading them), then sleeps `ms` with it still open.
fn announce_then_sleep((gate, ms): (String, u64)) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(gate)
        .expect("open the gate FIFO");
    f.write_all(b"x").expect("announce");
    std::thread::sleep(Duration::from_millis(ms));
}

/// Runs `f` on a fresh tokio runtime: functions that use the SDK from inside
/// a managed process.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(f)
}

#[derive(Serialize)]
struct ChildReport {
    name: String,
    parent_id: String,
    exitcode: Option<i32>,
    parent_name: Option<String>,
}

/// Starts `n` sleeping children and counts them with `active_children()`
/// (then terminates them), then starts `n` children running `parent_name`,
/// joins them, and reports what each saw.
fn spawn_children(n: u32) -> (usize, Vec<ChildReport>) {
    block_on(async move {
        let cluster = mpctl::Cluster::from_env()
            .await
            .expect("cluster from a managed process");
        let mut sleepers = Vec::new();
        for _ in 0..n {
            let mut p = mpctl::Process::function(&cluster, "sleep_ms", &60_000u64).unwrap();
            p.start().await.expect("start a child");
            sleepers.push(p);
        }
        let active = mpctl::active_children(&cluster).await.unwrap().len();
        for p in &mut sleepers {
            p.terminate().await.unwrap();
            p.join(None).await.unwrap();
        }
        let mut children = Vec::new();
        for _ in 0..n {
            let mut p = mpctl::Process::function(&cluster, "parent_name", &()).unwrap();
            p.start().await.expect("start a child");
            children.push(p);
        }
        let mut reports = Vec::new();
        for mut p in children {
            p.join(None).await.unwrap();
            reports.push(ChildReport {
                name: p.name().to_owned(),
                parent_id: p.info().unwrap().parent_id.clone(),
                exitcode: p.exitcode(),
                parent_name: p.result::<String>().and_then(Result::ok),
            });
        }
        (active, reports)
    })
}

fn parent_name(_: ()) -> String {
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let parent = mpctl::parent_process(&cluster)
            .await
            .unwrap()
            .expect("a parent");
        parent.name().to_owned()
    })
}

/// Tries to start a child; returns the error (a daemonic parent gets one).
fn try_child(_: ()) -> Option<String> {
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, "noop", &()).unwrap();
        p.start().await.err().map(|e| e.to_string())
    })
}

/// Starts a daemonic child that sleeps, returns its id, and exits.
fn start_daemon_child(_: ()) -> String {
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, "sleep_ms", &60_000u64)
            .unwrap()
            .daemon(true);
        p.start().await.unwrap();
        p.id().unwrap().to_owned()
    })
}

/// The seed test of docs/design.md §3, run inside a managed parent: set the flag, then start
/// one child per start method that reads it. Returns [spawn, forkserver, fork].
fn seed_test(_: ()) -> Vec<u32> {
    FLAG.store(1, Ordering::SeqCst);
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut seen = Vec::new();
        for method in [
            mpctl::StartMethod::Spawn,
            mpctl::StartMethod::Forkserver,
            mpctl::StartMethod::Fork,
        ] {
            let mut p = mpctl::Process::function(&cluster, "read_flag", &())
                .unwrap()
                .start_method(method)
                .preload(["set_flag"]);
            p.start().await.expect("start");
            p.join(None).await.unwrap();
            assert_eq!(p.exitcode(), Some(0), "{method:?}");
            seen.push(p.result::<u32>().unwrap().unwrap());
        }
        seen
    })
}

/// Forks a child that waits for `gate` (a FIFO) and exits 5, then returns
/// its id and exits itself, leaving the child an orphan.
fn fork_orphan(gate: String) -> String {
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, "gate_then_exit", &(gate, 5))
            .unwrap()
            .start_method(mpctl::StartMethod::Fork);
        p.start().await.expect("fork");
        p.id().unwrap().to_owned()
    })
}

/// Blocks until the FIFO `gate` is opened for writing and closed, then
/// exits with `code`.
fn gate_then_exit((gate, code): (String, i32)) {
    let _ = std::fs::read(gate);
    runtime::exit(code)
}

/// Waits for the gate, then returns `n` copies of `"\`: a result whose
/// JSON needs escaping at every character, twice over on the way out.
fn gate_then_return((gate, n): (String, usize)) -> String {
    let _ = std::fs::read(gate);
    "\"\\".repeat(n)
}

/// Forks a sleeping child, terminates (or kills) it, and reports its exit
/// code.
fn fork_and_signal(kill: bool) -> Option<i32> {
    block_on(async move {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, "sleep_ms", &60_000u64)
            .unwrap()
            .start_method(mpctl::StartMethod::Fork);
        p.start().await.expect("fork");
        if kill {
            p.kill().await.unwrap();
        } else {
            p.terminate().await.unwrap();
        }
        p.join(None).await.unwrap();
        p.exitcode()
    })
}

/// Forks a child of the given function and reports its exit code.
fn fork_and_join((function, arg): (String, serde_json::Value)) -> Option<i32> {
    block_on(async {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, &function, &arg)
            .unwrap()
            .start_method(mpctl::StartMethod::Fork);
        p.start().await.expect("fork");
        p.join(None).await.unwrap();
        p.exitcode()
    })
}

/// Dies of signal `signo` (any number, real-time ones included).
fn raise_signal(signo: i32) {
    let _ = mpctl_node::sys::pidfd::kill(std::process::id() as i32, signo);
    // Delivered before kill returns to a single-threaded process; never
    // return a result if it was not.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// What a forked child saw of the grandchild it started and joined.
#[derive(Serialize, serde::Deserialize)]
struct GrandchildReport {
    name: String,
    exitcode: Option<i32>,
}

/// Runs in a forked child, on its main thread: starts a child with start
/// method `method` that exits 7, joins it, and reports it.
fn start_and_join_grandchild(method: String) -> GrandchildReport {
    let method = match method.as_str() {
        "spawn" => mpctl::StartMethod::Spawn,
        "forkserver" => mpctl::StartMethod::Forkserver,
        _ => mpctl::StartMethod::Fork,
    };
    block_on(async move {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        // Made and never started: CPython numbers it all the same, so the
        // grandchild below is this process's second child (`…:2`).
        let _never_started = mpctl::Process::function(&cluster, "noop", &()).unwrap();
        let mut p = mpctl::Process::function(&cluster, "exit_with", &7)
            .unwrap()
            .start_method(method);
        p.start().await.expect("start the grandchild");
        p.join(None).await.unwrap();
        GrandchildReport {
            name: p.name().to_owned(),
            exitcode: p.exitcode(),
        }
    })
}

/// Forks a child that starts and joins its own child (by `method`);
/// reports the forked child's exit code and what it saw.
fn fork_a_parent(method: String) -> (Option<i32>, Option<GrandchildReport>) {
    block_on(async move {
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut p = mpctl::Process::function(&cluster, "start_and_join_grandchild", &method)
            .unwrap()
            .start_method(mpctl::StartMethod::Fork);
        p.start().await.expect("fork");
        p.join(None).await.unwrap();
        (p.exitcode(), p.result().and_then(Result::ok))
    })
}

/// This process's (RLIMIT_AS, RLIMIT_CPU) soft limits; u64::MAX is none.
fn rlimits(_: ()) -> (u64, u64) {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = |r| getrlimit(r).map_or(0, |(s, _)| s);
    (soft(Resource::RLIMIT_AS), soft(Resource::RLIMIT_CPU))
}

/// What a job could do with its job credential (docs/design.md §5).
#[derive(Serialize)]
struct JobProbe {
    /// `code: message` of registering as an agent over its job connection.
    register: String,
    /// `code: message` of killing, joining and reading the output of `other`.
    kill_other: String,
    join_other: String,
    logs_other: String,
    /// Its own child: exit code after start and join.
    child_exitcode: Option<i32>,
    /// What it tried to open with EACCES or success: (path, errno or 0).
    opened: Vec<(String, i32)>,
    uid: u32,
    gid: u32,
}

fn status_text(r: Result<(), tonic::Status>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Uses this job's own credential against the coordinator: registers as an
/// agent, kills, joins and reads the output of `other` (not its descendant),
/// then starts and joins a child of its own; tries to open each of `secrets`.
fn job_probe((other, secrets): (String, Vec<String>)) -> JobProbe {
    use mpctl_proto::v1 as pb;
    let opened = secrets
        .into_iter()
        .map(|p| {
            let errno = match std::fs::File::open(&p) {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            };
            (p, errno)
        })
        .collect();
    block_on(async move {
        let (addr, id, key, security) = runtime::cluster_credentials().expect("a managed process");
        let channel = mpctl_transport::connect_job(&addr, key, &id, security)
            .await
            .expect("the job key authenticates");
        let mut agents = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let register = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                name: "n1".into(),
                slots: 1,
                ..Default::default()
            })),
        };
        let register = status_text(
            agents
                .session(futures::stream::iter(vec![register]))
                .await
                .map(|_| ()),
        );
        let mut api = pb::process_manager_client::ProcessManagerClient::new(channel);
        let kill_other = status_text(
            api.kill(pb::SignalRequest {
                id: other.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        );
        let join_other = status_text(
            api.join(pb::JoinRequest {
                id: other.clone(),
                timeout_ms: Some(0),
            })
            .await
            .map(|_| ()),
        );
        let logs_other = status_text(
            api.logs(pb::LogsRequest {
                id: other.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        );
        let cluster = mpctl::Cluster::from_env().await.unwrap();
        let mut child = mpctl::Process::function(&cluster, "exit_with", &5).unwrap();
        child.start().await.expect("start its own child");
        child.join(None).await.expect("join its own child");
        JobProbe {
            register,
            kill_other,
            join_other,
            logs_other,
            child_exitcode: child.exitcode(),
            opened,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    })
}

#[derive(Serialize)]
struct TraceReport {
    id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// Opens a span of its own (exported when the child has export configured)
/// and reports the trace context its environment carried.
fn traced_child(_: ()) -> TraceReport {
    let span = tracing::info_span!("traced_child_work", answer = 42);
    let _entered = span.enter();
    tracing::info!("working inside the child's own span");
    let report = TraceReport {
        id: std::env::var("MPCTL_PROCESS_ID").ok(),
        traceparent: std::env::var("TRACEPARENT").ok(),
        tracestate: std::env::var("TRACESTATE").ok(),
    };
    // Also on stdout, for `mpctl run`, which prints the output.
    println!("{}", serde_json::to_string(&report).expect("JSON"));
    report
}

fn main() {
    Runtime::new()
        .function("job_probe", job_probe)
        .function("traced_child", traced_child)
        .function("rlimits", rlimits)
        .function("raise_signal", raise_signal)
        .function("start_and_join_grandchild", start_and_join_grandchild)
        .function("fork_a_parent", fork_a_parent)
        .function("seed_test", seed_test)
        .function("fork_orphan", fork_orphan)
        .function("gate_then_exit", gate_then_exit)
        .function("gate_then_return", gate_then_return)
        .function("fork_and_join", fork_and_join)
        .function("fork_and_signal", fork_and_signal)
        .function("spawn_children", spawn_children)
        .function("parent_name", parent_name)
        .function("try_child", try_child)
        .function("start_daemon_child", start_daemon_child)
        .preload("set_flag", set_flag)
        .preload("panic", || panic!("preload failed on purpose"))
        .function("read_flag", |(): ()| FLAG.load(Ordering::SeqCst))
        .function("parent_pid", |(): ()| nix::unistd::getppid().as_raw())
        .function("noop", |(): ()| ())
        .function("add", |(a, b): (i64, i64)| a + b)
        .function("exit_with", |code: i32| -> () { runtime::exit(code) })
        .function("panic_with", |message: String| -> () {
            panic!("{message}")
        })
        .fallible("fail_with", |message: String| -> Result<(), String> {
            Err(message)
        })
        .function("sleep_ms", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms))
        })
        .function("print_and_return", |text: String| {
            print!("{text}");
            text.len()
        })
        .function("whoami", whoami)
        // Pool tasks.
        .function("square", |x: i64| x * x)
        .function("mul", |(a, b): (i64, i64)| a * b)
        .function("worker_pid", |_: u64| std::process::id())
        .function("worker_pid_after_ms", |ms: u64| {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            std::process::id()
        })
        .function("pool_init", pool_init)
        .function("init_count", |(): ()| INITIALIZED.load(Ordering::SeqCst))
        .function("kill_self", |_: u64| -> u32 {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL")
        })
        .function("die_once", die_once)
        .function("announce_then_sleep", announce_then_sleep)
        .function("slow_echo", |(ms, x): (u64, i64)| {
            std::thread::sleep(Duration::from_millis(ms));
            x
        })
        .fallible("fail_on", |x: i64| -> Result<i64, String> {
            if x == 13 {
                Err(format!("unlucky {x}"))
            } else {
                Ok(x)
            }
        })
        .fallible("init_fails", |(): ()| -> Result<(), String> {
            Err("no database".into())
        })
        .init();
    eprintln!("mpctl-test-worker: run me as a function target (mpctl::Process::function)");
    std::process::exit(2);
}
