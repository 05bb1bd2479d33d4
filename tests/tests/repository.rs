//! No secret is tracked in git: every tracked file (what `git ls-files` lists, as a clone would
//! get it) is checked for what keys and tokens look like. A server's data directory
//! (`kapal-data/`, with its `internal.key`) once was; whoever ran `kapal server` from `cli/`
//! signed identities with a key anyone could read.
//!
//! The checks are deliberately simple and tell what they found and where, so a false alarm is
//! easy to see; a real secret is removed from git (and rotated), never allow-listed here.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};

/// One suspicious thing in one file.
#[derive(Debug, PartialEq, Eq)]
struct Finding {
    path: String,
    what: String,
}

/// File names and folders that hold secrets or data, whatever their content.
fn by_path(path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if path.split('/').any(|part| part == "kapal-data") {
        return Some("a server's data directory (kapal-data/)".into());
    }
    let lower = name.to_ascii_lowercase();
    let secret_names = ["internal.key", "id_rsa", "id_ecdsa", "id_ed25519", ".env"];
    if secret_names.contains(&lower.as_str()) {
        return Some(format!("a file named {name}"));
    }
    for ext in [".key", ".p12", ".pfx", ".jks", ".db", ".sqlite", ".db-wal"] {
        if lower.ends_with(ext) {
            return Some(format!("a {ext} file"));
        }
    }
    None
}

fn run_of(line: &str, start: usize, allowed: impl Fn(u8) -> bool) -> usize {
    line.as_bytes()[start..]
        .iter()
        .take_while(|b| allowed(**b))
        .count()
}

fn base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Lines that look like a key or a token.
fn by_content(content: &str) -> Option<String> {
    let pem_begin = "-----BEGIN ";
    let pem_private = "PRIVATE KEY-----";
    for (n, line) in content.lines().enumerate() {
        let at = |what: &str| Some(format!("{what} on line {}", n + 1));
        if line.contains(pem_begin) && line.contains(pem_private) {
            return at("a PEM private key");
        }
        // Kapal's own bearer tokens: kpt_ (API) and kps_ (session) + 43 base64url characters.
        for prefix in ["kpt_", "kps_"] {
            for (i, _) in line.match_indices(prefix) {
                if run_of(line, i + prefix.len(), base64url) >= 43 {
                    return at("a Kapal bearer token");
                }
            }
        }
        for (i, _) in line.match_indices("AKIA") {
            if run_of(line, i + 4, |b| {
                b.is_ascii_uppercase() || b.is_ascii_digit()
            }) >= 16
            {
                return at("an AWS access key id");
            }
        }
        for prefix in ["ghp_", "github_pat_", "glpat-", "xoxb-", "xoxp-"] {
            for (i, _) in line.match_indices(prefix) {
                if run_of(line, i + prefix.len(), base64url) >= 20 {
                    return at("a hosted service's access token");
                }
            }
        }
    }
    // A small file that is one long random-looking word: how a bare key file looks (the
    // internal key was 64 hex characters).
    let trimmed = content.trim();
    if content.len() <= 256
        && trimmed.len() >= 32
        && !trimmed.contains(char::is_whitespace)
        && trimmed
            .bytes()
            .all(|b| base64url(b) || b == b'+' || b == b'/' || b == b'=')
    {
        return Some("a file holding nothing but a key-like string".into());
    }
    None
}

/// Every tracked file of the repository at `root` with something secret-looking.
fn scan(root: &Path) -> anyhow::Result<Vec<Finding>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .context("running git ls-files")?;
    ensure!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut findings = Vec::new();
    for path in String::from_utf8(out.stdout)?.split('\0') {
        if path.is_empty() {
            continue;
        }
        let what = by_path(path).or_else(|| {
            // Binary or unreadable (e.g. deleted in the work tree): the path check must do.
            std::fs::read_to_string(root.join(path))
                .ok()
                .and_then(|content| by_content(&content))
        });
        if let Some(what) = what {
            findings.push(Finding {
                path: path.to_string(),
                what,
            });
        }
    }
    Ok(findings)
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn no_key_or_token_is_tracked_in_git() -> anyhow::Result<()> {
    let findings = scan(&repo_root())?;
    ensure!(
        findings.is_empty(),
        "secrets are tracked in git (remove them with `git rm --cached`, rotate them, and ignore the path):\n{}",
        findings
            .iter()
            .map(|f| format!("  {}: {}", f.path, f.what))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// The scan itself can fail: a repository with a planted key, token and data directory.
#[test]
fn a_tracked_key_token_or_data_directory_is_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .output()?;
        ensure!(out.status.success(), "git {args:?}: {out:?}");
        Ok(())
    };
    git(&["init", "-q"])?;
    let write = |path: &str, content: &str| -> anyhow::Result<()> {
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(full, content)?;
        Ok(())
    };
    let random = "edc8428a88ae2d7f0858aa11bb22cc33dd44ee55ff6677889900aabbccddeeff";
    write("cli/data/secret.txt", random)?;
    write("cli/kapal-data/control-plane.db-shm", "x")?;
    write(
        "src/config.rs",
        &format!("const TOKEN: &str = \"kpt_{}\";\n", "A".repeat(43)),
    )?;
    write(
        "deploy/tls.pem",
        // Written in pieces, so that this file holds no line that looks like a key.
        &format!(
            "-----BEGIN RSA {}\nMIIE\n",
            ["PRIVATE", " KEY-----"].concat()
        ),
    )?;
    write("deploy/aws.yaml", &format!("key: AKIA{}\n", "Z".repeat(16)))?;
    // Not secrets: prose, a placeholder, a token prefix with no token, a hash in a lock file.
    write(
        "README.md",
        "Tokens start with kpt_ or kps_; replace REPLACE-ME.\n",
    )?;
    write(
        "Cargo.lock",
        &format!("checksum = \"{random}\"\nname = \"x\"\n"),
    )?;
    git(&["add", "-A"])?;
    let mut found: Vec<(String, String)> = scan(dir.path())?
        .into_iter()
        .map(|f| (f.path, f.what))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "cli/data/secret.txt".to_string(),
                "a file holding nothing but a key-like string".to_string()
            ),
            (
                "cli/kapal-data/control-plane.db-shm".to_string(),
                "a server's data directory (kapal-data/)".to_string()
            ),
            (
                "deploy/aws.yaml".to_string(),
                "an AWS access key id on line 1".to_string()
            ),
            (
                "deploy/tls.pem".to_string(),
                "a PEM private key on line 1".to_string()
            ),
            (
                "src/config.rs".to_string(),
                "a Kapal bearer token on line 1".to_string()
            ),
        ]
    );
    Ok(())
}
