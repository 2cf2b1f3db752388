//! The `ferrobeam` binary: the node (the default command) and its command-line clients.

mod cli;

/// jemalloc returns freed memory to the kernel on a timer (background threads, 1 s decay: see
/// .cargo/config.toml); with glibc's malloc the node's RSS kept climbing under steady load while
/// its live heap stayed flat.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    ferrobeam::node::allocator::declare_jemalloc();
    cli::main()
}
