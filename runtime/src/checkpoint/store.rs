//! Durable checkpoint records (`<state location>/checkpoints/`) and savepoints
//! (`<state location>/savepoints/`), on a local or mounted filesystem or in S3. This module
//! only does I/O. A record appears whole or not at all: locally it is written to a temporary
//! file, synced and renamed; an S3 PUT is atomic. A file that does not parse is ignored as
//! incomplete.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use opendal::Operator;

use crate::{
    checkpoint::{CheckpointRecord, savepoint::SavepointRecord},
    storage::{self, ListError, ListOptions, StorageError, s3_operator, split_s3},
};

/// State store errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem failure.
    #[error("state store {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Object store failure.
    #[error("state store {path}: {source}")]
    Object {
        /// The object involved.
        path: String,
        /// The cause.
        source: opendal::Error,
    },
    /// Storage settings.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Listing the records.
    #[error("state store: {0}")]
    List(#[from] ListError),
    /// A savepoint file that is not a savepoint.
    #[error("savepoint {path}: {reason}")]
    BadSavepoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Backend {
    Local(PathBuf),
    S3 {
        op: Operator,
        bucket: String,
        prefix: String,
    },
}

/// Checkpoint records and savepoints of one pipeline.
#[derive(Debug, Clone)]
pub struct StateStore {
    backend: Backend,
    s3_props: BTreeMap<String, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn obj(path: &str) -> impl FnOnce(opendal::Error) -> StateError + '_ {
    move |source| StateError::Object {
        path: path.to_string(),
        source,
    }
}

fn record_name(record: &CheckpointRecord) -> String {
    format!("{:020}-{}.json", record.checkpoint_id, record.run_id)
}

/// Checkpoint id of a record file name (`<id:020>-<run>.json`).
fn record_id(name: &str) -> Option<u64> {
    name.strip_suffix(".json")
        .filter(|n| !n.starts_with('.'))
        .and_then(|n| n.split('-').next())
        .and_then(|n| n.parse().ok())
}

fn write_local(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StateError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(path)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl StateStore {
    /// A store at `location` (absolute path or `s3://bucket/prefix`); `s3_props` are the
    /// resolved `s3.*` properties when the location is in S3.
    pub fn open(location: &str, s3_props: &BTreeMap<String, String>) -> Result<Self, StateError> {
        let backend = match split_s3(location) {
            Some((bucket, prefix)) => Backend::S3 {
                op: s3_operator(bucket, s3_props)?,
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            },
            None => Backend::Local(PathBuf::from(location.trim_start_matches("file://"))),
        };
        Ok(Self {
            backend,
            s3_props: s3_props.clone(),
        })
    }

    /// Where the records live, for messages.
    pub fn checkpoints_location(&self) -> String {
        self.location("checkpoints")
    }

    fn location(&self, sub: &str) -> String {
        match &self.backend {
            Backend::Local(root) => root.join(sub).display().to_string(),
            Backend::S3 { bucket, prefix, .. } => {
                format!("s3://{bucket}/{}", key(prefix, sub))
            }
        }
    }

    async fn put(&self, sub: &str, name: &str, bytes: Vec<u8>) -> Result<String, StateError> {
        match &self.backend {
            Backend::Local(root) => {
                let dir = root.join(sub);
                let name = name.to_string();
                let path = blocking(move || write_local(&dir, &name, &bytes)).await?;
                Ok(path.display().to_string())
            }
            Backend::S3 { op, bucket, prefix } => {
                let k = key(prefix, &format!("{sub}/{name}"));
                op.write(&k, bytes).await.map_err(obj(&k))?;
                Ok(format!("s3://{bucket}/{k}"))
            }
        }
    }

    /// Names and contents of the record files (`*.json`, not temporary) under `sub`.
    async fn list(&self, sub: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // The store's own operator: records are listed at every checkpoint (pruning).
        let files = match &self.backend {
            Backend::Local(root) => {
                let dir = root.join(sub).display().to_string();
                storage::list(&dir, &BTreeMap::new(), ListOptions::default()).await?
            }
            Backend::S3 { op, bucket, prefix } => {
                let dir = key(prefix, sub);
                storage::list_objects(op, bucket, &dir, ListOptions::default()).await?
            }
        };
        let mut out = Vec::new();
        for f in files {
            if f.name.starts_with('.') || !f.name.ends_with(".json") {
                continue;
            }
            let bytes = match &self.backend {
                Backend::Local(_) => {
                    let path = PathBuf::from(&f.uri);
                    blocking(move || fs::read(&path).map_err(io(&path))).await?
                }
                Backend::S3 { op, prefix, .. } => {
                    let k = key(prefix, &format!("{sub}/{}", f.name));
                    op.read(&k).await.map_err(obj(&k))?.to_vec()
                }
            };
            out.push((f.name, bytes));
        }
        Ok(out)
    }

    async fn remove(&self, sub: &str, name: &str) -> Result<(), StateError> {
        match &self.backend {
            Backend::Local(root) => {
                let path = root.join(sub).join(name);
                blocking(move || fs::remove_file(&path).map_err(io(&path))).await
            }
            Backend::S3 { op, prefix, .. } => {
                let k = key(prefix, &format!("{sub}/{name}"));
                op.delete(&k).await.map_err(obj(&k))
            }
        }
    }

    /// Writes a checkpoint record durably; returns where.
    pub async fn write(&self, record: &CheckpointRecord) -> Result<String, StateError> {
        let bytes = serde_json::to_vec(record).expect("record serializes");
        self.put("checkpoints", &record_name(record), bytes).await
    }

    /// Loads every complete record of `uid` (order unspecified).
    pub async fn load_all(&self, uid: &str) -> Result<Vec<CheckpointRecord>, StateError> {
        Ok(self
            .listed(uid)
            .await?
            .into_iter()
            .filter_map(|(_, r)| r)
            .collect())
    }

    /// Every record file with its record when it is a complete one of `uid`.
    async fn listed(
        &self,
        uid: &str,
    ) -> Result<Vec<(String, Option<CheckpointRecord>)>, StateError> {
        let mut out = Vec::new();
        for (name, bytes) in self.list("checkpoints").await? {
            let record = match serde_json::from_slice::<CheckpointRecord>(&bytes) {
                Ok(r) if r.pipeline_uid == uid => Some(r),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "ignoring incomplete checkpoint record");
                    None
                }
            };
            out.push((name, record));
        }
        Ok(out)
    }

    /// Keeps the `keep` newest complete records of `uid` and deletes every record file
    /// (complete or torn) older than the oldest one kept.
    pub async fn prune(&self, uid: &str, keep: usize) -> Result<usize, StateError> {
        let listed = self.listed(uid).await?;
        let mut ids: Vec<u64> = listed
            .iter()
            .filter_map(|(_, r)| r.as_ref().map(|r| r.checkpoint_id))
            .collect();
        ids.sort_unstable();
        let Some(&oldest_kept) = ids.len().checked_sub(keep.max(1)).and_then(|i| ids.get(i)) else {
            return Ok(0);
        };
        let mut removed = 0;
        for (name, _) in &listed {
            if record_id(name).is_some_and(|id| id < oldest_kept) {
                self.remove("checkpoints", name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes a savepoint durably; returns its path (what `--from-savepoint` takes).
    pub async fn write_savepoint(&self, savepoint: &SavepointRecord) -> Result<String, StateError> {
        let bytes = serde_json::to_vec_pretty(savepoint).expect("savepoint serializes");
        self.put("savepoints", &format!("{}.json", savepoint.id), bytes)
            .await
    }

    /// Reads a savepoint from a path or `s3://` URI (any state location, same credentials).
    pub async fn read_savepoint(&self, path: &str) -> Result<SavepointRecord, StateError> {
        let bytes = match split_s3(path) {
            Some((bucket, k)) => {
                let op = s3_operator(bucket, &self.s3_props)?;
                op.read(k).await.map_err(obj(path))?.to_vec()
            }
            None => {
                let p = PathBuf::from(path.trim_start_matches("file://"));
                blocking(move || fs::read(&p).map_err(io(&p))).await?
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::BadSavepoint {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

fn key(prefix: &str, sub: &str) -> String {
    if prefix.is_empty() {
        sub.to_string()
    } else {
        format!("{prefix}/{sub}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> CheckpointRecord {
        CheckpointRecord {
            version: 1,
            pipeline_uid: "uid".into(),
            checkpoint_id: id,
            run_id: "r1".into(),
            created_at: "t".into(),
            offsets: BTreeMap::new(),
            table_base_offsets: BTreeMap::new(),
            commits: BTreeMap::new(),
            origin: None,
        }
    }

    async fn ids(store: &StateStore) -> Vec<u64> {
        let mut ids: Vec<u64> = store
            .load_all("uid")
            .await
            .unwrap()
            .iter()
            .map(|r| r.checkpoint_id)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn writes_loads_ignores_torn_files_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().display().to_string(), &BTreeMap::new()).unwrap();
        assert!(store.load_all("uid").await.unwrap().is_empty());
        for id in 1..=4 {
            store.write(&record(id)).await.unwrap();
        }
        // A record torn by a crash mid-write, and another pipeline's record.
        fs::write(
            dir.path().join("checkpoints/00000000000000000005-r1.json"),
            b"{\"version\":1,",
        )
        .unwrap();
        let mut other = record(6);
        other.pipeline_uid = "other".into();
        store.write(&other).await.unwrap();
        assert_eq!(ids(&store).await, vec![1, 2, 3, 4]);
        assert_eq!(store.prune("uid", 2).await.unwrap(), 2);
        assert_eq!(ids(&store).await, vec![3, 4]);
        assert_eq!(
            store.prune("uid", 5).await.unwrap(),
            0,
            "fewer records than kept: nothing goes"
        );
    }

    #[tokio::test]
    async fn savepoints_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().display().to_string(), &BTreeMap::new()).unwrap();
        let sp = SavepointRecord {
            version: 1,
            id: "sp-1".into(),
            created_at: "t".into(),
            pipeline_uid: "uid".into(),
            table: "a.b".into(),
            topics: vec!["t".into()],
            checkpoint: record(7),
        };
        let path = store.write_savepoint(&sp).await.unwrap();
        assert!(path.ends_with("savepoints/sp-1.json"), "{path}");
        assert_eq!(store.read_savepoint(&path).await.unwrap(), sp);
        let bad = dir.path().join("bad.json");
        fs::write(&bad, "{}").unwrap();
        let e = store
            .read_savepoint(&bad.display().to_string())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json"), "{e}");
    }
}
