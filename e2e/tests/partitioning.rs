//! Every partition transform and the file-size property, written by tidewater and read back
//! by PyIceberg and DuckDB.

use std::time::Duration;

use anyhow::Result;
use tidewater_e2e::{Broker, PipelineSpec, Tidewater, wait_for_rows};

fn run_with(
    partition_by: &[&str],
    write_properties: &[(&str, &str)],
    rows: u64,
) -> Result<serde_json::Value> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.partition_by = partition_by.iter().map(|s| (*s).to_string()).collect();
    spec.write_properties = write_properties
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 2, 0..rows)?;
    producer.flush()?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    wait_for_rows(&spec, rows, Duration::from_secs(60))?;
    assert!(
        tw.stop(Duration::from_secs(30))?.success(),
        "log:\n{}",
        tw.log_text()
    );
    let view = spec.inspect()?;
    assert_eq!(
        (view.pyiceberg_rows, view.pyiceberg_distinct),
        (rows, rows),
        "{partition_by:?}"
    );
    assert_eq!(
        (view.duckdb_rows, view.duckdb_distinct),
        (rows, rows),
        "{partition_by:?}"
    );
    let data = dir.path().join("warehouse/analytics/clicks/data");
    let mut dirs = Vec::new();
    let mut files = 0;
    for entry in walk(&data) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            files += 1;
            dirs.push(
                entry
                    .parent()
                    .unwrap()
                    .strip_prefix(&data)?
                    .display()
                    .to_string(),
            );
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(serde_json::json!({"dirs": dirs, "files": files}))
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn identity_bucket_truncate_and_hour() -> Result<()> {
    let r = run_with(
        &[
            "event_type",
            "bucket(4, id)",
            "truncate(6, user_id)",
            "hour(ts)",
        ],
        &[],
        3000,
    )?;
    let dirs: Vec<String> = serde_json::from_value(r["dirs"].clone())?;
    // 4 event types x 4 buckets, user ids truncated to "user-0".
    assert_eq!(dirs.len(), 16, "{dirs:?}");
    assert!(
        dirs.iter().all(|d| d.starts_with("event_type=")),
        "{dirs:?}"
    );
    assert!(dirs.iter().any(|d| d.contains("/id_bucket=3/")), "{dirs:?}");
    assert!(
        dirs.iter()
            .all(|d| d.contains("/user_id_trunc=user-0/ts_hour=")),
        "{dirs:?}"
    );
    Ok(())
}

#[test]
fn year_and_month() -> Result<()> {
    let year = run_with(&["year(ts)"], &[], 3000)?;
    assert!(
        year["dirs"][0].as_str().unwrap().starts_with("ts_year="),
        "{year}"
    );
    let month = run_with(&["month(ts)"], &[], 3000)?;
    assert!(
        month["dirs"][0].as_str().unwrap().starts_with("ts_month="),
        "{month}"
    );
    Ok(())
}

#[test]
fn target_file_size_rolls_files() -> Result<()> {
    // Files roll between batches (8192 rows): 40k rows over two workers is at least five
    // batches, and with a 16 KiB target every batch after a file's first starts a new file.
    let small = run_with(
        &[],
        &[
            ("write.target-file-size-bytes", "16384"),
            ("write.parquet.compression-codec", "snappy"),
        ],
        40_000,
    )?;
    let files = small["files"].as_u64().unwrap();
    assert!(files >= 5, "a 16 KiB target must roll files, got {files}");
    let default = run_with(&[], &[], 40_000)?;
    let default_files = default["files"].as_u64().unwrap();
    assert!(
        default_files < files,
        "the default 512 MiB target writes fewer files ({default_files}) than a 16 KiB one ({files})"
    );
    Ok(())
}
