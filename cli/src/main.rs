//! `kapal`: runs Kapal's services (`kapal server`) and is its command-line client.

mod args;
mod commands;
mod connect;
mod output;
mod server;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: glibc raises its mmap threshold to the size of each large
/// block freed, after which the 19 MiB blocks of argon2id password hashes come from per-thread
/// arenas that keep the memory (measured: 359 MiB resident after a load test with sign-ups and
/// log-ins, against ~40 MiB of live data). mimalloc returns freed memory to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kapal",
    version,
    about = "Kapal: apps like n8n, Ghost and WordPress on Kubernetes, in minutes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Kapal's services: all four in one process (the default) or one of them.
    Server(Box<server::ServerArgs>),
    #[command(flatten)]
    Client(args::ClientCommand),
}

fn main() -> std::process::ExitCode {
    kapal::serve::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Client(cmd) => commands::run(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
