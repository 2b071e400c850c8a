//! The child side of a function target, mirroring CPython's `_bootstrap`:
//! read the preparation data, run the target, map the outcome to the exit
//! code, flush stdout and stderr, exit.
//!
//! Outcomes and exit codes: the function returned → its JSON result on the
//! result pipe, exit 0; [`super::exit`]`(n)` → n; the function returned
//! `Err` or panicked → 1, with `Process NAME:` and the message (and, for a
//! panic, where and a backtrace) on stderr; killed by signal N → −N (the
//! launcher sees that one).

use std::backtrace::Backtrace;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};

use mpctl_node::descriptors::{self, PREP_FD, RESULT_FD};
use mpctl_node::{Limits, Preparation, MAX_RESULT};

use super::{set_current, sys as fds, CurrentProcess, Runtime, ADOPT_SOCKET, FORKED};

pub fn flush_stdio() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Reports a failure under CPython's header and exits with 1.
pub(super) fn fail(name: &str, message: &str) -> ! {
    flush_stdio();
    eprintln!("Process {name}:\n{message}");
    super::exit(1)
}

/// Where a panic happened (` at file:line:col`, or empty) and its message.
pub(super) fn panic_text(info: &panic::PanicHookInfo<'_>) -> (String, String) {
    let location = info
        .location()
        .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into());
    (location, message)
}

/// Spawn: this program was exec'd with the bootstrap pipes on fds 3 and 4.
pub fn run(runtime: &Runtime, fds: &str) -> ! {
    let expected = descriptors::bootstrap_value();
    if fds != expected {
        fail(
            "(bootstrap)",
            &format!("MPCTL_BOOTSTRAP is {fds:?}, expected {expected:?}; was this program started by an mpctl agent?"),
        );
    }
    // Children of this process are not function targets by inheritance.
    // `Runtime::init` runs first in `main`, before any thread exists.
    #[allow(clippy::disallowed_methods)]
    std::env::remove_var(mpctl_node::env::BOOTSTRAP);
    run_prepared(runtime)
}

/// The common part of every start method, once the preparation pipe is on
/// fd 3 and the result pipe on fd 4.
pub fn run_prepared(runtime: &Runtime) -> ! {
    let prep = match read_preparation() {
        Ok(p) => p,
        Err(e) => fail(
            "(bootstrap)",
            &format!("cannot read the preparation data: {e}"),
        ),
    };
    let name = prep.name.clone();
    let result_pipe = match fds::bootstrap_pipe(RESULT_FD) {
        Ok(f) => f,
        Err(e) => fail(&name, &format!("cannot open the result pipe: {e}")),
    };
    execute(runtime, prep, result_pipe)
}

/// Fork: the child of a managed process, already holding its result pipe.
pub fn run_forked(
    runtime: &Runtime,
    prep: Preparation,
    result_pipe: std::fs::File,
    limits: Limits,
) -> ! {
    FORKED.store(true, std::sync::atomic::Ordering::SeqCst);
    // stdout and stderr stay the parent's, as in CPython.
    if let Err(e) = fds::set_up_forked_child(&[], limits) {
        fail(&prep.name, &format!("setting up the forked child: {e}"));
    }
    execute(runtime, prep, result_pipe)
}

/// Runs the target with CPython's outcome rules and exits.
fn execute(runtime: &Runtime, prep: Preparation, mut result_pipe: std::fs::File) -> ! {
    let name = prep.name.clone();
    set_current(CurrentProcess {
        id: prep.id.clone(),
        name: prep.name.clone(),
        node: prep.node.clone(),
        parent_id: prep.parent_id.clone(),
        coordinator: prep.coordinator.clone(),
        security: match prep.security {
            mpctl_node::Security::Plaintext => mpctl_transport::Security::PlaintextLoopback,
            mpctl_node::Security::Tls => mpctl_transport::Security::Tls,
        },
    });
    if let Some(key) = mpctl_transport::JobKey::from_hex(&prep.job_key) {
        super::set_job_key(key);
    }
    if !prep.adopt_socket.is_empty() {
        let _ = ADOPT_SOCKET.set(prep.adopt_socket.clone());
    }
    // A forked child is a copy of a process that may export already; it
    // exports nothing of its own (its copy of the exporter has no threads).
    #[cfg(feature = "telemetry")]
    if !FORKED.load(std::sync::atomic::Ordering::SeqCst) {
        super::telemetry::start_child(
            &mpctl_transport::trace::W3c {
                traceparent: prep.traceparent.clone(),
                tracestate: prep.tracestate.clone(),
            },
            if prep.function.is_empty() {
                "mpctl-child"
            } else {
                &prep.function
            },
        );
    }
    if prep.as_pool_worker().is_some() {
        drop(result_pipe);
        super::pool_worker::serve(runtime, prep)
    }
    let Some(function) = runtime.functions.get(&prep.function) else {
        let known: Vec<&str> = runtime.names().collect();
        fail(
            &name,
            &format!(
                "no function named {:?} is registered in this program (registered: {})",
                prep.function,
                known.join(", ")
            ),
        );
    };

    let header = name.clone();
    panic::set_hook(Box::new(move |info| {
        let (location, message) = panic_text(info);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        flush_stdio();
        eprintln!(
            "Process {header}:\nthread '{thread}' panicked{location}:\n{message}\nstack backtrace:\n{}",
            Backtrace::force_capture()
        );
    }));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| function(&prep.args)));
    let code = match outcome {
        Ok(Ok(json)) if json.len() > MAX_RESULT => fail(
            &name,
            &format!(
                "the result of {} takes {} bytes; the limit is {MAX_RESULT}",
                prep.function,
                json.len()
            ),
        ),
        Ok(Ok(json)) => match result_pipe.write_all(json.as_bytes()) {
            Ok(()) => 0,
            Err(e) => fail(&name, &format!("cannot write the result: {e}")),
        },
        Ok(Err(message)) => fail(&name, &message),
        // The hook has reported it.
        Err(_) => 1,
    };
    drop(result_pipe);
    super::exit(code)
}

fn read_preparation() -> Result<Preparation, String> {
    let mut pipe = fds::bootstrap_pipe(PREP_FD).map_err(|e| e.to_string())?;
    let mut text = String::new();
    pipe.read_to_string(&mut text).map_err(|e| e.to_string())?;
    drop(pipe);
    Preparation::decode(&text).map_err(|e| e.to_string())
}
