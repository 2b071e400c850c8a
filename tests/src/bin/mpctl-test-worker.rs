//! A program that serves function targets for the integration tests: each
//! function produces one of the outcomes of DESIGN §2.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The seed test's module-level flag: false in a fresh program, true where
/// the `set_flag` preload ran (a forkserver and the children it forks).
static FLAG: AtomicBool = AtomicBool::new(false);

/// Preload hook: sets the flag and appends a line to the file named by
/// `MPCTL_TEST_PRELOAD_LOG`, so a test can count how often it ran.
fn set_flag() {
    FLAG.store(true, Ordering::SeqCst);
    if let Some(path) = std::env::var_os("MPCTL_TEST_PRELOAD_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("preload log");
        writeln!(f, "{}", std::process::id()).expect("preload log write");
    }
}

fn main() {
    Runtime::new()
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
        .init();
    eprintln!("mpctl-test-worker: run me as a function target (mpctl::Process::function)");
    std::process::exit(2);
}
