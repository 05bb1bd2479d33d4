//! What the `kapal` binary's tests share: the binary, server processes that are stopped when
//! dropped, free loopback ports, and the CLI run as a user runs it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const KAPAL: &str = env!("CARGO_BIN_EXE_kapal");

/// A `kapal server` process, killed and reaped on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the CLI with the test's endpoint and config directory.
pub fn cli(endpoint: &str, config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(KAPAL)
        .args(args)
        .env("KAPAL_ENDPOINT", endpoint)
        .env("KAPAL_CONFIG_DIR", config)
        .env("KAPAL_PASSWORD", "correct horse 42")
        .env_remove("KAPAL_TOKEN")
        .stdin(Stdio::null())
        .output()?)
}

/// The CLI's standard output, or an error with everything it printed.
pub fn ok(out: Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "kapal failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
