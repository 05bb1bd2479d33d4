//! `kapal`: runs Kapal's services (`kapal server`) and is its command-line client.

mod client;
mod server;

use clap::{Parser, Subcommand};

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
    Client(client::ClientCommand),
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
            Command::Client(cmd) => client::run(cmd).await,
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
