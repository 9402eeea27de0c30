//! Exactly-once under crashes and zombies, checked by independent readers.
//!
//! Crash test: a producer runs the whole time while `tidewater` is crashed 40 times: 20
//! `kill -9` at random moments and 20 aborts at fail points that hit the dangerous windows
//! deterministically (mid-write, between checkpoint record and commit, mid-commit, after
//! commit before progress). Then PyIceberg and DuckDB must count exactly the produced rows
//! and as many distinct ids. Runs on the SQLite and the PostgreSQL catalog, once with a route
//! that spreads every checkpoint over four tables (crashes between two table commits), and
//! once with events that bring a new field every 4,000 ids (crashes right after a schema
//! update; every field must become one column holding exactly its events' values), and once
//! with a topic pattern routed by topic while new topics appear every few crashes and the main
//! topic's events keep bringing new fields (tables created and schemas changed in flight).
//!
//! Zombie test: a paused writer (SIGSTOP) wakes up after another writer with the same
//! pipeline uid took over; its commit must be refused, nothing duplicated.

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt,
    time::{Duration, Instant},
};

use anyhow::Result;
use rand::Rng;
use tidewater_e2e::{
    BackgroundProducer, Broker, CatalogTable, KIND_TABLES, PipelineSpec, Postgres, Tidewater,
    assert_kind_counts, inspect_catalog, wait_for_rows, wait_for_total_rows,
};

const FAILPOINTS: &[&str] = &[
    "worker.mid-write",
    "checkpoint.after-record",
    "commit.before-catalog-update",
    "commit.after-catalog-update",
];

/// Fail points of a checkpoint that commits several tables.
const MULTI_TABLE_FAILPOINTS: &[&str] = &[
    "checkpoint.between-table-commits",
    "checkpoint.after-record",
    "commit.before-catalog-update",
    "worker.mid-write",
];

/// Fail points around schema updates (the events bring a new field every 4,000 ids).
const EVOLVING_FAILPOINTS: &[&str] = &[
    "worker.after-schema-update",
    "checkpoint.after-record",
    "worker.mid-write",
    "commit.before-catalog-update",
];

/// Fail points with new topics, new tables and new fields in flight.
const NEW_TOPIC_FAILPOINTS: &[&str] = &[
    "checkpoint.between-table-commits",
    "worker.after-schema-update",
    "checkpoint.after-record",
    "worker.mid-write",
];

/// Events sent to every new topic per crash iteration.
const NEW_TOPIC_BATCH: u64 = 50;

/// Ids per new field in the evolving crash test.
const IDS_PER_FIELD: u64 = 4000;

/// A small event whose field `x{k}` is new every [`IDS_PER_FIELD`] ids.
fn evolving_event(id: u64) -> String {
    format!(r#"{{"id":{id},"x{}":{id}}}"#, id / IDS_PER_FIELD)
}

/// What the crash test's pipeline does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One table.
    Plain,
    /// Four routed tables: every checkpoint commits several.
    Routed,
    /// One table whose schema grows all the time.
    Evolving,
    /// `topicPattern` routed by topic: new topics (new tables) every few iterations, and the
    /// main topic's schema growing.
    NewTopics,
}

fn crash_test(catalog_uri: Option<String>, iterations: usize) -> Result<()> {
    crash_test_with(catalog_uri, iterations, Mode::Plain)
}

fn crash_test_with(catalog_uri: Option<String>, iterations: usize, mode: Mode) -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let dir = tempfile::tempdir()?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    if let Some(uri) = catalog_uri {
        spec.catalog_uri = uri;
    }
    let failpoints = match mode {
        Mode::Plain => FAILPOINTS,
        Mode::Routed => {
            spec.route = Some("      table: \"analytics.clicks_{value.event_type}\"\n".into());
            MULTI_TABLE_FAILPOINTS
        }
        Mode::Evolving => EVOLVING_FAILPOINTS,
        Mode::NewTopics => {
            spec.topic_pattern = Some("clicks.*".into());
            spec.route = Some("      table: \"raw.{topic}\"\n".into());
            NEW_TOPIC_FAILPOINTS
        }
    };
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let log = dir.path().join("tw.log");
    let producer = match mode {
        Mode::Evolving | Mode::NewTopics => {
            BackgroundProducer::start_with(&broker, "clicks", 4, 2000, evolving_event)?
        }
        _ => BackgroundProducer::start(&broker, "clicks", 4, 2000)?,
    };

    let mut rng = rand::rng();
    let mut triggered: BTreeMap<&str, usize> = BTreeMap::new();
    let mut killed = 0;
    // New topics (NewTopics mode): how many events each has been sent.
    let mut new_topics: Vec<(String, u64)> = Vec::new();
    let sender = broker.producer()?;
    for i in 0..iterations {
        if mode == Mode::NewTopics {
            if i % 5 == 0 {
                let topic = format!("clicks-n{}", i / 5);
                broker.create_topic(&topic, 2)?;
                new_topics.push((topic, 0));
            }
            for (k, (topic, sent)) in new_topics.iter_mut().enumerate() {
                for id in *sent..*sent + NEW_TOPIC_BATCH {
                    // Ids of their own per topic; each topic's table gets a field of its own.
                    let event = evolving_event(k as u64 * 1_000_000 + id);
                    sender.send(topic, (id % 2) as i32, event.as_bytes())?;
                }
                *sent += NEW_TOPIC_BATCH;
            }
            sender.flush()?;
        }
        // Even iterations arm a fail point (in turn), odd ones are killed at a random moment.
        let failpoint = (i % 2 == 0).then(|| failpoints[(i / 2) % failpoints.len()]);
        let armed = failpoint.map(|f| format!("{f}@{}", rng.random_range(1..=2)));
        let mut tw = Tidewater::start(&file, &log, armed.as_deref())?;
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
                *triggered.entry(f).or_default() += 1
            }
            (_, Some(status)) => panic!(
                "iteration {i}: tidewater exited on its own with {status:?}; log:\n{}",
                tw.log_text()
            ),
            (_, None) => {
                tw.kill9();
                killed += 1;
            }
        }
    }
    let total = producer.finish()?;
    for f in failpoints {
        assert!(
            triggered.get(f).copied().unwrap_or(0) > 0,
            "fail point {f} never fired: {triggered:?}"
        );
    }
    eprintln!(
        "crash test: {iterations} crashes ({killed} kill -9, fail points {triggered:?}), {total} events"
    );

    if mode == Mode::Routed {
        return check_kind_tables(&spec, &file, &log, total);
    }
    if mode == Mode::NewTopics {
        return check_topic_tables(&spec, &file, &log, total, &new_topics);
    }
    // A last, undisturbed run drains the topic and stops cleanly.
    let mut tw = Tidewater::start(&file, &log, None)?;
    let view = wait_for_rows(&spec, total, Duration::from_secs(120))?;
    assert!(
        view.pyiceberg_rows >= total,
        "not everything landed: {view:?}"
    );
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "log:\n{}",
        tw.log_text()
    );

    let view = spec.inspect()?;
    assert_eq!(view.pyiceberg_rows, total, "PyIceberg rows");
    assert_eq!(view.pyiceberg_distinct, total, "PyIceberg distinct ids");
    assert_eq!(view.duckdb_rows, total, "DuckDB rows");
    assert_eq!(view.duckdb_distinct, total, "DuckDB distinct ids");
    if mode == Mode::Evolving {
        check_evolved_columns(&spec, total)?;
    }
    Ok(())
}

/// Every field became a column, once, holding exactly the values of the events that had it.
fn check_evolved_columns(spec: &PipelineSpec, total: u64) -> Result<()> {
    let tables = inspect_catalog(&spec.catalog_uri, &spec.warehouse, true)?;
    let t = &tables["analytics.clicks"];
    let fields = total.div_ceil(IDS_PER_FIELD);
    for k in 0..fields {
        let name = format!("x{k}");
        let want = (k * IDS_PER_FIELD..((k + 1) * IDS_PER_FIELD).min(total)).count() as u64;
        assert_eq!(
            t.types.get(&name).map(String::as_str),
            Some("long"),
            "{name}: {:?}",
            t.columns
        );
        assert_eq!(t.nonnull.get(&name), Some(&want), "PyIceberg {name}");
        assert_eq!(t.duckdb_nonnull.get(&name), Some(&want), "DuckDB {name}");
    }
    assert_eq!(
        t.columns.iter().filter(|c| c.starts_with('x')).count() as u64,
        fields,
        "one column per field, none twice: {:?}",
        t.columns
    );
    Ok(())
}

/// A last, undisturbed run until the catalog's tables hold `total` rows together, stopped
/// cleanly; then every table as both readers see it.
fn drain_into_tables(
    spec: &PipelineSpec,
    file: &std::path::Path,
    log: &std::path::Path,
    total: u64,
) -> Result<BTreeMap<String, CatalogTable>> {
    let mut tw = Tidewater::start(file, log, None)?;
    wait_for_total_rows(
        &spec.catalog_uri,
        &spec.warehouse,
        total,
        Duration::from_secs(120),
    )?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "log:\n{}",
        tw.log_text()
    );
    inspect_catalog(&spec.catalog_uri, &spec.warehouse, true)
}

/// The routed crash test's end: a last run drains the topic; each of the four tables holds
/// exactly its share of the ids, once, for PyIceberg and DuckDB alike.
fn check_kind_tables(
    spec: &PipelineSpec,
    file: &std::path::Path,
    log: &std::path::Path,
    total: u64,
) -> Result<()> {
    let tables = drain_into_tables(spec, file, log, total)?;
    assert_eq!(tables.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut k = KIND_TABLES.to_vec();
        k.sort_unstable();
        k
    });
    assert_kind_counts(&tables, total);
    Ok(())
}

/// The new-topics crash test's end: a last run drains every topic; `raw.clicks` holds the main
/// topic's events and each `raw.clicks_n{k}` exactly what its topic was sent, once, for
/// PyIceberg and DuckDB alike.
fn check_topic_tables(
    spec: &PipelineSpec,
    file: &std::path::Path,
    log: &std::path::Path,
    total: u64,
    new_topics: &[(String, u64)],
) -> Result<()> {
    let all = total + new_topics.iter().map(|(_, n)| n).sum::<u64>();
    let tables = drain_into_tables(spec, file, log, all)?;
    let mut want: BTreeMap<String, u64> = new_topics
        .iter()
        .map(|(t, n)| (format!("raw.{}", t.replace('-', "_")), *n))
        .collect();
    want.insert("raw.clicks".into(), total);
    assert_eq!(
        tables.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, n) in &want {
        let t = &tables[name];
        assert_eq!(
            (t.pyiceberg_rows, t.pyiceberg_distinct, t.duckdb),
            (*n, *n, Some((*n, *n))),
            "{name}: PyIceberg rows, distinct ids, DuckDB (rows, distinct)"
        );
    }
    let fields = tables["raw.clicks"]
        .columns
        .iter()
        .filter(|c| c.starts_with('x'))
        .count() as u64;
    assert_eq!(
        fields,
        total.div_ceil(IDS_PER_FIELD),
        "one column per new field"
    );
    eprintln!(
        "new topics crash test: {} tables, {all} events exactly once",
        want.len()
    );
    Ok(())
}

#[test]
fn crash_test_with_new_topics_and_fields_in_flight() -> Result<()> {
    crash_test_with(None, 40, Mode::NewTopics)
}

#[test]
fn crash_test_across_tables() -> Result<()> {
    crash_test_with(None, 40, Mode::Routed)
}

#[test]
fn crash_test_around_schema_updates() -> Result<()> {
    crash_test_with(None, 40, Mode::Evolving)
}

#[test]
fn crash_test_sqlite_catalog() -> Result<()> {
    crash_test(None, 40)
}

#[test]
fn crash_test_postgres_catalog() -> Result<()> {
    let pg = Postgres::start()?;
    crash_test(Some(pg.uri()), 40)
}

#[test]
fn a_stale_writer_is_fenced_and_nothing_is_duplicated() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let dir = tempfile::tempdir()?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 4, 0..2000)?;
    producer.flush()?;

    let mut zombie = Tidewater::start(&file, &dir.path().join("zombie.log"), None)?;
    wait_for_rows(&spec, 2000, Duration::from_secs(60))?;
    // Freeze the first writer (a long GC pause, a partitioned node) and let a second writer
    // with the same pipeline uid take over and commit more.
    zombie.signal("STOP");
    producer.send_events("clicks", 4, 2000..4000)?;
    producer.flush()?;
    let mut live = Tidewater::start(&file, &dir.path().join("live.log"), None)?;
    let view = wait_for_rows(&spec, 4000, Duration::from_secs(60))?;
    assert_eq!(view.pyiceberg_rows, 4000, "log:\n{}", live.log_text());

    // The zombie wakes up, reads the same records, and must not commit them again.
    zombie.signal("CONT");
    let Some(status) = zombie.wait_timeout(Duration::from_secs(60)) else {
        panic!("the stale writer stops; its log:\n{}", zombie.log_text());
    };
    assert!(!status.success());
    let zlog = zombie.log_text();
    assert!(zlog.contains("fenced"), "{zlog}");
    assert!(
        zlog.contains("another writer with the same pipeline uid"),
        "{zlog}"
    );
    assert!(live.stop(Duration::from_secs(30))?.success());

    // A restart after the zombie left its stale checkpoint record behind resumes correctly.
    producer.send_events("clicks", 4, 4000..5000)?;
    producer.flush()?;
    let mut next = Tidewater::start(&file, &dir.path().join("next.log"), None)?;
    wait_for_rows(&spec, 5000, Duration::from_secs(60))?;
    assert!(next.stop(Duration::from_secs(30))?.success());
    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (5000, 5000));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (5000, 5000));
    Ok(())
}
