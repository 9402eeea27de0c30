//! End-to-end harness: starts real components (Tansu broker, PostgreSQL), produces events,
//! runs the `tidewater` binary as a separate process, and reads tables back through
//! independent readers (PyIceberg and DuckDB). Every server listens on 127.0.0.1 only and is
//! stopped when its handle drops.
#![allow(missing_docs, clippy::missing_panics_doc)]

pub mod cdc;
pub mod cluster;
mod kafka;
pub mod kubelet;
pub mod otel;
pub mod podman;
mod process;
mod prometheus;
mod readers;
mod servers;
mod spec;

pub use kafka::*;
pub use process::*;
pub use prometheus::*;
pub use readers::*;
pub use servers::*;
pub use spec::*;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Chooses rustls' ring provider for this process (the graph enables both ring and aws-lc-rs,
/// so rustls cannot choose and would panic at the first https handshake). Call before the
/// first kube client is built; repeated calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The operator binary next to [`tidewater_bin`] (`TIDEWATER_OPERATOR_BIN` overrides).
pub fn operator_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEWATER_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    tidewater_bin().with_file_name("tidewater-operator")
}

/// The `tidewater` binary built in the same target directory as the running test.
pub fn tidewater_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEWATER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/tidewater
    let bin = exe.parent().unwrap().parent().unwrap().join("tidewater");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p tidewater-runtime` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The Python of the project's venv (PyIceberg, DuckDB).
pub fn venv_python_path() -> PathBuf {
    venv_python()
}

fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, reserved for this test process for a few minutes.
///
/// The kernel may hand the same free port to two test processes that ask at nearly the same
/// time (nextest runs tests as parallel processes, and the port is only free until someone
/// binds it). A port is handed out only if its reservation file under the temp directory
/// could be created exclusively; reservations older than five minutes are reclaimed.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("tidewater-e2e-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = dir.join(port.to_string());
        let stale = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300));
        if stale {
            let _ = std::fs::remove_file(&file);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .is_ok()
        {
            return port;
        }
    }
    panic!(
        "no free port reservable in 100 attempts under {}",
        dir.display()
    );
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (Linux `/proc`).
///
/// Answers "is the server on this port the one this test started" where a connect would
/// also succeed against another test's server.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
}

/// Waits until `child` listens on `port`; an error if it exits first (port taken) or
/// another process holds the port.
fn wait_owned_port(child: &mut Child, port: u16, what: &str) -> Result<()> {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if listens_on(pid, port) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} on port {port} exited ({status}): port taken by another process?");
        }
        if Instant::now() > deadline {
            bail!("timed out after 60s waiting for {what} to listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port` with an optional (content type, body): the status
/// code and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    match body {
        Some((kind, b)) => write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )?,
        None => write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?,
    }
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let code = reply
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
