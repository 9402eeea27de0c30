//! The chart's monitoring against a real Prometheus scraping a running pipeline: every query
//! of the Grafana dashboard that is about pipelines returns data (rows and checkpoint latency
//! with real values), the alert rules load, the dead-letter alert fires on the first bad record,
//! and stopping the broker makes the no-commit alert go pending (an empty checkpoint counts as
//! a commit only while the broker answers).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;
use tidewater_e2e::{
    Broker, PipelineSpec, Prometheus, ScrapeTarget, Tidewater, repo_root, wait_for_rows,
};

/// The dashboard's queries with Grafana's variables set as a user with "All" selected sees
/// them: (panel title, expression).
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = repo_root().join("charts/tidewater/files/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"]
                .as_str()
                .context("expr")?
                .replace("$namespace", ".*")
                .replace("$pipeline", ".*")
                .replace("$__rate_interval", "2m")
                .replace("$__range", "5m");
            out.push((title.clone(), expr));
        }
    }
    Ok(out)
}

#[test]
fn prometheus_scrapes_a_pipeline_every_dashboard_query_has_data_and_alerts_fire() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.dead_letter = Some("clicks.dlq".into());
    spec.interval = "1s".into();
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;

    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    let rules: PathBuf = repo_root().join("charts/tidewater/files/prometheus-rules.yaml");
    let prom = Prometheus::start(
        dir.path(),
        &[ScrapeTarget {
            port: tw.metrics_port,
            labels: vec![
                ("namespace", "e2e".into()),
                ("pipeline", spec.name.clone()),
                ("pod", format!("{}-coordinator-0", spec.name)),
            ],
        }],
        &[rules],
    )?;
    // Everything happens while scraped: counters start at 0 in Prometheus' eyes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prom.targets_up()? < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "target never up: {}",
            prom.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let target_up = std::time::Instant::now();
    producer.send_events("clicks", 2, 0..2000)?;
    producer.flush()?;
    wait_for_rows(&spec, 2000, Duration::from_secs(90))?;
    // A rescale while scraped, so the rescale-pause panel has observations.
    let (code, body) = tw.http_post("/v1/parallelism", r#"{"workers": 1}"#)?;
    assert_eq!(code, 202, "{body}");
    producer.send_events("clicks", 2, 2000..3000)?;
    producer.flush()?;
    wait_for_rows(&spec, 3000, Duration::from_secs(90))?;
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(prom.targets_up()?, 1, "{}", prom.log_text());

    // A bad record: its reason's counter series is created at 1, which the rule counts as
    // new once the target has been scraped for a minute (its `up offset 1m` guard).
    let up_for = target_up.elapsed();
    if up_for < Duration::from_secs(62) {
        std::thread::sleep(Duration::from_secs(62) - up_for);
    }
    producer.send("clicks", 0, b"{not json")?;
    producer.flush()?;
    prom.wait_for_alert("TidewaterDeadLetters", Duration::from_secs(30))?;
    // A few more scrapes, so rates over the new series have two samples.
    std::thread::sleep(Duration::from_secs(3));
    let dead = prom.alerts()?;
    assert!(
        dead.iter()
            .any(|a| a["labels"]["alertname"] == "TidewaterDeadLetters"
                && a["labels"]["reason"] == "invalid-json"),
        "{dead:?}"
    );
    // Healthy so far: no commit alert.
    assert!(
        !dead
            .iter()
            .any(|a| a["labels"]["alertname"] == "TidewaterNoCommit"),
        "{dead:?}"
    );

    let mut empty = Vec::new();
    let queries = dashboard_queries()?;
    for (title, expr) in &queries {
        if expr.contains("tidewater_operator_") {
            // The operator needs a Kubernetes API server; its panel is checked where one runs.
            continue;
        }
        if prom.query(expr)?.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\n{}",
        empty.join("\n"),
        tw.log_text()
    );
    let checked = queries
        .iter()
        .filter(|(_, e)| !e.contains("tidewater_operator_"))
        .count();
    assert!(checked >= 20, "only {checked} pipeline queries");
    // Values, not just series: rows landed in the window, checkpoints took measurable time.
    let value = |expr: &str| -> Result<f64> {
        let r = prom.query(expr)?;
        Ok(r.first().context(expr.to_string())?["value"][1]
            .as_str()
            .unwrap_or("NaN")
            .parse()?)
    };
    let rows = value("sum(rate(tidewater_rows_committed_total[2m]))")?;
    assert!(
        rows > 0.0,
        "rows/s {rows}: {:?}",
        prom.query("tidewater_rows_committed_total[2m]")?
    );
    let p50 = value(
        "histogram_quantile(0.5, sum by (le) (rate(tidewater_checkpoint_duration_seconds_bucket[2m])))",
    )?;
    assert!(p50.is_finite() && p50 > 0.0, "checkpoint p50 {p50}");
    eprintln!(
        "observability: {checked} dashboard queries returned data; 2 operator queries SKIPPED here (no Kubernetes API server in this test)"
    );

    // The broker goes away: checkpoints still complete, empty, but the pipeline is not up to
    // date any more, so the no-commit alert goes pending within a few intervals.
    drop(broker);
    let state = prom.wait_for_alert("TidewaterNoCommit", Duration::from_secs(60))?;
    assert!(
        state == "pending" || state == "firing",
        "{state}: {}",
        tw.log_text()
    );
    let since = prom.query("tidewater_seconds_since_last_commit")?;
    let seconds: f64 = since[0]["value"][1].as_str().unwrap_or("0").parse()?;
    assert!(seconds > 3.0, "{since:?}");
    tw.kill9();
    Ok(())
}
