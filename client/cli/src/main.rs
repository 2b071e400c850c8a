//! `mpctl`: the command-line tool. See `mpctl --help`.

mod cli;

fn main() {
    // Started by an agent as a command pool's worker, this serves the
    // pool's tasks and never returns; otherwise it returns at once.
    mpctl::runtime::Runtime::new()
        .function(cli::map::COMMAND_FUNCTION, cli::map::run_command)
        .init();
    std::process::exit(cli::main());
}
