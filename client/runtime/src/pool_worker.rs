//! A pool worker's loop (docs/design.md §7), CPython's `multiprocessing.pool.worker`:
//! connect to the node's agent over its pool socket, run the initializer
//! once, then run tasks as they arrive and answer each at once, until told
//! to stop, until maxtasksperchild tasks are done, or until the agent goes
//! away. A task that fails (an `Err` or a panic) is answered with its
//! message; the worker goes on.

use std::cell::RefCell;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};

use mpctl_node::{worker_frame, Preparation};
use mpctl_proto::v1::{
    agent_to_worker, worker_to_agent, AgentToWorker, PoolErrorKind, PoolTask, PoolTaskError,
    PoolTaskResult, WorkerHello, WorkerInitFailed, WorkerReady, WorkerToAgent,
};
use serde_json::value::RawValue;

use super::Runtime;

/// Largest answer to one task (all its items' results).
const MAX_TASK_RESULT: usize = worker_frame::MAX_FRAME - (64 << 10);

thread_local! {
    /// The last panic's message and place, for the task's error.
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub fn serve(runtime: &Runtime, prep: Preparation) -> ! {
    let name = prep.name.clone();
    let fail = |message: String| -> ! { super::bootstrap::fail(&name, &message) };
    let Some(pool) = prep.as_pool_worker() else {
        fail("started as a pool worker without a pool socket".into())
    };
    let maxtasks = pool.maxtasks;
    let mut sock = match UnixStream::connect(pool.socket) {
        Ok(s) => s,
        Err(e) => fail(format!(
            "cannot reach the agent's pool socket {}: {e}",
            pool.socket
        )),
    };
    let hello = WorkerToAgent {
        msg: Some(worker_to_agent::Msg::Hello(WorkerHello {
            process_id: prep.id.clone(),
            key: pool.key.to_owned(),
        })),
    };
    if let Err(e) = sock.write_all(&worker_frame::encode(&hello)) {
        fail(format!("cannot greet the agent: {e}"));
    }
    panic::set_hook(Box::new(|info| {
        let (at, message) = super::bootstrap::panic_text(info);
        PANIC.with(|p| *p.borrow_mut() = Some(format!("panicked{at}: {message}")));
    }));

    if !prep.function.is_empty() {
        if let Err(message) = call(runtime, &prep.function, &prep.args) {
            let frame = WorkerToAgent {
                msg: Some(worker_to_agent::Msg::InitFailed(WorkerInitFailed {
                    message: message.clone(),
                })),
            };
            let _ = sock.write_all(&worker_frame::encode(&frame));
            wait_until_read(&sock);
            fail(format!(
                "the initializer {} failed: {message}",
                prep.function
            ));
        }
    }
    let ready = WorkerToAgent {
        msg: Some(worker_to_agent::Msg::Ready(WorkerReady {})),
    };
    if let Err(e) = sock.write_all(&worker_frame::encode(&ready)) {
        fail(format!("cannot tell the agent it is ready: {e}"));
    }

    let mut reader = match sock.try_clone() {
        Ok(s) => BufReader::with_capacity(256 << 10, s),
        Err(e) => fail(format!("pool socket: {e}")),
    };
    let mut done: u32 = 0;
    loop {
        let msg = match worker_frame::read_blocking::<AgentToWorker>(&mut reader) {
            Ok(Some(m)) => m.msg,
            // The agent went away (or closed the pool's connection): leave,
            // as CPython's worker does on EOF.
            Ok(None) => super::exit(0),
            Err(e) => fail(format!("pool socket: {e}")),
        };
        match msg {
            Some(agent_to_worker::Msg::Tasks(batch)) => {
                for task in batch.tasks {
                    let answer = run_task(runtime, task);
                    let frame = WorkerToAgent {
                        msg: Some(worker_to_agent::Msg::Result(answer)),
                    };
                    // One write per answer: if this worker dies, every task
                    // it finished has been answered.
                    if let Err(e) = sock.write_all(&worker_frame::encode(&frame)) {
                        fail(format!("cannot send a result to the agent: {e}"));
                    }
                    done += 1;
                    if maxtasks > 0 && done >= maxtasks {
                        super::exit(0);
                    }
                }
            }
            Some(agent_to_worker::Msg::Stop(_)) => super::exit(0),
            None => {}
        }
    }
}

/// Runs a registered function on one JSON argument, catching panics.
fn call(runtime: &Runtime, function: &str, args: &str) -> Result<String, String> {
    let Some(f) = runtime.functions.get(function) else {
        let known: Vec<&str> = runtime.names().collect();
        return Err(format!(
            "no function named {function:?} is registered in this program (registered: {})",
            known.join(", ")
        ));
    };
    match panic::catch_unwind(AssertUnwindSafe(|| f(args))) {
        Ok(r) => r,
        Err(_) => Err(PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panicked".into())),
    }
}

/// A task is a chunk: its items' results in order (a JSON array), or the
/// first item's failure.
fn run_task(runtime: &Runtime, task: PoolTask) -> PoolTaskResult {
    match run_items(runtime, &task) {
        Ok(values) => PoolTaskResult {
            id: task.id,
            values,
            error: None,
        },
        Err(message) => PoolTaskResult {
            id: task.id,
            values: Vec::new(),
            error: Some(PoolTaskError {
                kind: PoolErrorKind::TaskFailed as i32,
                message: format!("{}: {message}", task.function),
                ..Default::default()
            }),
        },
    }
}

fn run_items(runtime: &Runtime, task: &PoolTask) -> Result<Vec<u8>, String> {
    let items: Vec<&RawValue> = serde_json::from_slice(&task.items)
        .map_err(|e| format!("the task's arguments are not a JSON array: {e}"))?;
    if items.len() != task.count as usize {
        return Err(format!(
            "the task announces {} items and carries {}",
            task.count,
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(task.items.len() + 2);
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        let json = call(runtime, &task.function, item.get())?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(json.as_bytes());
        if out.len() > MAX_TASK_RESULT {
            return Err(format!(
                "the results of this task take over {MAX_TASK_RESULT} bytes; use a smaller chunksize"
            ));
        }
    }
    out.push(b']');
    Ok(out)
}

/// Ends our side of the connection and waits (bounded) until the agent has
/// closed its side: it has then read everything we wrote, so what we said
/// reaches the coordinator before this process's exit does. Without this, an
/// exit right after connecting could be reported before the agent had even
/// read the hello, and an initializer's failure would look like a crash.
fn wait_until_read(mut sock: &UnixStream) {
    use std::io::Read;
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut sink = [0u8; 4096];
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
}
