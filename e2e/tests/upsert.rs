//! CDC upsert, running `examples/debezium-upsert.yaml`: a random Debezium change stream
//! (MySQL and PostgreSQL shapes, with and without the schema wrapper, snapshot reads,
//! updates that change the key, deletes with tombstones) over 10,000 keys in three keyed
//! partitions. After every checkpoint's commit the table — read by PyIceberg and by DuckDB as
//! of that snapshot — equals a model of the source table at the snapshot's offsets. Then the
//! same while the process is crashed 24 times (kill -9 at random moments and aborts at fail
//! points) with the stream running, on the SQLite and on the PostgreSQL catalog, in both
//! delete modes; rescales and a savepoint; compaction while the stream is written; a REST
//! catalog on S3; a key index over its bound.

use std::time::{Duration, Instant};

use std::{collections::BTreeMap, os::unix::process::ExitStatusExt};

use anyhow::{Context, Result};
use rand::Rng;
use tidewater_e2e::{
    Broker, Postgres, Tidewater,
    cdc::{self, CdcProducer, CdcStream},
    repo_root,
};

/// The windows a crash must not break: mid-write, between the checkpoint record and the
/// commit, just before and just after the catalog update.
const FAILPOINTS: &[&str] = &[
    "worker.mid-write",
    "checkpoint.after-record",
    "commit.before-catalog-update",
    "commit.after-catalog-update",
];

const TABLE: &str = "inventory.customers";
const TOPIC: &str = "dbserver1.inventory.customers";

struct Setup {
    access: cdc::TableAccess,
    broker: Broker,
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    uri: String,
    warehouse: std::path::PathBuf,
}

fn setup(partitions: i32, parallelism: u32, catalog_uri: Option<String>) -> Result<Setup> {
    setup_with(partitions, parallelism, catalog_uri, "")
}

/// [`setup`] with `upsert` lines added under `sink:` (e.g. `deleteMode: equality`).
fn setup_with(
    partitions: i32,
    parallelism: u32,
    catalog_uri: Option<String>,
    upsert: &str,
) -> Result<Setup> {
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, partitions)?;
    broker.create_topic("customers.dlq", 1)?;
    let dir = tempfile::tempdir()?;
    let local = format!("{}/", dir.path().display());
    let example = std::fs::read_to_string(repo_root().join("examples/debezium-upsert.yaml"))?;
    let uri = catalog_uri.unwrap_or_else(|| format!("sqlite://{local}cdc-catalog.db"));
    let yaml = example
        .replace("sqlite://.tidewater/cdc-catalog.db", &uri)
        .replace("127.0.0.1:9092", &broker.bootstrap)
        .replace(".tidewater/", &local)
        .replace("interval: 2s", "interval: 1s")
        .replace("parallelism: 1", &format!("parallelism: {parallelism}"))
        .replace(
            "    primaryKey: [id]\n",
            &format!("    primaryKey: [id]\n{upsert}"),
        );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &yaml)?;
    Ok(Setup {
        access: cdc::TableAccess::sql(&uri, &dir.path().join("warehouse"), TABLE),
        uri,
        warehouse: dir.path().join("warehouse"),
        broker,
        dir,
        file,
    })
}

/// Waits until the table's newest commit reached `offsets` of every partition.
fn wait_committed(s: &Setup, stream: &CdcStream, tw: &Tidewater, timeout: Duration) -> Result<()> {
    let want = stream.produced();
    let deadline = Instant::now() + timeout;
    loop {
        // Offsets only: no reader scans (PyIceberg refuses equality deletes).
        let views = s.access.snapshot_views("none").unwrap_or_default();
        if let Some(last) = views.last() {
            let reached = last.offsets.get(TOPIC).is_some_and(|m| {
                want.iter()
                    .all(|(p, o)| m.get(&p.to_string()).is_some_and(|got| got >= o))
            });
            if reached {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let log = tw.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            anyhow::bail!(
                "the table did not reach {want:?} in {timeout:?}; last commit {:?}; log tail:\n{}",
                views.last().map(|v| &v.offsets),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_debezium_stream_is_mirrored_exactly_after_every_checkpoint() -> Result<()> {
    let s = setup(3, 1, None)?;
    let producer = s.broker.producer()?;
    let mut stream = CdcStream::new(13, 3, 10_000);
    let mut tw = Tidewater::start(&s.file, &s.dir.path().join("tw.log"), None)?;
    for _ in 0..6 {
        cdc::produce(&producer, TOPIC, &stream.next_changes(5_000))?;
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    // The metrics say what happened (one run: every record was read once).
    let metric = |name: &str| tw.metric(name).unwrap_or(-1.0);
    let count = |f: fn(&cdc::Effect) -> bool| stream.count(f) as f64;
    let table = r#"table="inventory.customers""#;
    assert_eq!(
        metric("tidewater_upsert_skipped_records_total"),
        count(|e| matches!(e, cdc::Effect::None)),
        "tombstones"
    );
    assert_eq!(
        metric(&format!(
            r#"tidewater_upsert_changes_total{{{table},kind="delete"}}"#
        )),
        count(|e| matches!(e, cdc::Effect::Delete { .. })),
        "deletes"
    );
    assert_eq!(
        metric(&format!(
            r#"tidewater_upsert_changes_total{{{table},kind="upsert"}}"#
        )),
        count(|e| matches!(e, cdc::Effect::Put { .. } | cdc::Effect::Rekey { .. })),
        "upserts"
    );
    assert!(metric(&format!("tidewater_upsert_deleted_rows_total{{{table}}}")) > 0.0);
    assert!(metric(&format!("tidewater_upsert_delete_files_total{{{table}}}")) >= 1.0);
    let amplification = metric(&format!("tidewater_upsert_read_amplification{{{table}}}"));
    assert!(
        amplification > 0.0,
        "delete files per data file: {amplification}"
    );
    let (_, body) = tw.http_get("/metrics")?;
    let keys: f64 = body
        .lines()
        .filter(|l| l.starts_with(&format!("tidewater_upsert_index_keys{{{table},worker=")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let live = stream.model_at(&stream.produced()).len() as f64;
    assert_eq!(keys, live, "index keys");
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let views = s.access.snapshot_views("pyiceberg,duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    assert!(checked >= 3, "several checkpoints committed: {checked}");
    let last = views.last().context("a snapshot")?;
    assert!(
        last.delete_files > 0,
        "updates and deletes wrote delete files: {last:?}"
    );
    let model = stream.model_at(&stream.produced());
    assert!(model.len() > 5_000, "a large table: {}", model.len());
    eprintln!(
        "{checked} snapshots equal the model for PyIceberg and DuckDB; {} live keys, {} delete files",
        model.len(),
        last.delete_files
    );
    Ok(())
}

/// Crashes the pipeline `iterations` times while changes stream in, then lets it drain and
/// checks every snapshot it committed against the model.
fn crash_test(catalog_uri: Option<String>, iterations: usize) -> Result<()> {
    crash_test_with(catalog_uri, iterations, "", "pyiceberg,duckdb")
}

/// [`crash_test`] with `upsert` lines in the sink, checked by `readers`.
fn crash_test_with(
    catalog_uri: Option<String>,
    iterations: usize,
    upsert: &str,
    readers: &str,
) -> Result<()> {
    let s = setup_with(3, 1, catalog_uri, upsert)?;
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(29, 3, 10_000),
        300,
        Duration::from_millis(250),
    )?;
    let log = s.dir.path().join("tw.log");
    let mut rng = rand::rng();
    let mut triggered: BTreeMap<&str, usize> = BTreeMap::new();
    let mut killed = 0;
    for i in 0..iterations {
        let failpoint = (i % 2 == 0).then(|| FAILPOINTS[(i / 2) % FAILPOINTS.len()]);
        let armed = failpoint.map(|f| format!("{f}@{}", rng.random_range(1..=2)));
        let mut tw = Tidewater::start(&s.file, &log, armed.as_deref())?;
        let deadline = Instant::now()
            + if failpoint.is_some() {
                Duration::from_secs(20)
            } else {
                Duration::from_millis(rng.random_range(300..3500))
            };
        let mut ended = None;
        while Instant::now() < deadline {
            if let Some(status) = tw.try_wait() {
                ended = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match (failpoint, ended) {
            (Some(f), Some(status)) if status.signal() == Some(6) => {
                *triggered.entry(f).or_default() += 1;
            }
            (_, Some(status)) => anyhow::bail!(
                "iteration {i}: tidewater exited on its own with {status:?}; log:\n{}",
                tw.log_text()
            ),
            (_, None) => {
                tw.kill9();
                killed += 1;
            }
        }
    }
    let stream = producer.finish()?;
    for f in FAILPOINTS {
        assert!(
            triggered.get(f).copied().unwrap_or(0) > 0,
            "fail point {f} never fired: {triggered:?}"
        );
    }
    let mut tw = Tidewater::start(&s.file, &log, None)?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(180))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let views = s.access.snapshot_views(readers)?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    let changes: i64 = stream.produced().values().sum();
    eprintln!(
        "upsert crash test {upsert:?}: {iterations} crashes ({killed} kill -9, fail points \
         {triggered:?}), {changes} changes, {checked} snapshots equal the model for {readers}"
    );
    assert!(checked >= 10, "snapshots checked: {checked}");
    Ok(())
}

#[test]
fn upsert_crash_test_sqlite_catalog() -> Result<()> {
    crash_test(None, 24)
}

#[test]
fn upsert_crash_test_postgres_catalog() -> Result<()> {
    let pg = Postgres::start()?;
    crash_test(Some(pg.uri()), 24)
}

const EQUALITY: &str = "    upsert:\n      deleteMode: equality\n";

/// Equality mode under the same crashes (DuckDB reads it; PyIceberg refuses equality deletes).
#[test]
fn equality_mode_crash_test_sqlite_catalog() -> Result<()> {
    crash_test_with(None, 20, EQUALITY, "duckdb")
}

#[test]
fn equality_mode_crash_test_postgres_catalog() -> Result<()> {
    let pg = Postgres::start()?;
    crash_test_with(Some(pg.uri()), 20, EQUALITY, "duckdb")
}

/// Waits until exactly `n` workers own the partitions.
fn wait_owners(tw: &Tidewater, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = tw.status()?;
        let owners: std::collections::BTreeSet<String> = status["partitions"]
            .as_array()
            .context("partitions in status")?
            .iter()
            .map(|p| p["worker"].to_string())
            .collect();
        if owners.len() == n && !owners.contains("null") {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "never {n} workers: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_key_index_follows_its_partitions_through_rescales_and_a_savepoint() -> Result<()> {
    let s = setup(6, 1, None)?;
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(41, 6, 10_000),
        300,
        Duration::from_millis(150),
    )?;
    let log = s.dir.path().join("tw.log");
    let mut tw = Tidewater::start(&s.file, &log, None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    wait_owners(&tw, 1)?;
    std::thread::sleep(Duration::from_secs(3));
    for workers in [3, 2] {
        let (code, body) =
            tw.http_post("/v1/parallelism", &format!(r#"{{"workers": {workers}}}"#))?;
        assert_eq!(code, 202, "{body}");
        wait_owners(&tw, workers)?;
        std::thread::sleep(Duration::from_secs(4));
    }
    let (code, body) = tw.http_post("/v1/savepoints", r#"{"stop": true}"#)?;
    assert_eq!(code, 202, "{body}");
    let exit = tw
        .wait_timeout(Duration::from_secs(60))
        .context("a stop savepoint ends the run")?;
    assert!(exit.success(), "{}", tw.log_text());
    let path = tw
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("path=")
                .nth(1)
                .map(|p| p.split_whitespace().next().unwrap_or_default().to_string())
        })
        .context("savepoint path in the log")?;
    // Changes keep arriving while it is stopped; the restored run reads its index again.
    std::thread::sleep(Duration::from_secs(2));
    let mut tw = Tidewater::start_with(&s.file, &log, None, &["--from-savepoint", &path])?;
    std::thread::sleep(Duration::from_secs(3));
    let stream = producer.finish()?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let text = tw.log_text();
    let reads = text.matches("key index read from the table").count();
    assert!(
        reads >= 4,
        "every worker that gained partitions read its index: {reads}"
    );
    let views = s.access.snapshot_views("pyiceberg,duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    eprintln!("rescale 1 → 3 → 2 and a savepoint: {checked} snapshots equal the model");
    Ok(())
}

/// Runs `tidewater compact -f policy --once`; the table's report.
fn compact_once(policy: &std::path::Path) -> Result<serde_json::Value> {
    let out = std::process::Command::new(tidewater_e2e::tidewater_bin())
        .args(["compact", "-f"])
        .arg(policy)
        .arg("--once")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "compact failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no report")?)?;
    Ok(report["tables"][0].clone())
}

#[test]
fn compaction_while_the_change_stream_is_written_keeps_the_table_equal_to_the_model() -> Result<()>
{
    let s = setup(3, 1, None)?;
    let policy = s.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: m\n\
             spec:\n  catalog:\n    type: sql\n    uri: {}\n    warehouse: {}\n  tables: [{TABLE}]\n  \
             targetFileSizeBytes: 4194304\n  thresholds:\n    minSmallFiles: 2\n",
            s.uri,
            s.warehouse.display()
        ),
    )?;
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(57, 3, 10_000),
        400,
        Duration::from_millis(200),
    )?;
    let mut tw = Tidewater::start(&s.file, &s.dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(4));
    let (mut commits, mut rewritten, mut dropped) = (0, 0, 0);
    for _ in 0..8 {
        let report = compact_once(&policy)?;
        assert!(report["error"].is_null(), "{report}");
        assert!(report["rewriteSkipped"].is_null(), "{report}");
        if !report["snapshotId"].is_null() {
            commits += 1;
        }
        rewritten += report["filesRewritten"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(1500));
        let _ = &mut dropped;
    }
    let stream = producer.finish()?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    let moved = tw.log_text().matches("key index to be read again").count();
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let before = s
        .access
        .snapshot_views("pyiceberg")?
        .last()
        .context("a snapshot")?
        .delete_files;
    // Once more with the pipeline stopped: every delete file's rows are rewritten away.
    let last = compact_once(&policy)?;
    let views = s.access.snapshot_views("pyiceberg,duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    let replaces = views.iter().filter(|v| v.operation == "replace").count();
    let after = views.last().context("a snapshot")?.delete_files;
    eprintln!(
        "compaction with the stream running: {commits} compaction commits ({rewritten} files \
         rewritten), workers told {moved} times; {checked} snapshots ({replaces} replace) equal \
         the model for PyIceberg and DuckDB; delete files {before} → {after}; last pass {last}"
    );
    assert!(
        commits >= 3,
        "compaction committed while the stream ran: {commits}"
    );
    assert!(replaces >= 4, "replace snapshots checked: {replaces}");
    assert!(after < before, "delete files go down: {before} → {after}");
    Ok(())
}

/// Equality deletes, and a key index over its bound, while the process is killed now and
/// then: DuckDB reads every snapshot as the model (PyIceberg refuses equality deletes).
fn equality_run(upsert: &str, crashes: usize) -> Result<(usize, u64, String)> {
    let s = setup_with(3, 1, None, upsert)?;
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(71, 3, 10_000),
        300,
        Duration::from_millis(200),
    )?;
    let log = s.dir.path().join("tw.log");
    let mut rng = rand::rng();
    for _ in 0..crashes {
        let mut tw = Tidewater::start(&s.file, &log, None)?;
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4000)));
        tw.kill9();
    }
    let mut tw = Tidewater::start(&s.file, &log, None)?;
    std::thread::sleep(Duration::from_secs(3));
    let stream = producer.finish()?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    let text = tw.log_text();
    assert!(tw.stop(Duration::from_secs(60))?.success(), "{text}");
    let views = s.access.snapshot_views("duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    let deletes = views.last().map_or(0, |v| v.delete_files);
    Ok((checked, deletes, std::fs::read_to_string(&log)?))
}

#[test]
fn equality_mode_mirrors_the_stream_exactly() -> Result<()> {
    let (checked, deletes, _) = equality_run(EQUALITY, 4)?;
    eprintln!(
        "equality mode, 4 kill -9: {checked} snapshots equal the model for DuckDB; {deletes} delete files"
    );
    assert!(checked >= 5 && deletes > 0);
    Ok(())
}

#[test]
fn a_key_index_over_its_bound_falls_back_to_equality_deletes() -> Result<()> {
    // About 2,000 keys fit; the stream has ~8,000 live keys.
    let (checked, deletes, log) = equality_run("    upsert:\n      maxIndexBytes: 120000\n", 4)?;
    eprintln!(
        "index bound 120 kB, 4 kill -9: {checked} snapshots equal the model for DuckDB; {deletes} delete files"
    );
    assert!(checked >= 5 && deletes > 0);
    assert!(
        log.contains("key index read from the table"),
        "restarts read the index back"
    );
    Ok(())
}

#[test]
fn upsert_on_a_rest_catalog_with_s3_storage_through_crashes() -> Result<()> {
    let s = setup(3, 1, None)?;
    let moto = tidewater_e2e::Moto::start("lake", &s.dir.path().join("moto.log"))?;
    let rest = tidewater_e2e::RestCatalog::start(
        s.dir.path(),
        "s3://lake/warehouse",
        &moto.props(),
        "test-token-1",
        &[],
    )?;
    let token = s.dir.path().join("catalog-token");
    std::fs::write(&token, &rest.token)?;
    let local = format!("{}/", s.dir.path().display());
    let yaml = std::fs::read_to_string(&s.file)?
        .replace(
            &format!(
                "      type: sql\n      uri: sqlite://{local}cdc-catalog.db\n      warehouse: {local}warehouse\n"
            ),
            &format!(
                "      type: rest\n      uri: {}\n      warehouse: s3://lake/warehouse\n      auth:\n        type: bearer\n        secretFile: {}\n",
                rest.uri(),
                token.display()
            ),
        )
        + &format!(
            "  storage:\n    s3:\n      endpoint: {}\n      region: us-east-1\n      pathStyleAccess: true\n",
            moto.endpoint()
        );
    anyhow::ensure!(yaml.contains("type: rest"), "{yaml}");
    std::fs::write(&s.file, yaml)?;
    let access = cdc::TableAccess::rest(&rest, &moto, TABLE);
    let s = Setup { access, ..s };
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(83, 3, 10_000),
        300,
        Duration::from_millis(250),
    )?;
    let log = s.dir.path().join("tw.log");
    let mut rng = rand::rng();
    for _ in 0..4 {
        let mut tw = Tidewater::start(&s.file, &log, None)?;
        std::thread::sleep(Duration::from_millis(rng.random_range(2000..5000)));
        tw.kill9();
    }
    let mut tw = Tidewater::start(&s.file, &log, None)?;
    std::thread::sleep(Duration::from_secs(3));
    let stream = producer.finish()?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(180))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let views = s.access.snapshot_views("pyiceberg,duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    eprintln!(
        "REST catalog + S3, 4 kill -9: {checked} snapshots equal the model for PyIceberg and DuckDB"
    );
    assert!(checked >= 5, "snapshots checked: {checked}");
    Ok(())
}

#[test]
fn compaction_turns_an_equality_mode_table_into_one_every_reader_reads() -> Result<()> {
    let s = setup_with(3, 1, None, EQUALITY)?;
    let policy = s.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: m\n\
             spec:\n  catalog:\n    type: sql\n    uri: {}\n    warehouse: {}\n  tables: [{TABLE}]\n  \
             targetFileSizeBytes: 4194304\n  thresholds:\n    minSmallFiles: 2\n",
            s.uri,
            s.warehouse.display()
        ),
    )?;
    let producer = CdcProducer::start(
        &s.broker.bootstrap,
        TOPIC,
        CdcStream::new(97, 3, 10_000),
        400,
        Duration::from_millis(200),
    )?;
    let mut tw = Tidewater::start(&s.file, &s.dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(4));
    let mut commits = 0;
    for _ in 0..4 {
        let report = compact_once(&policy)?;
        assert!(
            report["error"].is_null() && report["rewriteSkipped"].is_null(),
            "{report}"
        );
        commits += usize::from(!report["snapshotId"].is_null());
        std::thread::sleep(Duration::from_millis(1500));
    }
    let stream = producer.finish()?;
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let last = compact_once(&policy)?;
    let views = s.access.snapshot_views("duckdb")?;
    let checked = cdc::assert_snapshots_match(&stream, TOPIC, &views, &s.access)?;
    let newest = views.last().context("a snapshot")?;
    // No delete file is left: PyIceberg reads the table, and it is the source table.
    assert_eq!(newest.delete_files, 0, "{last}");
    let pairs = s.access.snapshot_pairs(newest.snapshot_id)?;
    let model = stream.model_at(&stream.produced());
    let got: std::collections::BTreeMap<i64, i64> = pairs.iter().copied().collect();
    assert_eq!(got.len(), pairs.len(), "one row per key");
    assert!(got == model, "{}", cdc::differences(&model, &pairs));
    eprintln!(
        "equality mode with {commits} compactions while streaming: {checked} snapshots equal the \
         model for DuckDB; after the last pass no delete file is left and PyIceberg reads the \
         {} rows of the model",
        model.len()
    );
    assert!(
        commits >= 2,
        "compactions committed while streaming: {commits}"
    );
    Ok(())
}
