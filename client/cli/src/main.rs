//! `mpctl`: the command-line tool. See `mpctl --help` and the crate's
//! library (`lib.rs`) for how it is built.

#![forbid(unsafe_code)]

fn main() {
    // Started by an agent as a command pool's worker, this serves the
    // pool's tasks and never returns; otherwise it returns at once.
    mpctl::runtime::Runtime::new()
        .function(
            mpctl_cli::map::COMMAND_FUNCTION,
            mpctl_cli::map::run_command,
        )
        .init();
    std::process::exit(mpctl_cli::main());
}
