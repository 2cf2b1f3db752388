//! The `ferrobeam` binary: the node (the default command) and its command-line clients.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
