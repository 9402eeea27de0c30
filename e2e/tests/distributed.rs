//! The distributed runtime as separate processes: a coordinator, workers that join and leave
//! over HTTP, savepoints, live rescaling and a worker cut off from the coordinator. Data,
//! metadata and checkpoint state live in S3 (moto) behind the project's REST catalog test
//! server; PyIceberg and DuckDB count what landed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tidewater_e2e::{BackgroundProducer, Broker, Moto, PipelineSpec, RestCatalog, Tidewater, wait_for_rows};

const HEARTBEAT: &str = "3s";

/// Broker, moto, REST catalog and a pipeline spec on them (kept alive together).
struct Stack {
    broker: Broker,
    _moto: Moto,
    _rest: RestCatalog,
    dir: tempfile::TempDir,
    spec: PipelineSpec,
    file: std::path::PathBuf,
}

impl Stack {
    fn start(partitions: i32, parallelism: u32) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let broker = Broker::start()?;
        broker.create_topic("clicks", partitions)?;
        let moto = Moto::start("lake", &dir.path().join("moto.log"))?;
        let rest = RestCatalog::start(
            dir.path(),
            "s3://lake/warehouse",
            &moto.props(),
            "test-token-1",
            &[],
        )?;
        let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks")
            .on_rest_and_s3(dir.path(), &rest, &moto)?;
        spec.parallelism = parallelism;
        let file = dir.path().join("pipeline.yaml");
        spec.write(&file)?;
        Ok(Self {
            broker,
            _moto: moto,
            _rest: rest,
            dir,
            spec,
            file,
        })
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn coordinator(&self, extra: &[&str]) -> Result<Tidewater> {
        let mut args = vec!["--heartbeat-timeout", HEARTBEAT];
        args.extend_from_slice(extra);
        let c = Tidewater::coordinator(&self.file, &self.log("coordinator"), None, &args)?;
        c.wait_healthy(Duration::from_secs(60))
            .with_context(|| c.log_text())?;
        Ok(c)
    }

    fn worker(&self, coordinator: &Tidewater, name: &str) -> Result<Tidewater> {
        Tidewater::worker(&coordinator.url(), name, &self.log(name))
    }

    fn assert_exactly_once(&self, produced: u64) -> Result<()> {
        let view = self.spec.inspect()?;
        assert_eq!(view.pyiceberg_rows, produced, "PyIceberg rows: {view:?}");
        assert_eq!(view.pyiceberg_distinct, produced, "PyIceberg distinct ids");
        assert_eq!(view.duckdb_rows, produced, "DuckDB rows");
        assert_eq!(view.duckdb_distinct, produced, "DuckDB distinct ids");
        Ok(())
    }
}

/// Waits until the coordinator's status says `n` workers own partitions.
fn wait_owning_workers(c: &Tidewater, n: usize, timeout: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = c.status()?;
        let owning = status["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter(|w| w["partitions"].as_array().is_some_and(|p| !p.is_empty()))
                    .count()
            })
            .unwrap_or(0);
        let unowned = status["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["worker"].is_null()).count())
            .unwrap_or(1);
        if owning == n && unowned == 0 {
            return Ok(status);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} workers never owned all partitions; status: {status:#}\nlog:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rescale_one_to_three_to_two_workers_during_ingestion() -> Result<()> {
    let stack = Stack::start(6, 1)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 6, 2000)?;
    let c = stack.coordinator(&[])?;
    let _w1 = stack.worker(&c, "w1")?;
    wait_owning_workers(&c, 1, Duration::from_secs(60))?;
    wait_for_rows(&stack.spec, 1000, Duration::from_secs(60))?;

    // 1 → 3: two workers join and the target goes up; partitions move at a barrier.
    let _w2 = stack.worker(&c, "w2")?;
    let mut w3 = stack.worker(&c, "w3")?;
    let (code, body) = c.http_post("/v1/parallelism", r#"{"workers": 3}"#)?;
    assert_eq!(code, 202, "{body}");
    let status = wait_owning_workers(&c, 3, Duration::from_secs(60))?;
    for w in status["workers"].as_array().unwrap() {
        assert_eq!(w["partitions"].as_array().unwrap().len(), 2, "{status:#}");
    }
    std::thread::sleep(Duration::from_secs(3));

    // 3 → 2: the target goes down and w3 leaves (SIGTERM: graceful, its partitions move).
    let (code, _) = c.http_post("/v1/parallelism", r#"{"workers": 2}"#)?;
    assert_eq!(code, 202);
    w3.signal("TERM");
    let status = wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    let exit = w3
        .wait_timeout(Duration::from_secs(30))
        .context("w3 did not exit after SIGTERM")?;
    assert!(exit.success(), "w3 exit {exit:?}: {}", w3.log_text());
    for w in status["workers"].as_array().unwrap() {
        assert_eq!(w["partitions"].as_array().unwrap().len(), 3, "{status:#}");
    }
    std::thread::sleep(Duration::from_secs(3));

    let produced = producer.finish()?;
    wait_for_rows(&stack.spec, produced, Duration::from_secs(120))?;
    let pauses = c.metric("tidewater_rescale_pause_seconds_count").unwrap_or(0.0);
    let pause_sum = c.metric("tidewater_rescale_pause_seconds_sum").unwrap_or(0.0);
    let aborted = c.metric("tidewater_checkpoints_aborted_total").unwrap_or(-1.0);
    eprintln!(
        "rescale: {pauses} moves, mean pause {:.1} ms, {aborted} aborted checkpoints, {produced} events",
        pause_sum / pauses.max(1.0) * 1000.0
    );
    assert!(pauses >= 2.0, "two rescales should have moved partitions");
    assert!(
        pause_sum / pauses < 1.0,
        "the pause must stay below one checkpoint interval (1 s)"
    );
    assert_eq!(aborted, 0.0, "a planned rescale aborts no checkpoint");
    let mut c = c;
    assert!(c.stop(Duration::from_secs(60))?.success(), "{}", c.log_text());
    stack.assert_exactly_once(produced)
}
