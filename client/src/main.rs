//! `mpctl`: the command-line tool. See `mpctl --help`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
