//! `mpctl-runtime`: the child side of mpctl, how a program serves function
//! targets (the analogue of `Process(target=f, args=...)`). It runs in the
//! managed process on its node, after the launcher started it.
//!
//! Dependencies go one way: the SDK (`mpctl`) depends on this crate, never
//! the reverse. The runtime speaks only the node contract (preparation data,
//! descriptors, the forkserver and adoption sockets) and uses no async
//! runtime and no gRPC client (it still links them, through `mpctl-proto`
//! and `mpctl-transport`, until the node contract has a crate of its own);
//! the SDK needs it for the fork start method (it forks
//! the caller through [`fork`]) and to know whether this process is managed
//! ([`current_process`], the credentials its own children are started with).
//! A function target that starts processes itself links the SDK too; the
//! SDK re-exports this crate as `mpctl::runtime`.
//!
//! A program registers functions by name and calls [`Runtime::init`] early in
//! `main`. Started by an agent as a function target, `init` runs the
//! [`bootstrap`]: it reads the preparation data, runs the named function with
//! its decoded argument, writes the JSON result back and exits with CPython's
//! code; it never returns. Started any other way, `init` returns and the
//! program goes on as usual. Modules: `bootstrap` (spawn, and the common
//! part of every start method), `forkserver`, [`fork`], `pool_worker`,
//! [`telemetry`] (trace export, feature `telemetry`), and `sys` (the OS calls).
//!
//! ```no_run
//! fn add((a, b): (i64, i64)) -> i64 {
//!     a + b
//! }
//!
//! fn main() {
//!     mpctl_runtime::Runtime::new().function("add", add).init();
//!     // ... the program's own work, e.g. starting `add` on the cluster with
//!     // mpctl::Process::function(&cluster, "add", &(2, 3))
//! }
//! ```

mod bootstrap;
pub mod fork;
mod forkserver;
mod pool_worker;
mod sys;
#[cfg(feature = "telemetry")]
pub mod telemetry;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A registered function: JSON argument in, JSON result or an error message out.
type Entry = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;
type Preload = Box<dyn Fn() + Send + Sync>;

/// The functions this program can run as function targets, and the preload
/// hooks its forkservers may run.
#[derive(Default)]
pub struct Runtime {
    functions: BTreeMap<String, Entry>,
    preloads: BTreeMap<String, Preload>,
}

/// Who this process is, when it runs as a function target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentProcess {
    pub id: String,
    pub name: String,
    pub node: String,
    pub parent_id: String,
    /// The coordinator its processes are started through.
    pub coordinator: String,
    pub security: mpctl_transport::Security,
}

/// Who this process is; replaced in a forked child.
static CURRENT: Mutex<Option<CurrentProcess>> = Mutex::new(None);
/// The registry, kept by `init` so a forked child can run a function of it.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// The node launcher's adoption socket (for fork).
static ADOPT_SOCKET: OnceLock<String> = OnceLock::new();
/// Set in a forked child: it leaves with `_exit`, not running the
/// parent's exit handlers (as CPython's `os._exit` in fork children).
static FORKED: AtomicBool = AtomicBool::new(false);

/// How many Process objects this process has made (CPython's `_counter`
/// of the current process); starts again in every new process, a forked
/// child included.
static CHILDREN_MADE: AtomicU32 = AtomicU32::new(0);

fn set_current(me: CurrentProcess) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
    CHILDREN_MADE.store(0, Ordering::Relaxed);
}

/// The number of the next child this managed process makes, counted when the
/// SDK's `Process` object is made, as CPython's `BaseProcess.__init__` does
/// (`Process-N:k`). `None` outside a managed process, where the coordinator
/// numbers top-level processes when they start.
pub fn next_child_number() -> Option<u32> {
    CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
        .then(|| CHILDREN_MADE.fetch_add(1, Ordering::Relaxed) + 1)
}
/// This process's job key, from its preparation data: it authenticates to
/// the coordinator as this process only (its own subtree, while it runs),
/// never as the cluster. Kept apart from `CurrentProcess` so it is never
/// printed. Replaced, not set once: a forked child inherits its parent's
/// and then reads its own from its preparation data (each key is leaked:
/// one per process, plus one per fork).
static JOB_KEY: Mutex<Option<&'static mpctl_transport::JobKey>> = Mutex::new(None);

/// Makes `key` this process's job key.
pub(crate) fn set_job_key(key: mpctl_transport::JobKey) {
    *JOB_KEY.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::leak(Box::new(key)));
}

/// The coordinator, this process's id and its job key: what a managed
/// process uses to start and watch its own children.
pub fn cluster_credentials() -> Option<(
    String,
    String,
    &'static mpctl_transport::JobKey,
    mpctl_transport::Security,
)> {
    let me = current_process()?;
    let key = (*JOB_KEY.lock().unwrap_or_else(|e| e.into_inner()))?;
    (!me.coordinator.is_empty()).then(|| (me.coordinator.clone(), me.id.clone(), key, me.security))
}

/// This process, if it was started as a function target (like CPython's
/// `current_process()` in a child).
pub fn current_process() -> Option<CurrentProcess> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Ends a function target with exit code `code` (like `sys.exit(n)`), after
/// flushing stdout and stderr. `std::process::exit` would drop buffered output.
pub fn exit(code: i32) -> ! {
    #[cfg(feature = "telemetry")]
    telemetry::shutdown_child();
    bootstrap::flush_stdio();
    if FORKED.load(Ordering::SeqCst) {
        sys::exit_now(code)
    }
    std::process::exit(code)
}

fn decode<A: DeserializeOwned>(name: &str, args: &str) -> Result<A, String> {
    serde_json::from_str(args).map_err(|e| {
        format!(
            "cannot decode the argument of {name} as {}: {e}",
            std::any::type_name::<A>()
        )
    })
}

fn encode<R: Serialize>(name: &str, value: &R) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("cannot encode the result of {name}: {e}"))
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    /// Registers `f` under `name`. A return is exit code 0; a panic is 1.
    pub fn function<A, R, F>(mut self, name: &str, f: F) -> Runtime
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let owned = name.to_owned();
        self.functions.insert(
            name.to_owned(),
            Box::new(move |args| encode(&owned, &f(decode(&owned, args)?))),
        );
        self
    }

    /// Registers `f` under `name`; `Err(e)` ends the process with code 1 and
    /// `e` on stderr under the `Process NAME:` header, like an exception.
    pub fn fallible<A, R, E, F>(mut self, name: &str, f: F) -> Runtime
    where
        A: DeserializeOwned,
        R: Serialize,
        E: Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let owned = name.to_owned();
        self.functions.insert(
            name.to_owned(),
            Box::new(move |args| {
                let value = f(decode(&owned, args)?).map_err(|e| e.to_string())?;
                encode(&owned, &value)
            }),
        );
        self
    }

    /// Registers a preload hook: a forkserver started for this program with
    /// `name` in its preload list runs `hook` once, before it forks any child
    /// (load a model, import data). Children see what it set up.
    pub fn preload<F>(mut self, name: &str, hook: F) -> Runtime
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.preloads.insert(name.to_owned(), Box::new(hook));
        self
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// Started as a function target (spawn): runs the function and exits.
    /// Started as a forkserver: serves starts until its launcher goes away.
    /// Otherwise returns at once. Call it first in `main`, before any thread
    /// exists (a forkserver forks).
    pub fn init(self) {
        use mpctl_node::env::{BOOTSTRAP as ENV_BOOTSTRAP, FORKSERVER as ENV_FORKSERVER};
        let _ = RUNTIME.set(self);
        let Some(runtime) = RUNTIME.get() else {
            return;
        };
        if let Some(fd) = std::env::var_os(ENV_FORKSERVER) {
            forkserver::serve(runtime, &fd.to_string_lossy())
        }
        if let Some(fds) = std::env::var_os(ENV_BOOTSTRAP) {
            bootstrap::run(runtime, &fds.to_string_lossy())
        }
    }
}
