//! A program that serves function targets for the integration tests: each
//! function produces one of the outcomes of DESIGN §2.

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

fn main() {
    Runtime::new()
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
