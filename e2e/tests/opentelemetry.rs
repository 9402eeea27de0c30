//! OpenTelemetry export against a real collector (Rotel) that forwards what it receives to the
//! test broker as OTLP JSON: a `tidewater run` exporting over OTLP/HTTP and a coordinator with a
//! worker process exporting over OTLP/gRPC, configured only by `OTEL_*` variables. Checks the
//! span tree of a checkpoint (the worker's flush is a child of the coordinator's barrier across
//! processes), recovery, rescale and savepoint spans, resource attributes, trace ids in the JSON
//! logs, and that the OTLP metrics are the `/metrics` instruments with the same values.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result};
use tidewater_e2e::{
    Broker, PipelineSpec, Tidewater,
    otel::{Collector, ExportedSpan, METRICS_TOPIC, attributes, exported_batches, exported_spans},
    wait_for_rows, worker_args,
};

fn otel_env(endpoint: String, protocol: &str, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_SERVICE_NAME", service.into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.namespace.name=e2e,deployment.environment=test".into(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]
}

fn named<'a>(spans: &'a [ExportedSpan], service: &str, name: &str) -> Vec<&'a ExportedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn parent_of<'a>(spans: &'a [ExportedSpan], s: &ExportedSpan) -> Option<&'a ExportedSpan> {
    spans
        .iter()
        .find(|p| p.trace_id == s.trace_id && p.span_id == s.parent_span_id)
}

/// Every `child` span of `service` has a parent named `parent` in the same trace.
fn assert_children(spans: &[ExportedSpan], child_service: &str, child: &str, parent: &str) {
    let children = named(spans, child_service, child);
    assert!(
        !children.is_empty(),
        "no {child} spans from {child_service}"
    );
    for c in children {
        let p = parent_of(spans, c)
            .unwrap_or_else(|| panic!("{child} {} has no exported parent", c.span_id));
        assert_eq!(p.name, parent, "{child}'s parent");
    }
}

#[test]
fn traces_and_metrics_reach_a_real_collector_over_http_and_grpc() -> Result<()> {
    let broker = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let collector = Collector::start(dir.path(), &broker)?;
    let producer = broker.producer()?;

    // 1. `tidewater run`, OTLP/HTTP protobuf, JSON logs: checkpoints, a rescale, a savepoint.
    broker.create_topic("clicks", 2)?;
    let spec = PipelineSpec::clicks(&dir.path().join("http"), &broker.bootstrap, "clicks");
    let file = dir.path().join("http.yaml");
    spec.write(&file)?;
    let args: Vec<String> = [
        "run",
        "-f",
        &file.display().to_string(),
        "--log-format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    let env = otel_env(
        format!("http://127.0.0.1:{}", collector.http_port),
        "http/protobuf",
        "clicks-http",
    );
    let log = dir.path().join("http.log");
    let mut tw = Tidewater::spawn_with_env(&args, "--metrics-addr", &log, &env)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    producer.send_events("clicks", 2, 0..2000)?;
    producer.flush()?;
    wait_for_rows(&spec, 2000, Duration::from_secs(90))?;
    let (code, body) = tw.http_post("/v1/parallelism", r#"{"workers": 1}"#)?;
    assert_eq!(code, 202, "{body}");
    std::thread::sleep(Duration::from_secs(3));
    let (code, scraped) = tw.http_get("/metrics")?;
    assert_eq!(code, 200);
    tw.stop_with_savepoint()?;

    // 2. Coordinator + worker processes, OTLP/gRPC.
    broker.create_topic("orders", 2)?;
    let mut spec2 = PipelineSpec::clicks(&dir.path().join("grpc"), &broker.bootstrap, "orders");
    spec2.name = "orders".into();
    spec2.table = "analytics.orders".into();
    let file2 = dir.path().join("grpc.yaml");
    spec2.write(&file2)?;
    let grpc = format!("http://127.0.0.1:{}", collector.grpc_port);
    let args: Vec<String> = ["coordinator", "-f", &file2.display().to_string()]
        .map(String::from)
        .to_vec();
    let mut coord = Tidewater::spawn_with_env(
        &args,
        "--listen",
        &dir.path().join("coord.log"),
        &otel_env(grpc.clone(), "grpc", "orders-coordinator"),
    )?;
    coord.wait_healthy(Duration::from_secs(30))?;
    let mut worker = Tidewater::spawn_with_env(
        &worker_args(&coord.url(), "w1"),
        "--metrics-addr",
        &dir.path().join("worker.log"),
        &otel_env(grpc, "grpc", "orders-worker"),
    )?;
    producer.send_events("orders", 2, 0..1000)?;
    producer.flush()?;
    wait_for_rows(&spec2, 1000, Duration::from_secs(90))?;
    worker.stop(Duration::from_secs(30))?;
    coord.stop(Duration::from_secs(30))?;

    // The collector batches for up to a second; give it a few.
    std::thread::sleep(Duration::from_secs(3));
    let spans = exported_spans(&broker)?;
    let names: BTreeSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    for name in [
        "recovery",
        "checkpoint",
        "barrier",
        "flush",
        "durable_record",
        "commit",
        "commit_table",
        "rescale",
        "savepoint",
    ] {
        assert!(
            names.contains(&("clicks-http", name)),
            "no {name} span over HTTP: {names:?}\ncollector: {}",
            collector.log_text()
        );
    }
    // The checkpoint's tree, in one process.
    for (child, parent) in [
        ("barrier", "checkpoint"),
        ("flush", "barrier"),
        ("durable_record", "checkpoint"),
        ("commit", "checkpoint"),
        ("commit_table", "commit"),
        ("savepoint", "checkpoint"),
    ] {
        assert_children(&spans, "clicks-http", child, parent);
    }
    let table = named(&spans, "clicks-http", "commit_table")[0];
    assert_eq!(
        table.attributes.get("table").map(String::as_str),
        Some("analytics.clicks")
    );
    assert_eq!(
        table.resource.get("k8s.namespace.name").map(String::as_str),
        Some("e2e")
    );
    // Across processes: the worker's flush is a child of the coordinator's barrier.
    assert!(
        names.contains(&("orders-coordinator", "checkpoint")),
        "no gRPC spans from the coordinator: {names:?}"
    );
    for flush in named(&spans, "orders-worker", "flush") {
        let parent = parent_of(&spans, flush).context("flush without its barrier")?;
        assert_eq!(
            (parent.service.as_str(), parent.name.as_str()),
            ("orders-coordinator", "barrier")
        );
    }
    assert_children(&spans, "orders-worker", "flush", "barrier");

    // Trace ids in the JSON logs lead to the exported checkpoint spans.
    let checkpoint_traces: BTreeSet<&str> = named(&spans, "clicks-http", "checkpoint")
        .iter()
        .map(|s| s.trace_id.as_str())
        .collect();
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "checkpoint complete")
        .collect();
    assert!(!logged.is_empty(), "no checkpoint log lines");
    for line in &logged {
        let id = line["trace_id"]
            .as_str()
            .with_context(|| format!("log line without trace_id: {line}"))?;
        assert!(
            checkpoint_traces.contains(id),
            "logged trace {id} was not exported"
        );
    }

    // Metrics: the /metrics instruments, with the values the registry had.
    let batches = exported_batches(&broker, METRICS_TOPIC)?;
    let mut otlp_names = BTreeSet::new();
    let mut rows_committed = Vec::new();
    for rm in &batches {
        if attributes(&rm["resource"]["attributes"]).get("service.name")
            != Some(&"clicks-http".to_string())
        {
            continue;
        }
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or_default().to_string();
                if name == "tidewater_rows_committed" {
                    assert_eq!(m["sum"]["isMonotonic"], true, "{m}");
                    for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
                        rows_committed.push(p["asDouble"].as_f64().unwrap_or(-1.0));
                    }
                }
                otlp_names.insert(name);
            }
        }
    }
    let scraped_names: BTreeSet<String> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = scraped_names.difference(&otlp_names).collect();
    // A family with no series yet (e.g. no dead letters) has nothing to export.
    let empty: BTreeSet<String> = scraped_names
        .iter()
        .filter(|n| {
            !scraped
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(n.as_str()))
        })
        .cloned()
        .collect();
    assert!(
        missing.iter().all(|n| empty.contains(*n)),
        "instruments on /metrics but not in OTLP: {missing:?}"
    );
    assert!(otlp_names.contains("tidewater_checkpoint_duration_seconds"));
    assert_eq!(
        rows_committed.iter().copied().fold(0.0, f64::max),
        2000.0,
        "rows committed as exported: {rows_committed:?}"
    );
    Ok(())
}
