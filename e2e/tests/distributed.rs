//! The distributed runtime as separate processes: a coordinator, workers that join and leave
//! over HTTP, savepoints, live rescaling and a worker cut off from the coordinator. Data,
//! metadata and checkpoint state live in S3 (moto) behind the project's REST catalog test
//! server; PyIceberg and DuckDB count what landed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tidewater_e2e::{
    BackgroundProducer, Broker, Moto, PipelineSpec, RestCatalog, Tidewater, wait_for_rows,
};

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

    /// Stops the producer, waits until everything landed, stops the coordinator cleanly and
    /// checks exactly-once; returns how many events were produced.
    fn finish(&self, producer: BackgroundProducer, c: &mut Tidewater) -> Result<u64> {
        let produced = producer.finish()?;
        wait_for_rows(&self.spec, produced, Duration::from_secs(120))?;
        assert!(
            c.stop(Duration::from_secs(60))?.success(),
            "{}",
            c.log_text()
        );
        self.assert_exactly_once(produced)?;
        Ok(produced)
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
        // Only active workers count; a leaving worker still holding partitions means the
        // hand-over has not happened yet.
        let holds =
            |w: &serde_json::Value| w["partitions"].as_array().is_some_and(|p| !p.is_empty());
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        let owning = workers
            .iter()
            .filter(|w| holds(w) && w["state"] == "active")
            .count();
        let leaving_with_partitions = workers.iter().any(|w| holds(w) && w["state"] != "active");
        let unowned = status["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["worker"].is_null()).count())
            .unwrap_or(1);
        if owning == n && unowned == 0 && !leaving_with_partitions {
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
    let pauses = c
        .metric("tidewater_rescale_pause_seconds_count")
        .unwrap_or(0.0);
    let pause_sum = c
        .metric("tidewater_rescale_pause_seconds_sum")
        .unwrap_or(0.0);
    let aborted = c
        .metric("tidewater_checkpoints_aborted_total")
        .unwrap_or(-1.0);
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
    assert!(
        c.stop(Duration::from_secs(60))?.success(),
        "{}",
        c.log_text()
    );
    stack.assert_exactly_once(produced)
}

/// The README's example as a new user runs it: two workers on one host, neither given a metrics
/// address. The second takes the next free port instead of exiting with "Address already in
/// use"; the coordinator's status names both addresses and each serves its own `/metrics`.
#[test]
fn workers_on_one_host_without_a_metrics_address_take_the_next_free_port() -> Result<()> {
    let stack = Stack::start(4, 2)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 4, 1000)?;
    let mut c = stack.coordinator(&[])?;
    let mut w1 = Tidewater::worker_on_default_port(&c.url(), "w1", &stack.log("w1"))?;
    let mut w2 = Tidewater::worker_on_default_port(&c.url(), "w2", &stack.log("w2"))?;
    let status = wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    let addr_of = |name: &str| -> Result<String> {
        let w = status["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == name))
            .with_context(|| format!("{name} missing from {status:#}"))?;
        w["metricsAddr"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{name} reports no metricsAddr: {status:#}"))
    };
    let (a1, a2) = (addr_of("w1")?, addr_of("w2")?);
    assert_ne!(a1, a2, "two workers, one address: {status:#}");
    for (w, addr) in [(&mut w1, &a1), (&mut w2, &a2)] {
        assert!(w.try_wait().is_none(), "a worker exited: {}", w.log_text());
        let port: u16 = addr.rsplit(':').next().unwrap_or("").parse()?;
        assert!(
            (9465..9465 + 64).contains(&port),
            "{addr} is outside the default range"
        );
        w.metrics_port = port;
        let (code, body) = w.http_get("/metrics")?;
        assert_eq!(code, 200, "{addr}: {body}");
        assert!(
            body.contains("tidewater_records_in_total"),
            "{addr}: {body}"
        );
        assert!(
            w.log_text().contains(addr.as_str()),
            "the worker logs its address"
        );
    }
    stack.finish(producer, &mut c)?;
    Ok(())
}

/// Triggers a savepoint and waits until it completed; returns its path.
fn savepoint(c: &Tidewater, stop: bool) -> Result<String> {
    let (code, body) = c.http_post("/v1/savepoints", &format!(r#"{{"stop": {stop}}}"#))?;
    anyhow::ensure!(code == 202, "savepoint request: {code} {body}");
    let id = serde_json::from_str::<serde_json::Value>(&body)?["id"]
        .as_str()
        .context("savepoint id")?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = c.http_get(&format!("/v1/savepoints/{id}"))?;
        anyhow::ensure!(code == 200, "savepoint status: {code} {body}");
        let sp: serde_json::Value = serde_json::from_str(&body)?;
        match sp["state"].as_str() {
            Some("completed") => return Ok(sp["path"].as_str().context("path")?.to_string()),
            Some("failed") => anyhow::bail!("savepoint failed: {sp}"),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "savepoint {id} still pending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn savepoint_stop_change_and_restore() -> Result<()> {
    let mut stack = Stack::start(4, 2)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 4, 1500)?;
    let mut c = stack.coordinator(&[])?;
    let mut w1 = stack.worker(&c, "w1")?;
    let mut w2 = stack.worker(&c, "w2")?;
    wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    wait_for_rows(&stack.spec, 1000, Duration::from_secs(60))?;
    let older = savepoint(&c, false)?;
    wait_for_rows(&stack.spec, 3000, Duration::from_secs(60))?;

    // Stop with a savepoint: the coordinator and its workers end cleanly.
    let newest = savepoint(&c, true)?;
    assert!(newest.starts_with("s3://lake/"), "{newest}");
    for (name, p) in [("coordinator", &mut c), ("w1", &mut w1), ("w2", &mut w2)] {
        let exit = p
            .wait_timeout(Duration::from_secs(30))
            .with_context(|| format!("{name} did not exit after the stop savepoint"))?;
        assert!(exit.success(), "{name}: {exit:?}\n{}", p.log_text());
    }
    let rows_at_stop = stack.spec.inspect()?.pyiceberg_rows;

    // A new deployment: more workers, another compression codec.
    stack.spec.parallelism = 3;
    stack.spec.write_properties = vec![("write.parquet.compression-codec".into(), "snappy".into())];
    stack.spec.write(&stack.file)?;

    // The older savepoint is behind what the table holds: refused, naming why.
    let mut refused = Tidewater::coordinator(
        &stack.file,
        &stack.log("refused"),
        None,
        &["--from-savepoint", &older],
    )?;
    let exit = refused
        .wait_timeout(Duration::from_secs(60))
        .context("restoring an older savepoint should fail")?;
    assert!(!exit.success());
    let log = refused.log_text();
    assert!(
        log.contains("already holds checkpoint") && log.contains("twice"),
        "{log}"
    );

    let port = tidewater_e2e::free_port();
    let args = [
        "--heartbeat-timeout",
        HEARTBEAT,
        "--from-savepoint",
        newest.as_str(),
    ];
    let mut c = Tidewater::coordinator_at(port, &stack.file, &stack.log("restored"), None, &args)?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    let _workers = ["w4", "w5", "w6"].map(|n| stack.worker(&c, n).unwrap());
    wait_owning_workers(&c, 3, Duration::from_secs(60))?;
    wait_for_rows(&stack.spec, rows_at_stop + 1000, Duration::from_secs(60))?;

    // A crash after the restore: the same command continues from the newest checkpoint
    // (the savepoint was already applied) instead of rewinding to it.
    c.kill9();
    let mut c = Tidewater::coordinator_at(port, &stack.file, &stack.log("restored"), None, &args)?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    assert!(
        c.log_text().contains("already restored"),
        "{}",
        c.log_text()
    );
    wait_owning_workers(&c, 3, Duration::from_secs(60))?;

    stack.finish(producer, &mut c)?;
    let codecs: std::collections::BTreeSet<String> = stack
        .spec
        .data_files()?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert!(
        codecs.contains("SNAPPY") && codecs.contains("ZSTD"),
        "files before the savepoint are zstd, after it snappy: {codecs:?}"
    );
    Ok(())
}

#[test]
fn a_worker_cut_off_from_the_coordinator_never_commits() -> Result<()> {
    let stack = Stack::start(4, 2)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 4, 1500)?;
    let mut c = stack.coordinator(&[])?;
    let _w1 = stack.worker(&c, "w1")?;
    let w2 = stack.worker(&c, "w2")?;
    let status = wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    let stale_id = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "w2")
        .context("w2 in status")?["id"]
        .as_u64()
        .unwrap();
    wait_for_rows(&stack.spec, 1000, Duration::from_secs(60))?;

    // Cut w2 off (it stops answering, as behind a network partition) past the timeout.
    w2.signal("STOP");
    let status = wait_owning_workers(&c, 1, Duration::from_secs(30))?;
    let lost_at = status["lastCheckpoint"]["id"].as_u64().unwrap_or(0);
    let rows_before = stack.spec.inspect()?.pyiceberg_rows;
    wait_for_rows(&stack.spec, rows_before + 2000, Duration::from_secs(60))?;
    w2.signal("CONT");

    // Back, it learns it is no longer a member, drops what it wrote and joins afresh.
    wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    let log = std::fs::read_to_string(stack.log("w2"))?;
    assert!(
        log.contains("no longer knows this worker") || log.contains("unreachable"),
        "{log}"
    );
    assert!(c.metric("tidewater_workers_lost_total").unwrap_or(0.0) >= 1.0);

    stack.finish(producer, &mut c)?;
    // None of the files the cut-off worker wrote after its last acknowledged barrier is in
    // the table (file names carry worker id and checkpoint).
    assert!(
        c.log_text().contains("checkpoint aborted"),
        "the barrier in flight when w2 went silent must have been aborted"
    );
    let marker = format!("-w{stale_id}-c");
    let files = stack.spec.data_files()?;
    let from_stale = files.iter().filter(|(p, _)| p.contains(&marker)).count();
    eprintln!(
        "cut-off worker {stale_id}: {from_stale} of {} live files are its (all from checkpoints <= {lost_at})",
        files.len()
    );
    assert!(
        from_stale > 0,
        "w2 committed nothing before it was cut off: the check proves nothing"
    );
    for (path, _) in files {
        if let Some(rest) = path.split(&marker).nth(1) {
            let checkpoint: u64 = rest.split('-').next().unwrap().parse()?;
            assert!(
                checkpoint <= lost_at,
                "{path}: written by the cut-off worker for checkpoint {checkpoint} > {lost_at}"
            );
        }
    }
    Ok(())
}

#[test]
fn crash_test_workers_and_coordinator_killed_at_random() -> Result<()> {
    use rand::Rng;
    const COORDINATOR_FAILPOINTS: &[&str] = &[
        "checkpoint.after-record",
        "commit.before-catalog-update",
        "commit.after-catalog-update",
    ];
    let stack = Stack::start(4, 3)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 4, 2000)?;
    let port = tidewater_e2e::free_port();
    let start_coordinator = |failpoint: Option<&str>| -> Result<Tidewater> {
        let c = Tidewater::coordinator_at(
            port,
            &stack.file,
            &stack.log("coordinator"),
            failpoint,
            &["--heartbeat-timeout", HEARTBEAT],
        )?;
        Ok(c)
    };
    let mut c = start_coordinator(None)?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    let names = ["w1", "w2", "w3"];
    let mut workers: Vec<Tidewater> = names
        .iter()
        .map(|n| stack.worker(&c, n))
        .collect::<Result<_>>()?;
    let mut rng = rand::rng();
    let (mut worker_kills, mut coordinator_kills, mut failpoint_aborts) = (0, 0, 0);
    for i in 0..24 {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..3000)));
        if i % 3 == 2 {
            // The coordinator: kill -9, or (every other time) abort at a fail point.
            let failpoint = (i % 6 == 5)
                .then(|| COORDINATOR_FAILPOINTS[(i / 6) % COORDINATOR_FAILPOINTS.len()]);
            if c.try_wait().is_some() {
                failpoint_aborts += 1;
            } else {
                c.kill9();
                coordinator_kills += 1;
            }
            c = start_coordinator(failpoint.map(|f| format!("{f}@1")).as_deref())?;
        } else {
            let w = rng.random_range(0..workers.len());
            workers[w].kill9();
            worker_kills += 1;
            let failpoint = (i % 4 == 0).then_some("worker.mid-write@3");
            workers[w] =
                Tidewater::worker_with(&c.url(), names[w], &stack.log(names[w]), failpoint)?;
        }
    }
    // Whatever fail point is still armed goes: an undisturbed coordinator drains the topic.
    if c.try_wait().is_some() {
        failpoint_aborts += 1;
    }
    c.kill9();
    let mut c = start_coordinator(None)?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    for (w, name) in names.iter().enumerate() {
        if workers[w].try_wait().is_some() {
            workers[w] = stack.worker(&c, name)?;
        }
    }
    let produced = producer.finish()?;
    eprintln!(
        "distributed crash test: {worker_kills} worker kills, {coordinator_kills} coordinator kills, \
         {failpoint_aborts} coordinator fail-point aborts, {produced} events"
    );
    assert!(
        worker_kills + coordinator_kills >= 20,
        "at least 20 random kill -9 of workers and of the coordinator"
    );
    assert!(coordinator_kills >= 4 && failpoint_aborts >= 1);
    let log = std::fs::read_to_string(stack.log("coordinator"))?;
    assert!(
        log.contains("checkpoint aborted"),
        "workers killed mid-checkpoint must have aborted checkpoints"
    );
    let logs = || {
        names
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(stack.log(n)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {n} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for_rows(&stack.spec, produced, Duration::from_secs(180))
        .with_context(|| format!("{}\n{}", c.log_text(), logs()))?;
    assert!(
        c.stop(Duration::from_secs(60))?.success(),
        "{}\n{}",
        c.log_text(),
        logs()
    );
    stack.assert_exactly_once(produced)
}

#[test]
fn under_a_deployment_a_finished_coordinator_waits_for_sigterm() -> Result<()> {
    let stack = Stack::start(2, 1)?;
    let mut c = stack.coordinator(&["--wait-after-finish"])?;
    let _w = stack.worker(&c, "w1")?;
    wait_owning_workers(&c, 1, Duration::from_secs(60))?;
    savepoint(&c, true)?;
    // An exit would let the Deployment restart the old job from its newest checkpoint.
    std::thread::sleep(Duration::from_secs(5));
    assert!(c.try_wait().is_none(), "exited: {}", c.log_text());
    assert_eq!(c.status()?["state"], "finished");
    let (code, _) = c.http_get("/readyz")?;
    assert_eq!(code, 503, "a finished job is not ready");
    assert!(
        c.stop(Duration::from_secs(10))?.success(),
        "{}",
        c.log_text()
    );
    Ok(())
}

#[test]
fn a_worker_alive_but_stuck_is_dropped_at_the_checkpoint_timeout() -> Result<()> {
    let mut stack = Stack::start(4, 2)?;
    stack.spec.checkpoint_timeout = "5s".into();
    stack.spec.write(&stack.file)?;
    let producer = BackgroundProducer::start(&stack.broker, "clicks", 4, 1000)?;
    let mut c = stack.coordinator(&[])?;
    let _w1 = stack.worker(&c, "w1")?;
    // w2's worker thread hangs at its third barrier while its process keeps polling.
    let w2 = Tidewater::worker_with(
        &c.url(),
        "w2",
        &stack.log("w2"),
        Some("worker.barrier@3:hang"),
    )?;
    wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while !c.log_text().contains("not acknowledged within") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no checkpoint timeout: {}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It is forgotten, abandons the stuck thread and joins again; the job never stopped.
    wait_owning_workers(&c, 2, Duration::from_secs(60))?;
    assert!(c.try_wait().is_none(), "the coordinator must keep running");
    let log = std::fs::read_to_string(stack.log("w2"))?;
    assert!(log.contains("no longer knows this worker"), "{log}");
    stack.finish(producer, &mut c)?;
    drop(w2);
    Ok(())
}
