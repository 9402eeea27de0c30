//! Change streams for the upsert tests: random inserts, updates (some changing the key) and
//! deletes over a key space, keyed by `id mod partitions`, as Debezium MySQL and PostgreSQL
//! connectors write them (with and without the `schema`/`payload` wrapper, tombstones after
//! deletes, snapshot reads first); a model of the source table as of any offsets; and the
//! independent readers' view of every committed snapshot (e2e/readers/upsert_snapshots.py).

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sha2::{Digest as _, Sha256};

use crate::{EventProducer, repo_root, venv_python_path};

/// What one record does to the source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Row `id` is now at version `v`.
    Put { id: i64, v: i64 },
    /// Row `id` is gone.
    Delete { id: i64 },
    /// Row `old` became row `new` at version `v` (same partition).
    Rekey { old: i64, new: i64, v: i64 },
    /// Nothing (a tombstone).
    None,
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Change {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<String>,
    pub effect: Effect,
}

/// A random change stream and the source table it describes.
pub struct CdcStream {
    rng: StdRng,
    partitions: i32,
    key_space: i64,
    version: i64,
    live: BTreeMap<i64, i64>,
    /// Every change, per partition, in offset order.
    pub log: BTreeMap<i32, Vec<Effect>>,
}

fn row(id: i64, v: i64) -> String {
    format!(
        r#"{{"id":{id},"v":{v},"name":"customer-{id}","balance":{}.25,"email":null}}"#,
        v % 1000
    )
}

fn source(connector: &str, snapshot: bool) -> String {
    match connector {
        "mysql" => format!(
            r#"{{"version":"2.7.3.Final","connector":"mysql","name":"dbserver1","ts_ms":1733600000000,"snapshot":"{snapshot}","db":"inventory","sequence":null,"table":"customers","server_id":223344,"gtid":null,"file":"mysql-bin.000003","pos":4521,"row":0,"thread":7,"query":null}}"#
        ),
        _ => format!(
            r#"{{"version":"2.7.3.Final","connector":"postgresql","name":"pgserver1","ts_ms":1733600000000,"snapshot":"{snapshot}","db":"postgres","sequence":"[null,\"34362352\"]","schema":"public","table":"customers","txId":771,"lsn":34362352,"xmin":null}}"#
        ),
    }
}

const ROW_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"},{"type":"int64","optional":false,"field":"v"},{"type":"string","optional":true,"field":"name"},{"type":"double","optional":true,"field":"balance"},{"type":"string","optional":true,"field":"email"}],"optional":true,"name":"dbserver1.inventory.customers.Value"}"#;

fn envelope(
    op: &str,
    before: Option<String>,
    after: Option<String>,
    connector: &str,
    wrapped: bool,
) -> String {
    let payload = format!(
        r#"{{"before":{},"after":{},"source":{},"op":"{op}","ts_ms":1733600000123,"transaction":null}}"#,
        before.as_deref().unwrap_or("null"),
        after.as_deref().unwrap_or("null"),
        source(connector, op == "r"),
    );
    if wrapped {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"field":"before",{s}}},{{"field":"after",{s}}}],"optional":false,"name":"dbserver1.inventory.customers.Envelope","version":1}},"payload":{payload}}}"#,
            s = &ROW_SCHEMA[1..ROW_SCHEMA.len() - 1]
        )
    } else {
        payload
    }
}

impl CdcStream {
    pub fn new(seed: u64, partitions: i32, key_space: i64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            partitions,
            key_space,
            version: 0,
            live: BTreeMap::new(),
            log: BTreeMap::new(),
        }
    }

    fn partition_of(&self, id: i64) -> i32 {
        i32::try_from(id.rem_euclid(i64::from(self.partitions))).unwrap()
    }

    fn key(id: i64, wrapped: bool) -> Vec<u8> {
        if wrapped {
            format!(
                r#"{{"schema":{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}}],"optional":false,"name":"dbserver1.inventory.customers.Key"}},"payload":{{"id":{id}}}}}"#
            )
            .into_bytes()
        } else {
            format!(r#"{{"id":{id}}}"#).into_bytes()
        }
    }

    fn push(
        &mut self,
        partition: i32,
        key: Vec<u8>,
        value: Option<String>,
        effect: Effect,
    ) -> Change {
        self.log.entry(partition).or_default().push(effect.clone());
        Change {
            partition,
            key,
            value,
            effect,
        }
    }

    /// The next `n` changes: snapshot reads of the first rows when the table is empty, then
    /// inserts, updates (about 1 in 20 moving the row to another key of its partition) and
    /// deletes (each followed by a tombstone), alternating connectors and wrappers.
    pub fn next_changes(&mut self, n: usize) -> Vec<Change> {
        let mut out = Vec::with_capacity(n + n / 4);
        while out.len() < n {
            self.version += 1;
            let v = self.version;
            let wrapped = self.rng.random_bool(0.3);
            let connector = if self.rng.random_bool(0.5) {
                "mysql"
            } else {
                "postgresql"
            };
            let id = self.rng.random_range(0..self.key_space);
            let p = self.partition_of(id);
            let key = Self::key(id, wrapped);
            match self.live.get(&id).copied() {
                None => {
                    let op = if v <= 200 { "r" } else { "c" };
                    let value = envelope(op, None, Some(row(id, v)), connector, wrapped);
                    self.live.insert(id, v);
                    out.push(self.push(p, key, Some(value), Effect::Put { id, v }));
                }
                Some(old_v) => {
                    let roll: f64 = self.rng.random();
                    if roll < 0.2 {
                        // MySQL sends the whole old row, PostgreSQL (default replica
                        // identity) only the key.
                        let before = if connector == "mysql" {
                            row(id, old_v)
                        } else {
                            format!(r#"{{"id":{id}}}"#)
                        };
                        let value = envelope("d", Some(before), None, connector, wrapped);
                        self.live.remove(&id);
                        out.push(self.push(p, key.clone(), Some(value), Effect::Delete { id }));
                        out.push(self.push(p, key, None, Effect::None));
                    } else if roll < 0.25 {
                        // The key changes within its partition.
                        let step = i64::from(self.partitions);
                        let new = id + step * self.rng.random_range(1..50);
                        if new >= self.key_space || self.live.contains_key(&new) {
                            continue;
                        }
                        let value = envelope(
                            "u",
                            Some(row(id, old_v)),
                            Some(row(new, v)),
                            connector,
                            wrapped,
                        );
                        self.live.remove(&id);
                        self.live.insert(new, v);
                        out.push(self.push(p, key, Some(value), Effect::Rekey { old: id, new, v }));
                    } else {
                        let before = (connector == "mysql").then(|| row(id, old_v));
                        let value = envelope("u", before, Some(row(id, v)), connector, wrapped);
                        self.live.insert(id, v);
                        out.push(self.push(p, key, Some(value), Effect::Put { id, v }));
                    }
                }
            }
        }
        out
    }

    /// The source table after every partition's changes before `offsets` (next offset per
    /// partition; a partition not named contributes nothing).
    pub fn model_at(&self, offsets: &BTreeMap<i32, i64>) -> BTreeMap<i64, i64> {
        let mut table = BTreeMap::new();
        // Keys never cross partitions, so partitions apply independently.
        for (p, effects) in &self.log {
            let upto = usize::try_from(offsets.get(p).copied().unwrap_or(0)).unwrap();
            for e in &effects[..upto.min(effects.len())] {
                match *e {
                    Effect::Put { id, v } => {
                        table.insert(id, v);
                    }
                    Effect::Delete { id } => {
                        table.remove(&id);
                    }
                    Effect::Rekey { old, new, v } => {
                        table.remove(&old);
                        table.insert(new, v);
                    }
                    Effect::None => {}
                }
            }
        }
        table
    }

    /// How many produced records have an effect matching `f`.
    pub fn count(&self, f: impl Fn(&Effect) -> bool) -> usize {
        self.log.values().flatten().filter(|e| f(e)).count()
    }

    /// Changes produced per partition.
    pub fn produced(&self) -> BTreeMap<i32, i64> {
        self.log
            .iter()
            .map(|(p, l)| (*p, i64::try_from(l.len()).unwrap()))
            .collect()
    }
}

/// Sends changes in order (one partition's changes keep their order).
pub fn produce(producer: &EventProducer, topic: &str, changes: &[Change]) -> Result<()> {
    for c in changes {
        producer.send_keyed(
            topic,
            c.partition,
            &c.key,
            c.value.as_deref().map(str::as_bytes),
        )?;
    }
    producer.flush()
}

/// What a reader saw in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Digest {
    pub rows: u64,
    pub distinct: u64,
    pub sha256: String,
}

/// One committed snapshot as the readers saw it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SnapshotView {
    pub snapshot_id: i64,
    /// `{"topic": {"partition": next}}`.
    pub offsets: BTreeMap<String, BTreeMap<String, i64>>,
    pub operation: String,
    pub delete_files: u64,
    pub pyiceberg: Option<Digest>,
    pub duckdb: Option<Digest>,
}

/// The digest the reader script computes, from a model.
pub fn digest_of(model: &BTreeMap<i64, i64>) -> Digest {
    let mut h = Sha256::new();
    for (k, v) in model {
        h.update(format!("{k}:{v}\n").as_bytes());
    }
    Digest {
        rows: model.len() as u64,
        distinct: model.len() as u64,
        sha256: format!("{:x}", h.finalize()),
    }
}

/// How the readers reach a table: its catalog (SQL, or REST with S3 storage) and name.
#[derive(Debug, Clone)]
pub struct TableAccess {
    pub table: String,
    /// Arguments naming the catalog, warehouse and storage for the reader scripts.
    args: Vec<String>,
}

impl TableAccess {
    /// A table of a SQL catalog on the local warehouse `warehouse`.
    pub fn sql(uri: &str, warehouse: &std::path::Path, table: &str) -> Self {
        Self {
            table: table.to_string(),
            args: vec![
                "--catalog-uri".into(),
                uri.into(),
                "--warehouse".into(),
                format!("file://{}", warehouse.display()),
            ],
        }
    }

    /// A table of a REST catalog (bearer `token`) whose files are on the S3 server `moto`.
    pub fn rest(rest: &crate::RestCatalog, moto: &crate::Moto, table: &str) -> Self {
        Self {
            table: table.to_string(),
            args: vec![
                "--catalog-type".into(),
                "rest".into(),
                "--catalog-uri".into(),
                rest.uri(),
                "--token".into(),
                rest.token.clone(),
                "--warehouse".into(),
                format!("s3://{}/warehouse", moto.bucket),
                "--s3-endpoint".into(),
                moto.endpoint(),
                "--s3-key-id".into(),
                crate::S3_KEY_ID.into(),
                "--s3-secret".into(),
                crate::S3_SECRET.into(),
            ],
        }
    }

    fn run(&self, extra: &[&str]) -> Result<Vec<u8>> {
        let out = std::process::Command::new(venv_python_path())
            .arg(repo_root().join("e2e/readers/upsert_snapshots.py"))
            .args(&self.args)
            .args(["--table", &self.table])
            .args(extra)
            .output()?;
        ensure!(
            out.status.success(),
            "reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Every snapshot a pipeline committed, read as of that snapshot by `readers`
    /// (`pyiceberg,duckdb`, one of them, or `none` for the offsets alone).
    pub fn snapshot_views(&self, readers: &str) -> Result<Vec<SnapshotView>> {
        #[derive(serde::Deserialize)]
        struct All {
            snapshots: Vec<SnapshotView>,
        }
        let all: All = serde_json::from_slice(&self.run(&["--readers", readers])?)?;
        Ok(all.snapshots)
    }

    /// The `(key, version)` pairs of one snapshot (PyIceberg).
    pub fn snapshot_pairs(&self, snapshot_id: i64) -> Result<Vec<(i64, i64)>> {
        Ok(serde_json::from_slice(
            &self.run(&["--pairs-of", &snapshot_id.to_string()])?,
        )?)
    }
}

/// How `got` differs from `want`: the first few keys whose versions differ.
pub fn differences(want: &BTreeMap<i64, i64>, got: &[(i64, i64)]) -> String {
    let mut got_map: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (k, v) in got {
        got_map.entry(*k).or_default().push(*v);
    }
    let keys: std::collections::BTreeSet<i64> =
        want.keys().chain(got_map.keys()).copied().collect();
    keys.into_iter()
        .filter(|k| got_map.get(k).map(Vec::as_slice) != want.get(k).map(std::slice::from_ref))
        .take(10)
        .map(|k| {
            format!(
                "key {k}: model {:?}, table {:?}",
                want.get(&k),
                got_map.get(&k)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every snapshot against the model at its offsets; returns how many were checked.
/// A difference names the first keys that differ.
pub fn assert_snapshots_match(
    stream: &CdcStream,
    topic: &str,
    views: &[SnapshotView],
    access: &TableAccess,
) -> Result<usize> {
    for view in views {
        let offsets: BTreeMap<i32, i64> = view
            .offsets
            .get(topic)
            .map(|m| m.iter().map(|(p, o)| (p.parse().unwrap(), *o)).collect())
            .unwrap_or_default();
        let model = stream.model_at(&offsets);
        let want = digest_of(&model);
        for (reader, got) in [("PyIceberg", &view.pyiceberg), ("DuckDB", &view.duckdb)] {
            if let Some(got) = got
                && *got != want
            {
                let pairs = access.snapshot_pairs(view.snapshot_id)?;
                anyhow::bail!(
                    "snapshot {} ({}, offsets {offsets:?}): {reader} read {got:?}, the model has \
                     {want:?}; {}",
                    view.snapshot_id,
                    view.operation,
                    differences(&model, &pairs)
                );
            }
        }
    }
    Ok(views.len())
}

/// Produces a change stream in the background until finished.
pub struct CdcProducer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Result<CdcStream>>,
}

impl CdcProducer {
    /// Sends `batch` changes of `stream` to `topic` every `pause`.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        mut stream: CdcStream,
        batch: usize,
        pause: std::time::Duration,
    ) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = EventProducer::new(bootstrap)?;
        let (flag, topic) = (stop.clone(), topic.to_string());
        let handle = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                produce(&producer, &topic, &stream.next_changes(batch))?;
                std::thread::sleep(pause);
            }
            Ok(stream)
        });
        Ok(Self { stop, handle })
    }

    /// Stops producing; the stream with everything produced.
    pub fn finish(self) -> Result<CdcStream> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))?
    }
}
