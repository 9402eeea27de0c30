//! A real Prometheus server (Debian's package, started by the tests on 127.0.0.1) that scrapes
//! the given targets every second and evaluates rule files; queried through its HTTP API.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{free_port, http, servers::Server, wait_owned_port};

/// One scrape target: a port on 127.0.0.1 and the labels the chart's PodMonitor would add.
pub struct ScrapeTarget {
    pub port: u16,
    pub labels: Vec<(&'static str, String)>,
}

/// A Prometheus server on a free port.
pub struct Prometheus {
    _server: Server,
    pub port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `targets` every second and evaluating `rule_files`
    /// every second.
    pub fn start(dir: &Path, targets: &[ScrapeTarget], rule_files: &[PathBuf]) -> Result<Self> {
        let port = free_port();
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|t| {
                let labels: serde_json::Map<String, Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
                    .collect();
                serde_json::json!({"targets": [format!("127.0.0.1:{}", t.port)], "labels": labels})
            })
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "scrape_configs": [{"job_name": "tidewater", "static_configs": static_configs}],
        });
        // JSON is YAML: Prometheus reads it as its config file.
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("prometheus (scripts/setup.sh installs Debian's package)")?;
        let mut server = Server(child);
        wait_owned_port(&mut server.0, port, "prometheus")?;
        // The port opens before the storage is up; the API answers 503 until /-/ready does.
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/-/ready", None)?.0 != 200 {
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after 60 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Self {
            _server: server,
            port,
            log,
        })
    }

    /// Prometheus' own log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `data` of an API answer, or an error with what Prometheus said.
    fn api(&self, method: &str, path: &str, form: Option<&str>) -> Result<Value> {
        let body = form.map(|f| ("application/x-www-form-urlencoded", f));
        let (code, text) = http(self.port, method, path, body)?;
        let answer: Value =
            serde_json::from_str(&text).with_context(|| format!("{path}: {code} {text}"))?;
        if answer["status"] != "success" {
            bail!("{path}: {code} {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// The result vector of an instant query.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(
            "POST",
            "/api/v1/query",
            Some(&format!("query={}", form_encode(expr))),
        )?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The active alerts (`labels`, `state`: pending or firing).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let data = self.api("GET", "/api/v1/alerts", None)?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Targets that are up, by scrape URL.
    pub fn targets_up(&self) -> Result<usize> {
        let data = self.api("GET", "/api/v1/targets", None)?;
        Ok(data["activeTargets"]
            .as_array()
            .map_or(0, |ts| ts.iter().filter(|t| t["health"] == "up").count()))
    }

    /// Polls until `alert` is active (pending or firing); returns its state.
    pub fn wait_for_alert(&self, alert: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts()?;
            if let Some(a) = alerts.iter().find(|a| a["labels"]["alertname"] == alert) {
                return Ok(a["state"].as_str().unwrap_or_default().to_string());
            }
            if Instant::now() > deadline {
                bail!("{alert} not active after {timeout:?}; active: {alerts:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
