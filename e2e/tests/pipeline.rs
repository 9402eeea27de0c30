//! End to end against a real broker and a real SQLite catalog: records land exactly once,
//! new partitions are picked up, bad records are dead-lettered with reasons, and without a
//! dead-letter topic a bad record stops the pipeline without committing past it.

use std::time::Duration;

use anyhow::Result;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use tidewater_e2e::{Broker, PipelineSpec, Tidewater, event_json, wait_for_rows};

const LONG: Duration = Duration::from_secs(90);

#[test]
fn lands_every_record_once_picks_up_new_partitions_and_reports_progress() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.extra_topics = vec!["clicks-late".into()];
    // With schema evolution off, fields without a column are counted, not added.
    spec.schema_evolution = Some(false);
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 4, 0..5000)?;
    producer.flush()?;

    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    let view = wait_for_rows(&spec, 5000, LONG)?;
    assert_eq!(view.pyiceberg_rows, 5000, "log:\n{}", tw.log_text());

    // Tansu cannot add partitions to a topic (CreatePartitions is unsupported), so growth
    // is exercised through the same discovery path: a subscribed topic whose partitions
    // appear while the pipeline runs must be read without a restart.
    broker.create_topic("clicks-late", 2)?;
    producer.send_events("clicks-late", 2, 5000..6000)?;
    producer.send_events("clicks", 4, 6000..7000)?;
    producer.flush()?;
    let view = wait_for_rows(&spec, 7000, LONG)?;
    assert_eq!(
        view.pyiceberg_rows,
        7000,
        "new partitions not picked up; log:\n{}",
        tw.log_text()
    );

    // Checkpoints with nothing new create no snapshot.
    let snapshots_before = spec.inspect()?.raw["snapshots"].as_array().unwrap().len();
    std::thread::sleep(Duration::from_secs(6));
    let snapshots_after = spec.inspect()?.raw["snapshots"].as_array().unwrap().len();
    assert_eq!(
        snapshots_before, snapshots_after,
        "empty checkpoints must not commit"
    );
    let lag = tw.metric("tidewater_partition_lag_records{topic=\"clicks\",partition=\"0\"}");
    assert_eq!(lag, Some(0.0), "lag of a drained partition");

    let records_in = tw.metric("tidewater_records_in_total").unwrap_or(0.0);
    assert!(records_in >= 7000.0, "records_in {records_in}");
    assert!(tw.metric("tidewater_commits_total").unwrap_or(0.0) >= 2.0);
    assert!(tw.metric("tidewater_seconds_since_last_commit").is_some());
    // The events carry `page` and `session`, which the table has no column for: they are not
    // written, and not dropped silently either — counted per field, logged once per field
    // (by each of the two workers at most).
    for field in ["page", "session"] {
        let n = tw.metric(&format!(
            "tidewater_unknown_field_records_total{{field=\"{field}\"}}"
        ));
        assert!(n.is_some_and(|n| n >= 7000.0), "{field}: {n:?}");
        let log = tw.log_text();
        let lines = log
            .lines()
            .filter(|l| l.contains("has no column for") && l.contains(&format!("field={field}")))
            .count();
        assert!(
            (1..=2).contains(&lines),
            "{field} logged {lines} times:\n{log}"
        );
    }
    assert_eq!(
        tw.metric("tidewater_unknown_field_records_total{field=\"id\"}"),
        None
    );
    let status = tw.stop(Duration::from_secs(30))?;
    assert!(status.success(), "exit {status:?}; log:\n{}", tw.log_text());

    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (7000, 7000));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (7000, 7000));
    let snapshots = view.raw["snapshots"].as_array().unwrap();
    let mut last_id = 0u64;
    for s in snapshots {
        let props = &s["properties"];
        assert_ne!(props["added-records"], "0", "every snapshot adds rows");
        assert_eq!(props["tidewater.pipeline-uid"], "local/default/clicks");
        let id: u64 = props["tidewater.checkpoint-id"].as_str().unwrap().parse()?;
        assert!(id > last_id, "checkpoint ids increase along the history");
        last_id = id;
    }
    let last_offsets: serde_json::Value = serde_json::from_str(
        snapshots.last().unwrap()["properties"]["tidewater.offsets"]
            .as_str()
            .unwrap(),
    )?;
    let total: i64 = ["clicks", "clicks-late"]
        .iter()
        .flat_map(|t| last_offsets[t].as_object().unwrap().values())
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(
        total, 7000,
        "offsets in the newest snapshot cover every record: {last_offsets}"
    );

    // Progress is visible to lag tools in the consumer group (never read back as truth).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "tidewater.clicks")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("clicks", p);
    }
    for p in 0..2 {
        tpl.add_partition("clicks-late", p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let group_total: i64 = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum();
    assert_eq!(group_total, 7000, "consumer group offsets: {committed:?}");
    Ok(())
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_reasons() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    broker.create_topic("clicks.dlq", 1)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.dead_letter = Some("clicks.dlq".into());
    spec.max_record_bytes = Some(2000);
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    let big = format!(r#"{{"id":999999,"user_id":"{}"}}"#, "x".repeat(3000));
    let bad: Vec<(&str, String)> = vec![
        ("invalid-json", r#"{"id": 5, "user_id": "#.to_string()),
        (
            "wrong-type",
            r#"{"id": "seven", "user_id": "u"}"#.to_string(),
        ),
        (
            "missing-required",
            r#"{"user_id": "u", "amount": 1.5}"#.to_string(),
        ),
        ("wrong-type", r#"{"id": 8, "ts": "not a time"}"#.to_string()),
        ("oversize", big),
        ("not-an-object", "[1,2,3]".to_string()),
    ];
    let now = chrono::Utc::now().timestamp_millis();
    let mut good = 0u64;
    for (i, (_, payload)) in bad.iter().enumerate() {
        for _ in 0..50 {
            producer.send("clicks", 0, event_json(good, now).as_bytes())?;
            good += 1;
        }
        producer.send("clicks", i32::try_from(i % 2).unwrap(), payload.as_bytes())?;
    }
    producer.send_events("clicks", 2, good..good + 100)?;
    good += 100;
    producer.flush()?;

    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    let view = wait_for_rows(&spec, good, LONG)?;
    assert_eq!(view.pyiceberg_rows, good, "log:\n{}", tw.log_text());
    let dead = broker.consume_all("clicks.dlq", bad.len(), Duration::from_secs(30))?;
    assert_eq!(dead.len(), bad.len(), "every bad record is dead-lettered");
    let mut kinds: Vec<String> = dead
        .iter()
        .map(|r| r.headers["tidewater.error.kind"].clone())
        .collect();
    kinds.sort();
    let mut expected: Vec<String> = bad.iter().map(|(k, _)| (*k).to_string()).collect();
    expected.sort();
    assert_eq!(kinds, expected);
    for r in &dead {
        let payload = String::from_utf8(r.payload.clone().unwrap())?;
        let original = bad.iter().find(|(_, p)| *p == payload);
        assert!(
            original.is_some(),
            "dead-lettered value is the original record"
        );
        assert_eq!(r.headers["tidewater.source.topic"], "clicks");
        assert!(r.headers.contains_key("tidewater.source.partition"));
        assert!(r.headers["tidewater.source.offset"].parse::<i64>().is_ok());
        assert!(!r.headers["tidewater.error"].is_empty());
    }
    let wrong_id = dead
        .iter()
        .find(|r| r.payload.as_deref() == Some(bad[1].1.as_bytes()))
        .unwrap();
    assert_eq!(
        wrong_id.headers["tidewater.error"],
        "field `id`: expected long, got string \"seven\""
    );
    let counted = tw.metric("tidewater_dead_lettered_records_total{reason=\"wrong-type\"}");
    assert_eq!(counted, Some(2.0));
    assert!(tw.stop(Duration::from_secs(30))?.success());
    let view = spec.inspect()?;
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (good, good));
    Ok(())
}

#[test]
fn without_a_dead_letter_topic_a_bad_record_stops_the_pipeline_before_it() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 1)?;
    let dir = tempfile::tempdir()?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 1, 0..50)?;
    producer.send("clicks", 0, br#"{"id": "fifty"}"#)?;
    producer.send_events("clicks", 1, 51..100)?;
    producer.flush()?;

    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    let status = tw.wait_timeout(LONG).expect("the pipeline stops by itself");
    assert!(!status.success());
    let log = tw.log_text();
    assert!(
        log.contains("record clicks/0@50 cannot be converted"),
        "{log}"
    );
    assert!(log.contains("spec.deadLetter is not set"), "{log}");
    let view = spec.inspect()?;
    assert!(
        view.pyiceberg_rows <= 50,
        "nothing past the bad record is committed: {view:?}"
    );
    Ok(())
}

#[test]
fn validate_names_every_invalid_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), "127.0.0.1:1", "clicks");
    spec.parallelism = 0;
    spec.interval = "soon".into();
    spec.partition_by = vec!["bucket(id)".into()];
    let file = dir.path().join("bad.yaml");
    spec.write(&file)?;
    let out = std::process::Command::new(tidewater_e2e::tidewater_bin())
        .args(["validate", "-f"])
        .arg(&file)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("spec.parallelism: 0 must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("spec.checkpoint.interval: `soon` is not a duration"),
        "{err}"
    );
    assert!(
        err.contains("spec.sink.createTable.partitionBy[0]"),
        "{err}"
    );
    // Typos and a foreign kind are reported, not silently ignored.
    let typo = spec
        .yaml()
        .replace("  checkpoint:", "  checkpont:")
        .replace("kind: IngestionPipeline", "kind: Pipeline");
    std::fs::write(&file, typo)?;
    let out = std::process::Command::new(tidewater_e2e::tidewater_bin())
        .args(["validate", "-f"])
        .arg(&file)
        .output()?;
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("spec.checkpont: unknown field"), "{err}");
    assert!(err.contains("kind: must be `IngestionPipeline`"), "{err}");
    let ok = std::process::Command::new(tidewater_e2e::tidewater_bin())
        .args(["validate", "-f"])
        .arg(tidewater_e2e::repo_root().join("examples/clickstream.yaml"))
        .output()?;
    assert!(ok.status.success());
    Ok(())
}

#[test]
fn starting_offsets_latest_skips_what_was_there_before() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 1)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.starting_offsets = "latest".into();
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    // One record per produce request: Tansu's memory engine reports the high watermark as
    // the last batch's first offset + 1, which is exact only for one-record batches.
    for id in 0..30 {
        producer.send_events("clicks", 1, id..id + 1)?;
        producer.flush()?;
    }
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(2));
    producer.send_events("clicks", 1, 30..80)?;
    producer.flush()?;
    wait_for_rows(&spec, 50, LONG)?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(tw.stop(Duration::from_secs(30))?.success());
    let view = spec.inspect()?;
    assert_eq!(
        (view.pyiceberg_rows, view.pyiceberg_distinct),
        (50, 50),
        "only records produced after the start: {view:?}"
    );
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (50, 50));
    Ok(())
}

/// Waits until `/v1/status` shows `n` workers owning partitions and none unowned.
fn wait_local_workers(tw: &Tidewater, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = tw.status()?;
        let owners: std::collections::BTreeSet<String> = status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["worker"].to_string())
            .collect();
        if owners.len() == n && !owners.contains("null") {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "never {n} workers: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_mode_rescales_live_and_stops_with_a_savepoint() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.parallelism = 1;
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 4, 0..2000)?;
    producer.flush()?;
    let log = dir.path().join("tw.log");
    let mut tw = Tidewater::start(&file, &log, None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    wait_local_workers(&tw, 1)?;

    // In one process the coordinator starts and stops worker threads to match the target.
    let (code, body) = tw.http_post("/v1/parallelism", r#"{"workers": 2}"#)?;
    assert_eq!(code, 202, "{body}");
    wait_local_workers(&tw, 2)?;
    producer.send_events("clicks", 4, 2000..4000)?;
    producer.flush()?;
    wait_for_rows(&spec, 4000, LONG)?;
    let (code, body) = tw.http_post("/v1/parallelism", r#"{"workers": 0}"#)?;
    assert_eq!(code, 400, "zero workers is refused: {body}");

    let (code, body) = tw.http_post("/v1/savepoints", r#"{"stop": true}"#)?;
    assert_eq!(code, 202, "{body}");
    let exit = tw
        .wait_timeout(Duration::from_secs(30))
        .expect("a stop savepoint ends the run");
    assert!(exit.success(), "{}", tw.log_text());
    let path = tw
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("path=")
                .nth(1)
                .map(|p| p.split_whitespace().next().unwrap().to_string())
        })
        .expect("savepoint path in the log");
    assert!(std::path::Path::new(&path).exists(), "{path}");

    // Restore it with more records waiting: exactly once across the stop.
    producer.send_events("clicks", 4, 4000..5000)?;
    producer.flush()?;
    let mut tw = Tidewater::start_with(&file, &log, None, &["--from-savepoint", &path])?;
    tw.wait_healthy(Duration::from_secs(30))?;
    wait_for_rows(&spec, 5000, LONG)?;
    assert!(tw.stop(Duration::from_secs(30))?.success());
    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (5000, 5000));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (5000, 5000));
    Ok(())
}

#[test]
fn a_topic_pattern_reads_matching_topics_including_new_ones() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks.web", 2)?;
    broker.create_topic("views", 1)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "unused");
    spec.topic_pattern = Some(r"clicks\..*".into());
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks.web", 2, 0..300)?;
    producer.send_events("views", 1, 300..400)?;
    producer.flush()?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(30))?;
    wait_for_rows(&spec, 300, LONG)?;
    // A matching topic created while running is picked up without a restart.
    broker.create_topic("clicks.app", 2)?;
    producer.send_events("clicks.app", 2, 400..600)?;
    producer.flush()?;
    wait_for_rows(&spec, 500, LONG)?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tw.stop(Duration::from_secs(30))?.success(),
        "{}",
        tw.log_text()
    );
    let view = spec.inspect()?;
    assert_eq!(
        (
            view.pyiceberg_rows,
            view.pyiceberg_distinct,
            view.duckdb_rows,
            view.duckdb_distinct
        ),
        (500, 500, 500, 500),
        "all of clicks.web and clicks.app, nothing of views"
    );
    Ok(())
}
