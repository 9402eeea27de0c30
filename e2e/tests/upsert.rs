//! CDC upsert, running `examples/debezium-upsert.yaml`: a random Debezium change stream
//! (MySQL and PostgreSQL shapes, with and without the schema wrapper, snapshot reads,
//! updates that change the key, deletes with tombstones) over 10,000 keys in three keyed
//! partitions. After every checkpoint's commit the table — read by PyIceberg and by DuckDB as
//! of that snapshot — equals a model of the source table at the snapshot's offsets.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tidewater_e2e::{
    Broker, Tidewater,
    cdc::{self, CdcStream},
    repo_root,
};

const TABLE: &str = "inventory.customers";
const TOPIC: &str = "dbserver1.inventory.customers";

struct Setup {
    broker: Broker,
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    uri: String,
    warehouse: std::path::PathBuf,
}

fn setup(partitions: i32, parallelism: u32) -> Result<Setup> {
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, partitions)?;
    broker.create_topic("customers.dlq", 1)?;
    let dir = tempfile::tempdir()?;
    let local = format!("{}/", dir.path().display());
    let example = std::fs::read_to_string(repo_root().join("examples/debezium-upsert.yaml"))?;
    let yaml = example
        .replace("127.0.0.1:9092", &broker.bootstrap)
        .replace(".tidewater/", &local)
        .replace("interval: 2s", "interval: 1s")
        .replace("parallelism: 1", &format!("parallelism: {parallelism}"));
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &yaml)?;
    Ok(Setup {
        uri: format!("sqlite://{local}cdc-catalog.db"),
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
        let views =
            cdc::snapshot_views(&s.uri, &s.warehouse, TABLE, "pyiceberg").unwrap_or_default();
        if let Some(last) = views.last() {
            let reached = last.offsets.get(TOPIC).is_some_and(|m| {
                want.iter()
                    .all(|(p, o)| m.get(&p.to_string()).is_some_and(|got| got >= o))
            });
            if reached {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the table did not reach {want:?} in {timeout:?}\n{}",
            tw.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_debezium_stream_is_mirrored_exactly_after_every_checkpoint() -> Result<()> {
    let s = setup(3, 1)?;
    let producer = s.broker.producer()?;
    let mut stream = CdcStream::new(13, 3, 10_000);
    let mut tw = Tidewater::start(&s.file, &s.dir.path().join("tw.log"), None)?;
    for _ in 0..6 {
        cdc::produce(&producer, TOPIC, &stream.next_changes(5_000))?;
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_committed(&s, &stream, &tw, Duration::from_secs(120))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let views = cdc::snapshot_views(&s.uri, &s.warehouse, TABLE, "pyiceberg,duckdb")?;
    let checked =
        cdc::assert_snapshots_match(&stream, TOPIC, &views, (&s.uri, &s.warehouse, TABLE))?;
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
