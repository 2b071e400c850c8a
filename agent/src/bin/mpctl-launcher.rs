//! `mpctl-launcher --dir DIR`: the node's long-lived process parent.
//! Normally started by the agent (see `mpctl_agent::launcher`), not by hand.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let dir = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--dir" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: mpctl-launcher --dir DIR");
            return ExitCode::from(2);
        }
    };
    match mpctl_agent::launcher::run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpctl-launcher: {e}");
            ExitCode::FAILURE
        }
    }
}
