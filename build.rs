//! Generates Kapal's gRPC code from `proto/` with tonic-prost-build, compiling the protos in pure
//! Rust with protox (no system `protoc`). The encoded descriptor sets are written next to the
//! generated code for gRPC reflection: one with the public API only, one with everything.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut files = Vec::new();
    protos(Path::new("proto"), &mut files)?;
    files.sort();

    let all = protox::compile(&files, ["proto"])?;
    let public_files: Vec<_> = files
        .iter()
        .filter(|p| !p.starts_with("proto/kapal/internal"))
        .collect();
    let public = protox::compile(&public_files, ["proto"])?;
    std::fs::write(
        out_dir.join("kapal_public_descriptor.bin"),
        prost::Message::encode_to_vec(&public),
    )?;
    std::fs::write(
        out_dir.join("kapal_descriptor.bin"),
        prost::Message::encode_to_vec(&all),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(all)?;
    Ok(())
}
