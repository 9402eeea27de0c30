//! The `tidewater` binary as a test runs it: `run`, `coordinator` and `worker` processes with logs,
//! fail points, signals and HTTP.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{OAUTH_CLIENT, OAUTH_ENV, S3_KEY_ID, S3_SECRET, free_port, tidewater_bin, wait_for};

/// Sends signal `sig` (TERM, STOP, CONT, …) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid}");
    Ok(())
}

/// A `tidewater` process (`run`, `coordinator` or `worker`).
pub struct Tidewater {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Tidewater {
    /// Starts `tidewater run -f spec` with optional fail points; logs go to `log`.
    pub fn start(spec: &Path, log: &Path, failpoints: Option<&str>) -> Result<Self> {
        Self::start_with(spec, log, failpoints, &[])
    }

    /// `tidewater run -f spec EXTRA…`.
    pub fn start_with(
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = vec!["run".into(), "-f".into(), spec.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(&args, "--metrics-addr", log, failpoints)
    }

    /// `tidewater coordinator -f spec EXTRA…` on a free port.
    pub fn coordinator(
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::coordinator_at(free_port(), spec, log, failpoints, extra)
    }

    /// A coordinator on a given port (a restarted coordinator keeps its address, as behind
    /// a Kubernetes Service).
    pub fn coordinator_at(
        port: u16,
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "-f".into(),
            spec.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn_on(port, &args, "--listen", log, failpoints)
    }

    /// `tidewater worker --coordinator URL --name NAME`.
    pub fn worker(coordinator_url: &str, name: &str, log: &Path) -> Result<Self> {
        Self::worker_with(coordinator_url, name, log, None)
    }

    /// A worker with fail points armed.
    pub fn worker_with(
        coordinator_url: &str,
        name: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        Self::spawn(
            &worker_args(coordinator_url, name),
            "--metrics-addr",
            log,
            failpoints,
        )
    }

    /// A worker given no metrics address, as a user starts several on one host: it takes the
    /// first free port from 9465 up. `metrics_port` is 0 until the test learns the port (the
    /// coordinator's status names it).
    pub fn worker_on_default_port(coordinator_url: &str, name: &str, log: &Path) -> Result<Self> {
        Self::launch(&worker_args(coordinator_url, name), None, log, None)
    }

    /// The coordinator's base URL (for workers).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    fn spawn(
        args: &[String],
        addr_flag: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        Self::spawn_on(free_port(), args, addr_flag, log, failpoints)
    }

    /// `tidewater ARGS ADDR_FLAG 127.0.0.1:<free port>` with extra environment variables
    /// (e.g. `OTEL_*`).
    pub fn spawn_with_env(
        args: &[String],
        addr_flag: &str,
        log: &Path,
        env: &[(&str, String)],
    ) -> Result<Self> {
        Self::launch_env(args, Some((addr_flag, free_port())), log, None, env)
    }

    fn spawn_on(
        metrics_port: u16,
        args: &[String],
        addr_flag: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        Self::launch(args, Some((addr_flag, metrics_port)), log, failpoints)
    }

    /// Starts the binary with `args`, and `FLAG 127.0.0.1:PORT` when `addr` is given.
    fn launch(
        args: &[String],
        addr: Option<(&str, u16)>,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        Self::launch_env(args, addr, log, failpoints, &[])
    }

    fn launch_env(
        args: &[String],
        addr: Option<(&str, u16)>,
        log: &Path,
        failpoints: Option<&str>,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(tidewater_bin());
        cmd.args(args);
        let metrics_port = match addr {
            Some((flag, port)) => {
                cmd.arg(flag).arg(format!("127.0.0.1:{port}"));
                port
            }
            None => {
                cmd.env_remove("TIDEWATER_METRICS_ADDR");
                0
            }
        };
        cmd.env("RUST_LOG", "info,sqlx=warn,iceberg=warn,opendal=warn")
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env(OAUTH_ENV, format!("{}:{}", OAUTH_CLIENT.0, OAUTH_CLIENT.1))
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        match failpoints {
            Some(f) => cmd.env("TIDEWATER_FAILPOINTS", f),
            None => cmd.env_remove("TIDEWATER_FAILPOINTS"),
        };
        Ok(Self {
            child: Some(cmd.spawn()?),
            metrics_port,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, like `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (TERM, STOP, CONT).
    pub fn signal(&self, sig: &str) {
        let _ = signal(self.pid(), sig);
    }

    /// Exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for("process exit", timeout, || self.try_wait()).ok()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal("TERM");
        let status = self
            .wait_timeout(timeout)
            .context("tidewater did not stop after SIGTERM")?;
        self.child = None;
        Ok(status)
    }

    /// GET a path on the HTTP port.
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        self.http("GET", path, None)
    }

    /// POST a JSON body to a path on the HTTP port.
    pub fn http_post(&self, path: &str, json: &str) -> Result<(u16, String)> {
        self.http("POST", path, Some(json))
    }

    fn http(&self, method: &str, path: &str, json: Option<&str>) -> Result<(u16, String)> {
        crate::http(
            self.metrics_port,
            method,
            path,
            json.map(|b| ("application/json", b)),
        )
    }

    /// Stops the job with a savepoint (`POST /v1/savepoints {"stop": true}`) and waits for the
    /// process to exit successfully; returns the savepoint's path from the log.
    pub fn stop_with_savepoint(&mut self) -> Result<String> {
        let (code, body) = self.http_post("/v1/savepoints", r#"{"stop": true}"#)?;
        anyhow::ensure!(code == 202, "savepoint request: {code} {body}");
        let exit = self
            .wait_timeout(Duration::from_secs(60))
            .context("a stop savepoint ends the run")?;
        anyhow::ensure!(exit.success(), "{}", self.log_text());
        let line = self
            .log_text()
            .lines()
            .find(|l| l.contains("savepoint completed"))
            .map(str::to_string)
            .context("no 'savepoint completed' in the log")?;
        // JSON logs (`--log-format json`) or text (`path=…`).
        let path = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v["fields"]["path"].as_str().map(str::to_string),
            Err(_) => line
                .split("path=")
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
                .map(str::to_string),
        };
        path.with_context(|| format!("savepoint path in {line}"))
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = self.http_get("/v1/status")?;
        anyhow::ensure!(code == 200, "status {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until `/readyz` answers 200 (recovered and reading).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait_for("readyz", timeout, || match self.http_get("/readyz") {
            Ok((200, _)) => Some(()),
            _ => None,
        })
    }

    /// The value of a metric line (`name` including labels) from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").ok()?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tidewater {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `worker --coordinator URL --name NAME`.
pub fn worker_args(coordinator_url: &str, name: &str) -> Vec<String> {
    ["worker", "--coordinator", coordinator_url, "--name", name]
        .map(String::from)
        .to_vec()
}
