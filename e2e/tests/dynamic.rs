//! Dynamic ingestion end to end, running `examples/multi-topic.yaml`: many topics into many
//! tables, routed by topic and by a record field, tables created on first use, topics created while the pipeline runs picked
//! up without a restart, unroutable records dead-lettered with the reason; then a stop with a
//! savepoint and a restore from it continue every table exactly once, and a topic that
//! appeared after the savepoint gets a new table. Each worker may keep only 4 writers open, so writing
//! 27 tables rolls files over all the time. Checked by PyIceberg and DuckDB on every table.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tidewater_e2e::{
    Broker, CatalogTable, Tidewater, assert_kind_counts, inspect_catalog, repo_root,
    wait_for_total_rows,
};

/// Events per topic.
const PER_TOPIC: u64 = 40;

fn topic(i: usize) -> String {
    format!("ev-{i:02}")
}

/// The table a topic's events land in: rule `ev-0[0-4]` → `hot.…`, the rest `raw.…`.
fn table_of(i: usize) -> String {
    if i < 5 {
        format!("hot.ev_{i:02}")
    } else {
        format!("raw.ev_{i:02}")
    }
}

/// The example's catalog under the test's directory.
struct Catalog {
    uri: String,
    warehouse: std::path::PathBuf,
}

/// Polls the catalog until `want` holds (PyIceberg only), or gives up with what it saw.
fn wait_for_tables(
    catalog: &Catalog,
    timeout: Duration,
    want: impl Fn(&BTreeMap<String, CatalogTable>) -> bool,
) -> Result<BTreeMap<String, CatalogTable>> {
    let deadline = Instant::now() + timeout;
    loop {
        let tables = inspect_catalog(&catalog.uri, &catalog.warehouse, false)?;
        if want(&tables) || Instant::now() > deadline {
            return Ok(tables);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn rows(tables: &BTreeMap<String, CatalogTable>, table: &str) -> u64 {
    tables.get(table).map_or(0, |t| t.pyiceberg_rows)
}

#[test]
fn a_pattern_routes_topics_into_tables_created_on_first_use() -> Result<()> {
    let broker = Broker::start()?;
    let producer = broker.producer()?;
    for i in 0..20 {
        broker.create_topic(&topic(i), 2)?;
        producer.send_events(&topic(i), 2, 0..PER_TOPIC)?;
    }
    // Routed by a field of the value: kinds a and b, and records without one (unroutable).
    broker.create_topic("ev-kind", 1)?;
    for id in 0..30u64 {
        let payload = match id % 3 {
            0 => format!(r#"{{"id":{id},"kind":"a"}}"#),
            1 => format!(r#"{{"id":{id},"kind":"B"}}"#),
            _ => format!(r#"{{"id":{id}}}"#),
        };
        producer.send("ev-kind", 0, payload.as_bytes())?;
    }
    producer.flush()?;

    let dir = tempfile::tempdir()?;
    let example = std::fs::read_to_string(repo_root().join("examples/multi-topic.yaml"))?;
    let local = format!("{}/", dir.path().display());
    let yaml = example
        .replace("127.0.0.1:9092", &broker.bootstrap)
        .replace(".tidewater/", &local)
        .replace("interval: 2s", "interval: 1s");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml)?;
    let spec = Catalog {
        uri: format!("sqlite://{local}events-catalog.db"),
        warehouse: dir.path().join("warehouse"),
    };
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;

    let first = wait_for_tables(&spec, Duration::from_secs(120), |t| {
        (0..20).all(|i| rows(t, &table_of(i)) >= PER_TOPIC)
    })?;
    for i in 0..20 {
        assert_eq!(
            rows(&first, &table_of(i)),
            PER_TOPIC,
            "{}: {first:?}\n{}",
            table_of(i),
            tw.log_text()
        );
    }

    // Five topics created while the pipeline runs: found by discovery, tables created.
    for i in 20..25 {
        broker.create_topic(&topic(i), 2)?;
        producer.send_events(&topic(i), 2, 0..PER_TOPIC)?;
    }
    producer.flush()?;
    let grown = wait_for_tables(&spec, Duration::from_secs(120), |t| {
        (0..25).all(|i| rows(t, &table_of(i)) >= PER_TOPIC)
            && rows(t, "by_kind.a") >= 10
            && rows(t, "by_kind.b") >= 10
    })?;
    assert!(
        (20..25).all(|i| rows(&grown, &table_of(i)) == PER_TOPIC),
        "{grown:?}\n{}",
        tw.log_text()
    );
    let status = tw.status()?;
    let listed: Vec<&str> = status["tables"]
        .as_array()
        .context("status lists tables")?
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(listed.len(), 27, "{listed:?}");
    assert!(listed.contains(&"by_kind.b") && listed.contains(&"hot.ev_04"));
    // Stop with a savepoint: it names these 27 tables and no other.
    let savepoint = tw.stop_with_savepoint()?;

    // Unroutable records are dead-lettered with the reason, nothing else.
    let dead = broker.consume_all("events.dlq", 10, Duration::from_secs(20))?;
    assert_eq!(dead.len(), 10, "{dead:?}");
    for d in &dead {
        assert_eq!(
            d.headers.get("tidewater.error.kind").map(String::as_str),
            Some("unroutable"),
            "{d:?}"
        );
        assert!(
            d.headers
                .get("tidewater.error")
                .is_some_and(|r| r.contains("value field `kind` is missing")),
            "{d:?}"
        );
    }

    // Restored from the savepoint, every table goes on from it — more events, nothing twice —
    // and a topic that appeared after it gets a table that did not exist then.
    for i in [0, 7, 24] {
        producer.send_events(&topic(i), 2, PER_TOPIC..2 * PER_TOPIC)?;
    }
    broker.create_topic(&topic(25), 2)?;
    producer.send_events(&topic(25), 2, 0..PER_TOPIC)?;
    producer.flush()?;
    let mut tw = Tidewater::start_with(
        &file,
        &dir.path().join("tw2.log"),
        None,
        &["--from-savepoint", &savepoint],
    )?;
    wait_for_tables(&spec, Duration::from_secs(90), |t| {
        [0, 7, 24]
            .iter()
            .all(|&i| rows(t, &table_of(i)) >= 2 * PER_TOPIC)
            && rows(t, &table_of(25)) >= PER_TOPIC
    })?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let all = inspect_catalog(&spec.uri, &spec.warehouse, true)?;
    assert_eq!(all.len(), 28, "{:?}", all.keys());
    for i in 0..26 {
        let want = if [0, 7, 24].contains(&i) {
            2 * PER_TOPIC
        } else {
            PER_TOPIC
        };
        let t = &all[&table_of(i)];
        assert_eq!(
            (t.pyiceberg_rows, t.pyiceberg_distinct, t.duckdb),
            (want, want, Some((want, want))),
            "{}",
            table_of(i)
        );
    }
    for kind in ["by_kind.a", "by_kind.b"] {
        let t = &all[kind];
        assert_eq!(
            (t.pyiceberg_rows, t.duckdb),
            (10, Some((10, 10))),
            "{kind}: {t:?}"
        );
        // Columns inferred from the table's first record (`createTable: {}`).
        assert_eq!(t.columns, ["id", "kind"], "{kind}");
        assert_eq!(
            (t.types["id"].as_str(), t.types["kind"].as_str()),
            ("long", "string")
        );
    }
    Ok(())
}

/// Waits until the four routed tables hold `total` rows, then checks their counts.
fn assert_kind_tables(uri: &str, warehouse: &std::path::Path, total: u64) -> Result<()> {
    wait_for_total_rows(uri, warehouse, total, Duration::from_secs(120))?;
    assert_kind_counts(&inspect_catalog(uri, warehouse, true)?, total);
    Ok(())
}

#[test]
fn a_coordinator_and_two_workers_route_into_tables_through_a_lost_worker_and_a_savepoint()
-> Result<()> {
    use tidewater_e2e::{BackgroundProducer, PipelineSpec};
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.route = Some("      table: \"analytics.clicks_{value.event_type}\"\n".into());
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let producer = BackgroundProducer::start(&broker, "clicks", 4, 1000)?;

    let mut c = Tidewater::coordinator(&file, &log("c1"), None, &["--heartbeat-timeout", "3s"])?;
    c.wait_healthy(Duration::from_secs(60))?;
    let mut w1 = Tidewater::worker(&c.url(), "w1", &log("w1"))?;
    let _w2 = Tidewater::worker(&c.url(), "w2", &log("w2"))?;
    std::thread::sleep(Duration::from_secs(4));
    // A worker lost mid-stream: its partitions and open files move on, nothing twice.
    w1.kill9();
    let _w3 = Tidewater::worker(&c.url(), "w3", &log("w3"))?;
    std::thread::sleep(Duration::from_secs(5));
    let path = c.stop_with_savepoint()?;

    // Restored by a new coordinator with two new workers, while the producer goes on.
    let mut c2 = Tidewater::coordinator(
        &file,
        &log("c2"),
        None,
        &["--heartbeat-timeout", "3s", "--from-savepoint", &path],
    )?;
    c2.wait_healthy(Duration::from_secs(60))?;
    let _w4 = Tidewater::worker(&c2.url(), "w4", &log("w4"))?;
    let _w5 = Tidewater::worker(&c2.url(), "w5", &log("w5"))?;
    std::thread::sleep(Duration::from_secs(4));
    let total = producer.finish()?;
    assert_kind_tables(&spec.catalog_uri, &spec.warehouse, total)?;
    assert!(
        c2.stop(Duration::from_secs(60))?.success(),
        "{}",
        c2.log_text()
    );
    assert_kind_tables(&spec.catalog_uri, &spec.warehouse, total)
}
