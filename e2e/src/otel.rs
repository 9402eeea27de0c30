//! A real OpenTelemetry collector (Rotel, from PyPI; `scripts/setup.sh` puts it in `bin/`)
//! receiving OTLP over gRPC and HTTP on 127.0.0.1 and exporting what it receives, as OTLP
//! JSON, to topics of the test broker, where the tests read it back.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Broker, free_port, repo_root, servers::Server, wait_owned_port};

/// Topic the collector writes traces to.
pub const TRACES_TOPIC: &str = "otlp_traces";
/// Topic the collector writes metrics to.
pub const METRICS_TOPIC: &str = "otlp_metrics";

/// A collector on two free ports.
pub struct Collector {
    _server: Server,
    /// OTLP/gRPC port.
    pub grpc_port: u16,
    /// OTLP/HTTP port.
    pub http_port: u16,
    log: PathBuf,
}

/// One span as the collector exported it.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// `service.name` of the process that sent it.
    pub service: String,
    /// The span's attributes (string form).
    pub attributes: BTreeMap<String, String>,
    /// The resource's attributes (string form).
    pub resource: BTreeMap<String, String>,
}

impl Collector {
    /// Starts the collector exporting to `broker` (its topics are created first).
    pub fn start(dir: &Path, broker: &Broker) -> Result<Self> {
        broker.create_topic(TRACES_TOPIC, 1)?;
        broker.create_topic(METRICS_TOPIC, 1)?;
        let (grpc_port, http_port) = (free_port(), free_port());
        let log = dir.join("collector.log");
        let out = std::fs::File::create(&log)?;
        let bin = repo_root().join("bin/rotel-agent");
        let child = Command::new(&bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "kafka"])
            .args(["--kafka-exporter-brokers", &broker.bootstrap])
            .args(["--kafka-exporter-format", "json"])
            .args(["--kafka-exporter-traces-topic", TRACES_TOPIC])
            .args(["--kafka-exporter-metrics-topic", METRICS_TOPIC])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {} (run scripts/setup.sh)", bin.display()))?;
        let mut server = Server(child);
        wait_owned_port(&mut server.0, http_port, "the OpenTelemetry collector")?;
        Ok(Self {
            _server: server,
            grpc_port,
            http_port,
            log,
        })
    }

    /// The collector's own log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every exported batch on `topic` (each message is a JSON array of OTLP resource objects).
pub fn exported_batches(broker: &Broker, topic: &str) -> Result<Vec<Value>> {
    let records = broker.consume_all(topic, usize::MAX, Duration::from_secs(3))?;
    let mut out = Vec::new();
    for r in records {
        let payload = r.payload.unwrap_or_default();
        let v: Value = serde_json::from_slice(&payload)
            .with_context(|| format!("OTLP JSON at offset {}", r.offset))?;
        match v {
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `[{key, value: {stringValue|intValue|…}}]` → key → value as text.
pub fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let v = kv["value"].as_object()?.values().next()?;
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            Some((key, text))
        })
        .collect()
}

/// The spans in the collector's trace topic.
pub fn exported_spans(broker: &Broker) -> Result<Vec<ExportedSpan>> {
    let mut out = Vec::new();
    for rs in exported_batches(broker, TRACES_TOPIC)? {
        let resource = attributes(&rs["resource"]["attributes"]);
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                out.push(ExportedSpan {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    service: service.clone(),
                    attributes: attributes(&s["attributes"]),
                    resource: resource.clone(),
                });
            }
        }
    }
    Ok(out)
}
