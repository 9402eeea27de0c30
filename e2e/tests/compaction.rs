//! `tidewater compact -f policy.yaml --once` against live tables: compaction running
//! repeatedly while a pipeline ingests (cold partitions packed, the hot one untouched, every
//! streaming commit lands, exactly once by PyIceberg and DuckDB), orphan removal with a zero
//! age threshold while a pipeline is killed between its checkpoint record and its commit, and
//! a table written by another engine (PyIceberg).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tidewater_e2e::{
    BackgroundProducer, Broker, Moto, PipelineSpec, RestCatalog, S3_KEY_ID, S3_SECRET, Tidewater,
    event_json, tidewater_bin, venv_python_path, wait_for_rows,
};

const DAY_MS: i64 = 86_400_000;
const MIB: u64 = 1024 * 1024;

/// Runs `tidewater compact -f policy --once`; returns the JSON report.
fn compact_once(policy: &Path) -> Result<serde_json::Value> {
    Ok(compact_once_logged(policy)?.0)
}

/// `compact_once`, also returning what the process logged.
fn compact_once_logged(policy: &Path) -> Result<(serde_json::Value, String)> {
    let out = Command::new(tidewater_bin())
        .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .args(["compact", "-f"])
        .arg(policy)
        .arg("--once")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "compact failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout.lines().last().context("no report")?;
    Ok((
        serde_json::from_str(line)?,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Produces `chunks` × `per_chunk` events with ids from 1e9 into `partitions` partitions,
/// timestamped 1..=`days` days ago (cold partitions), a chunk per checkpoint or so: many
/// small files per partition. Returns how many.
fn produce_cold(
    broker: &Broker,
    partitions: u64,
    chunks: u64,
    per_chunk: u64,
    days: u64,
) -> Result<u64> {
    let cold = broker.producer()?;
    let now = chrono::Utc::now().timestamp_millis();
    let base_id = 1_000_000_000u64;
    for chunk in 0..chunks {
        for id in base_id + chunk * per_chunk..base_id + (chunk + 1) * per_chunk {
            let day = i64::try_from(id % days + 1)?;
            let partition = i32::try_from(id % partitions)?;
            cold.send(
                "clicks",
                partition,
                event_json(id, now - day * DAY_MS).as_bytes(),
            )?;
        }
        cold.flush()?;
        std::thread::sleep(Duration::from_millis(1300));
    }
    Ok(chunks * per_chunk)
}

fn policy_yaml(spec: &PipelineSpec, extra: &str) -> String {
    format!(
        "apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: m\nspec:\n  \
         catalog:\n    type: sql\n    uri: {}\n    warehouse: {}\n  tables: [{}]\n  \
         targetFileSizeBytes: {MIB}\n{extra}",
        spec.catalog_uri,
        spec.warehouse.display(),
        spec.table
    )
}

/// Every partition but the newest (the hot one) holds at most ceil(bytes / target) + 1 files.
#[track_caller]
fn assert_cold_partitions_packed(files: &BTreeMap<String, (usize, u64)>) {
    let newest = files.keys().max().cloned().unwrap_or_default();
    for (partition, (n, bytes)) in files.iter().filter(|(p, _)| **p != newest) {
        let bound = bytes.div_ceil(MIB) as usize + 1;
        assert!(
            *n <= bound,
            "cold partition {partition}: {n} files for {bytes} bytes (bound {bound})"
        );
    }
}

fn table_report(report: &serde_json::Value) -> &serde_json::Value {
    &report["tables"][0]
}

/// Files per partition (JSON of the partition tuple) with their total bytes.
fn by_partition(files: &[(String, String, u64)]) -> BTreeMap<String, (usize, u64)> {
    let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (_, p, size) in files {
        let e = out.entry(p.clone()).or_default();
        e.0 += 1;
        e.1 += size;
    }
    out
}

#[test]
fn compaction_while_ingesting_is_exactly_once_and_leaves_the_hot_partition_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(60))
        .with_context(|| tw.log_text())?;

    // Three cold days, written in several checkpoints: many small files per partition.
    let cold_events = produce_cold(&broker, 2, 6, 2000, 3)?;
    wait_for_rows(&spec, cold_events, Duration::from_secs(60))?;
    let before = by_partition(&spec.data_files_by_partition()?);
    assert!(
        before.values().filter(|(n, _)| *n >= 4).count() >= 3,
        "cold days start with many small files: {before:?}"
    );

    // Today's partition is hot: written every second while compaction runs.
    let hot = BackgroundProducer::start(&broker, "clicks", 2, 400)?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(
            &spec,
            "  hotPartitionGuard:\n    minAge: 5s\n    newestPartitions: 1\n  \
             expireSnapshots:\n    olderThan: 1s\n    retainLast: 5\n  \
             removeOrphanFiles:\n    olderThan: 1h\n",
        ),
    )?;
    let mut rewritten = 0;
    let mut expired = 0;
    for round in 0..4 {
        std::thread::sleep(Duration::from_secs(3));
        let files = spec.data_files_by_partition()?;
        let newest = files
            .iter()
            .map(|(_, p, _)| p.clone())
            .max()
            .context("no files")?;
        let hot_before: BTreeSet<String> = files
            .iter()
            .filter(|(_, p, _)| *p == newest)
            .map(|(f, _, _)| f.clone())
            .collect();
        let report = compact_once(&policy)?;
        let t = table_report(&report);
        assert!(t["error"].is_null(), "round {round}: {report}");
        assert!(t["hotPartitionsSkipped"].as_u64() >= Some(1), "{report}");
        rewritten += t["filesRewritten"].as_u64().unwrap_or(0);
        expired += t["snapshotsExpired"].as_u64().unwrap_or(0);
        let live: BTreeSet<String> = spec
            .data_files_by_partition()?
            .into_iter()
            .map(|(f, _, _)| f)
            .collect();
        let touched: Vec<&String> = hot_before.difference(&live).collect();
        assert!(
            touched.is_empty(),
            "hot partition files were rewritten: {touched:?}"
        );
        eprintln!("round {round}: {report}");
    }
    let produced = hot.finish()? + cold_events;
    wait_for_rows(&spec, produced, Duration::from_secs(90))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    assert!(
        !tw.log_text().contains("ERROR"),
        "the pipeline logged errors: {}",
        tw.log_text()
    );
    assert!(rewritten >= 12, "compaction rewrote {rewritten} files");
    assert!(expired > 0, "no snapshot expired");

    let after = by_partition(&spec.data_files_by_partition()?);
    assert_cold_partitions_packed(&after);
    let view = spec.inspect()?;
    view.assert_exactly(produced);
    eprintln!(
        "compaction while ingesting: {produced} events exactly once; {rewritten} files rewritten; \
         files per partition before {before:?} after {after:?}"
    );
    Ok(())
}

#[test]
fn orphan_removal_with_zero_age_keeps_what_recovery_needs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = BackgroundProducer::start(&broker, "clicks", 2, 500)?;
    // Killed between writing its 4th checkpoint record and committing it.
    let mut tw = Tidewater::start(
        &file,
        &dir.path().join("tw1.log"),
        Some("checkpoint.after-record@4"),
    )?;
    let status = tw
        .wait_timeout(Duration::from_secs(90))
        .context("the fail point never fired")?;
    assert!(!status.success());

    // A real orphan, and orphan removal with no age threshold at all.
    let junk = spec
        .warehouse
        .join("analytics/clicks/data/orphan-junk.parquet");
    std::fs::create_dir_all(junk.parent().context("parent")?)?;
    std::fs::write(&junk, b"not referenced by anything")?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(
            &spec,
            "  hotPartitionGuard:\n    minAge: 1h\n  removeOrphanFiles:\n    olderThan: 0s\n",
        ),
    )?;
    let report = compact_once(&policy)?;
    let t = table_report(&report);
    assert!(t["error"].is_null(), "{report}");
    assert!(!junk.exists(), "the orphan is removed: {report}");
    assert!(t["orphansRemoved"].as_u64() >= Some(1), "{report}");

    // Recovery commits the pending checkpoint: its files must still be there.
    let mut tw = Tidewater::start(&file, &dir.path().join("tw2.log"), None)?;
    std::thread::sleep(Duration::from_secs(4));
    let produced = producer.finish()?;
    wait_for_rows(&spec, produced, Duration::from_secs(90)).with_context(|| tw.log_text())?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    assert!(
        tw.log_text()
            .contains("finished commit of recovered checkpoint"),
        "{}",
        tw.log_text()
    );
    let view = spec.inspect()?;
    view.assert_exactly(produced);
    Ok(())
}

/// A table created and written by PyIceberg in `dir`: 8 appends of 1,000 rows into an
/// identity-partitioned table (4 regions), then a copy-on-write delete of `id < 100`.
fn pyiceberg_table(dir: &Path) -> Result<PipelineSpec> {
    let catalog = format!("sqlite://{}", dir.join("catalog.db").display());
    let warehouse = dir.join("warehouse");
    std::fs::create_dir_all(&warehouse)?;
    let script = r#"
import sys, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, LongType, StringType
from pyiceberg.partitioning import PartitionSpec, PartitionField
from pyiceberg.transforms import IdentityTransform
uri, wh = sys.argv[1], sys.argv[2]
cat = SqlCatalog("tidewater", uri=uri.replace("sqlite://", "sqlite:///", 1), warehouse="file://" + wh)
cat.create_namespace("other")
schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "region", StringType()))
spec = PartitionSpec(PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="region"))
t = cat.create_table("other.events", schema=schema, partition_spec=spec)
arrow_schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("region", pa.string())])
for batch in range(8):
    ids = list(range(batch * 1000, (batch + 1) * 1000))
    t.append(pa.table({"id": ids, "region": ["r%d" % (i % 4) for i in ids]}, schema=arrow_schema))
t.delete("id < 100")
"#;
    pyiceberg(script, &[&catalog, &warehouse.display().to_string()])?;
    let mut spec = PipelineSpec::clicks(dir, "unused:9092", "unused");
    spec.catalog_uri = catalog;
    spec.warehouse = warehouse;
    spec.table = "other.events".into();
    Ok(spec)
}

fn pyiceberg(script: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(venv_python_path())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_table_written_by_pyiceberg_compacts_correctly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = pyiceberg_table(dir.path())?;
    let before = by_partition(&spec.data_files_by_partition()?);
    let before_view = spec.inspect()?;
    assert_eq!(before_view.pyiceberg_rows, 7900);
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(
            &spec,
            "  hotPartitionGuard:\n    minAge: 0s\n  thresholds:\n    maxManifests: 2\n",
        ),
    )?;
    let report = compact_once(&policy)?;
    let t = table_report(&report);
    assert!(t["error"].is_null(), "{report}");
    // 9 PyIceberg commits left 9+ data manifests: merged into one in the same commit.
    assert!(t["manifestsMerged"].as_u64() >= Some(7), "{report}");
    let after = by_partition(&spec.data_files_by_partition()?);
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(
        after.values().all(|(n, _)| *n == 1),
        "one file per partition: {after:?}"
    );
    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (7900, 7900));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (7900, 7900));
    // Nothing left to do: a second run commits nothing.
    let again = compact_once(&policy)?;
    assert_eq!(again["run"]["result"], "NothingToDo", "{again}");
    assert!(table_report(&again)["snapshotId"].is_null());
    eprintln!("PyIceberg table: files per partition {before:?} → {after:?}");
    Ok(())
}

#[test]
fn a_delete_committed_during_the_rewrite_is_never_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = pyiceberg_table(dir.path())?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(&spec, "  hotPartitionGuard:\n    minAge: 0s\n"),
    )?;
    // Compaction stops after rewriting every group, before validating and committing.
    let gate = dir.path().join("gate");
    let child = Command::new(tidewater_bin())
        .env(
            "TIDEWATER_FAILPOINTS",
            format!("compact.before-commit:gate={}", gate.display()),
        )
        .args(["compact", "-f"])
        .arg(&policy)
        .arg("--once")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let reached = dir.path().join("gate.reached");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "compaction never reached the gate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile another engine deletes rows from a file compaction has just rewritten.
    pyiceberg(
        r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
cat = SqlCatalog("tidewater", uri=sys.argv[1].replace("sqlite://", "sqlite:///", 1), warehouse="file://" + sys.argv[2])
cat.load_table("other.events").delete("region = 'r1' and id < 1000")
"#,
        &[&spec.catalog_uri, &spec.warehouse.display().to_string()],
    )?;
    std::fs::write(&gate, b"")?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().context("report")?)?;
    let t = table_report(&report);
    assert_eq!(
        t["groupsConflicted"], 1,
        "the r1 group is given up: {report}"
    );
    assert_eq!(
        t["filesRewritten"], 24,
        "the three other groups land: {report}"
    );
    // 7,900 rows minus r1's ids 100..999 (225 rows): the delete holds, nothing resurrected.
    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (7675, 7675));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (7675, 7675));
    let after = by_partition(&spec.data_files_by_partition()?);
    let r1 = after
        .iter()
        .find(|(p, _)| p.contains("r1"))
        .map(|(_, (n, _))| *n)
        .context("r1")?;
    assert!(r1 > 1, "r1 keeps its files for the next run: {after:?}");
    eprintln!("concurrent delete: {report}");
    Ok(())
}

#[test]
fn compaction_on_a_rest_catalog_and_s3_while_ingesting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let moto = Moto::start("lake", &dir.path().join("moto.log"))?;
    // Every commit is answered with HTTP 500 although it landed ("commit state unknown"):
    // the pipeline and compaction must both find out that their commits are there.
    let rest = RestCatalog::start(
        dir.path(),
        "s3://lake/warehouse",
        &moto.props(),
        "test-token-1",
        &["--fail-after-commit", "1"],
    )?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks").on_rest_and_s3(
        dir.path(),
        &rest,
        &moto,
    )?;
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(60))
        .with_context(|| tw.log_text())?;
    produce_cold(&broker, 2, 4, 1000, 1)?;
    wait_for_rows(&spec, 4000, Duration::from_secs(60))?;
    let hot = BackgroundProducer::start(&broker, "clicks", 2, 300)?;
    std::thread::sleep(Duration::from_secs(3));
    let policy = dir.path().join("policy.yaml");
    let token = dir.path().join("catalog-token");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: tidewater.dev/v1alpha1\nkind: CompactionPolicy\nmetadata:\n  name: m\n\
             spec:\n  catalog:\n    type: rest\n    uri: {}\n    warehouse: s3://lake/warehouse\n    \
             auth:\n      type: bearer\n      secretFile: {}\n  storage:\n    s3:\n      \
             endpoint: {}\n      region: us-east-1\n      pathStyleAccess: true\n  \
             tables: [analytics.clicks]\n  targetFileSizeBytes: {MIB}\n  hotPartitionGuard:\n    \
             minAge: 2s\n    newestPartitions: 1\n  expireSnapshots:\n    olderThan: 1s\n    \
             retainLast: 3\n  removeOrphanFiles:\n    olderThan: 1h\n",
            rest.uri(),
            token.display(),
            moto.endpoint()
        ),
    )?;
    let (report, logs) = compact_once_logged(&policy)?;
    assert_eq!(
        logs.matches("commit state unknown, but the commit landed")
            .count(),
        2,
        "both the replace and the expiry commit were answered 500 and found landed: {logs}"
    );
    let t = table_report(&report);
    assert!(t["error"].is_null(), "{report}");
    assert!(t["filesRewritten"].as_u64() >= Some(4), "{report}");
    assert!(t["snapshotsExpired"].as_u64() >= Some(1), "{report}");
    let produced = hot.finish()? + 4000;
    wait_for_rows(&spec, produced, Duration::from_secs(90))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let files = by_partition(&spec.data_files_by_partition()?);
    let newest = files.keys().max().cloned().unwrap_or_default();
    let cold_files: Vec<usize> = files
        .iter()
        .filter(|(p, _)| **p != newest)
        .map(|(_, (n, _))| *n)
        .collect();
    assert_eq!(cold_files, vec![1], "{files:?}");
    let view = spec.inspect()?;
    view.assert_exactly(produced);
    eprintln!("REST + S3: {report}");
    Ok(())
}

#[test]
fn a_bad_policy_is_refused_with_the_fields_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text =
        std::fs::read_to_string(tidewater_e2e::repo_root().join("examples/compaction.yaml"))?
            .replace("*/30 * * * *", "*/30 * * *")
            .replace("minAge: 10m", "minAge: ten minutes")
            .replace("retainLast: 10", "retainLast: 10\n    keepLast: 3");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, text)?;
    let out = Command::new(tidewater_bin())
        .args(["compact", "-f"])
        .arg(&policy)
        .arg("--once")
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.expireSnapshots.keepLast: unknown field"),
        "{err}"
    );
    let out = {
        let text = std::fs::read_to_string(&policy)?.replace("\n    keepLast: 3", "");
        std::fs::write(&policy, text)?;
        Command::new(tidewater_bin())
            .args(["compact", "-f"])
            .arg(&policy)
            .arg("--once")
            .output()?
    };
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.schedule: `*/30 * * *` needs 5 fields"),
        "{err}"
    );
    assert!(err.contains("spec.hotPartitionGuard.minAge"), "{err}");
    Ok(())
}

#[test]
fn compaction_while_the_distributed_runtime_ingests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let c = Tidewater::coordinator(
        &file,
        &dir.path().join("coordinator.log"),
        None,
        &["--heartbeat-timeout", "3s"],
    )?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    let _w1 = Tidewater::worker(&c.url(), "w1", &dir.path().join("w1.log"))?;
    let _w2 = Tidewater::worker(&c.url(), "w2", &dir.path().join("w2.log"))?;
    produce_cold(&broker, 4, 5, 2000, 2)?;
    wait_for_rows(&spec, 10_000, Duration::from_secs(90)).with_context(|| c.log_text())?;
    let hot = BackgroundProducer::start(&broker, "clicks", 4, 400)?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(
            &spec,
            "  hotPartitionGuard:\n    minAge: 5s\n    newestPartitions: 1\n  \
             expireSnapshots:\n    olderThan: 1s\n    retainLast: 5\n",
        ),
    )?;
    let mut rewritten = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        let report = compact_once(&policy)?;
        let t = table_report(&report);
        assert!(t["error"].is_null(), "{report}");
        rewritten += t["filesRewritten"].as_u64().unwrap_or(0);
    }
    let produced = hot.finish()? + 10_000;
    wait_for_rows(&spec, produced, Duration::from_secs(90)).with_context(|| c.log_text())?;
    assert!(rewritten >= 10, "compaction rewrote {rewritten} files");
    let after = by_partition(&spec.data_files_by_partition()?);
    assert_cold_partitions_packed(&after);
    let view = spec.inspect()?;
    view.assert_exactly(produced);
    assert!(
        !c.log_text().contains("ERROR"),
        "the coordinator logged errors: {}",
        c.log_text()
    );
    eprintln!(
        "distributed: {produced} events exactly once; {rewritten} files rewritten; {after:?}"
    );
    Ok(())
}

#[test]
fn compaction_rewrites_files_written_before_and_after_a_schema_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 1)?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    let producer = broker.producer()?;
    let two_days_ago = chrono::Utc::now().timestamp_millis() - 2 * DAY_MS;
    // Files of the table's first schema: only the columns it was created with, in commits
    // of their own.
    for chunk in 0..3u64 {
        for id in chunk * 100..(chunk + 1) * 100 {
            let ts = chrono::DateTime::from_timestamp_millis(two_days_ago)
                .context("ts")?
                .to_rfc3339();
            let json = format!(r#"{{"id":{id},"ts":"{ts}","user_id":"u","amount":1.0}}"#);
            producer.send("clicks", 0, json.as_bytes())?;
        }
        producer.flush()?;
        wait_for_rows(&spec, (chunk + 1) * 100, Duration::from_secs(60))?;
    }
    // The click events carry `page` and `session`: the table evolves, later files have them.
    for chunk in 0..3u64 {
        let ids = 300 + chunk * 100..300 + (chunk + 1) * 100;
        for id in ids {
            producer.send("clicks", 0, event_json(id, two_days_ago).as_bytes())?;
        }
        producer.flush()?;
        wait_for_rows(&spec, 400 + chunk * 100, Duration::from_secs(60))?;
    }
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    assert!(
        tw.log_text().contains("schema evolved"),
        "{}",
        tw.log_text()
    );
    let files_before = spec.data_files()?.len();
    assert!(files_before >= 6, "{files_before} files");

    std::thread::sleep(Duration::from_secs(2));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(&spec, "  hotPartitionGuard:\n    minAge: 1s\n"),
    )?;
    let report = compact_once(&policy)?;
    let t = table_report(&report);
    assert!(t["error"].is_null(), "{report}");
    assert!(t["filesRewritten"].as_u64() >= Some(6), "{report}");
    let files_after = spec.data_files()?.len();
    assert!(
        files_after < files_before,
        "{files_before} → {files_after}: {report}"
    );

    // Every row once, and the new columns hold exactly the values of the later events.
    let tables = tidewater_e2e::inspect_catalog(&spec.catalog_uri, &spec.warehouse, true)?;
    let t = &tables["analytics.clicks"];
    assert_eq!((t.pyiceberg_rows, t.pyiceberg_distinct), (600, 600));
    assert_eq!(t.duckdb, Some((600, 600)));
    for (reader, nonnull) in [("PyIceberg", &t.nonnull), ("DuckDB", &t.duckdb_nonnull)] {
        assert_eq!(nonnull.get("page"), Some(&300), "{reader}: {nonnull:?}");
        assert_eq!(nonnull.get("session"), Some(&300), "{reader}");
        assert_eq!(nonnull.get("user_id"), Some(&600), "{reader}");
    }
    Ok(())
}
