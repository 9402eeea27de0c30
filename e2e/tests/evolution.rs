//! Schema evolution without restart, running `examples/evolving-json.yaml`: records change
//! shape while one pipeline process runs — new fields become columns, an int column widens to
//! long, a required column becomes optional, a nested object becomes a struct column, a
//! string where a number was is dead-lettered with its reason. PyIceberg and DuckDB read every
//! value of the evolved table. Then the same pipeline with `onIncompatible: fail` stops at
//! such a record without committing past it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tidewater_e2e::{Broker, CatalogTable, Tidewater, inspect_catalog, repo_root};

const TABLE: &str = "shop.orders";

fn send(
    producer: &tidewater_e2e::EventProducer,
    ids: std::ops::Range<u64>,
    json: impl Fn(u64) -> String,
) -> Result<()> {
    for id in ids {
        producer.send("orders", i32::try_from(id % 2)?, json(id).as_bytes())?;
    }
    producer.flush()
}

fn wait_rows(uri: &str, warehouse: &std::path::Path, rows: u64) -> Result<CatalogTable> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = inspect_catalog(uri, warehouse, false)?
            .remove(TABLE)
            .unwrap_or_default();
        if t.pyiceberg_rows >= rows || Instant::now() > deadline {
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn records_that_change_shape_evolve_the_table_without_a_restart() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("orders", 2)?;
    let dir = tempfile::tempdir()?;
    let local = format!("{}/", dir.path().display());
    let example = std::fs::read_to_string(repo_root().join("examples/evolving-json.yaml"))?;
    let yaml = example
        .replace("127.0.0.1:9092", &broker.bootstrap)
        .replace(".tidewater/", &local)
        .replace("interval: 2s", "interval: 1s");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &yaml)?;
    let (uri, warehouse) = (
        format!("sqlite://{local}orders-catalog.db"),
        dir.path().join("warehouse"),
    );
    let producer = broker.producer()?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;

    // The shape the table was created for.
    send(&producer, 0..100, |id| {
        format!(r#"{{"id":{id},"qty":{},"note":"n{id}"}}"#, id % 7)
    })?;
    let t = wait_rows(&uri, &warehouse, 100)?;
    assert_eq!(t.columns, ["id", "qty", "note"], "{}", tw.log_text());
    // Three new fields.
    send(&producer, 100..200, |id| {
        format!(r#"{{"id":{id},"qty":1,"note":"n","coupon":"C{id}","score":{id}.5,"gift":true}}"#)
    })?;
    // A quantity beyond 32 bits, then records without the required note.
    send(&producer, 200..250, |id| {
        format!(
            r#"{{"id":{id},"qty":{},"note":"big"}}"#,
            5_000_000_000u64 + id
        )
    })?;
    send(&producer, 250..300, |id| {
        format!(r#"{{"id":{id},"qty":2}}"#)
    })?;
    // A nested object (becomes a struct column), and ids that are not numbers (dead-lettered).
    send(&producer, 300..310, |id| {
        format!(r#"{{"id":{id},"note":"x","meta":{{"a":{id}}}}}"#)
    })?;
    send(&producer, 310..320, |id| {
        format!(r#"{{"id":"order-{id}","note":"x"}}"#)
    })?;
    let t = wait_rows(&uri, &warehouse, 310)?;
    assert_eq!(t.pyiceberg_rows, 310, "{t:?}\n{}", tw.log_text());
    let meta = tw.metric("tidewater_unknown_field_records_total{field=\"meta\"}");
    assert_eq!(
        meta, None,
        "the nested object became a column, nothing was left out"
    );
    let changes = tw
        .metric("tidewater_schema_changes_total{table=\"shop.orders\"}")
        .context("schema changes counted")?;
    assert!(changes >= 3.0, "three updates at least: {changes}");
    assert_eq!(
        tw.log_text().matches("starting pipeline").count(),
        1,
        "one process run"
    );
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );

    let t = inspect_catalog(&uri, &warehouse, true)?
        .remove(TABLE)
        .context("table")?;
    assert_eq!(
        t.columns,
        ["id", "qty", "note", "coupon", "score", "gift", "meta"]
    );
    assert!(
        t.types["meta"].starts_with("struct<") && t.types["meta"].contains("a: optional long"),
        "{t:?}"
    );
    assert_eq!(t.types["qty"], "long", "{t:?}");
    assert_eq!(
        (
            t.types["coupon"].as_str(),
            t.types["score"].as_str(),
            t.types["gift"].as_str()
        ),
        ("string", "double", "boolean")
    );
    assert_eq!(t.required, ["id"], "note became optional");
    assert_eq!((t.pyiceberg_rows, t.pyiceberg_distinct), (310, 310));
    for (reader, nonnull) in [("PyIceberg", &t.nonnull), ("DuckDB", &t.duckdb_nonnull)] {
        assert_eq!(nonnull["coupon"], 100, "{reader}: {nonnull:?}");
        assert_eq!(nonnull["score"], 100, "{reader}");
        assert_eq!(nonnull["gift"], 100, "{reader}");
        assert_eq!(nonnull["meta"], 10, "{reader}");
        assert_eq!(
            nonnull["qty"], 300,
            "{reader}: every record but the ten with a nested object"
        );
        assert_eq!(nonnull["note"], 260, "{reader}: all but the 50 without one");
    }
    assert_eq!(t.duckdb, Some((310, 310)));
    let dead = broker.consume_all("orders.dlq", 10, Duration::from_secs(20))?;
    assert_eq!(dead.len(), 10);
    for d in &dead {
        assert_eq!(
            d.headers.get("tidewater.error.kind").map(String::as_str),
            Some("wrong-type"),
            "{d:?}"
        );
    }

    // The same pipeline failing on incompatible records: it stops, nothing past the record.
    std::fs::write(
        &file,
        yaml.replace("onIncompatible: deadLetter", "onIncompatible: fail"),
    )?;
    // All in one partition, so "after" is after the bad record in offset order.
    for id in 320..340u64 {
        let json = match id {
            330 => r#"{"id":"bad","note":"x"}"#.to_string(),
            _ => format!(r#"{{"id":{id},"note":"n"}}"#),
        };
        producer.send("orders", 0, json.as_bytes())?;
    }
    producer.flush()?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw2.log"), None)?;
    let status = tw
        .wait_timeout(Duration::from_secs(60))
        .context("the pipeline must stop at the incompatible record")?;
    assert!(!status.success());
    let log = tw.log_text();
    assert!(log.contains("onIncompatible is fail"), "{log}");
    let t = inspect_catalog(&uri, &warehouse, false)?
        .remove(TABLE)
        .context("table")?;
    assert!(
        t.ids.iter().all(|id| *id < 330),
        "nothing after the incompatible record is committed: {:?}",
        &t.ids[300..]
    );
    Ok(())
}
