//! Durable checkpoint records under `<state location>/checkpoints/`. This module only does
//! I/O. A record is written to a temporary file, synced and renamed, so a crash leaves
//! either the whole record or none; a file that does not parse is ignored as incomplete.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use crate::checkpoint::CheckpointRecord;

/// State store errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem failure.
    #[error("state store {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Checkpoint records of one pipeline on a local or mounted filesystem.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl StateStore {
    /// A store rooted at the pipeline's state location.
    pub fn new(state_location: &Path) -> Self {
        Self {
            dir: state_location.join("checkpoints"),
        }
    }

    /// Where the records live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_name(record: &CheckpointRecord) -> String {
        format!("{:020}-{}.json", record.checkpoint_id, record.run_id)
    }

    /// Writes a record durably (temp file, fsync, rename, fsync of the directory).
    pub fn write(&self, record: &CheckpointRecord) -> Result<PathBuf, StateError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(Self::file_name(record));
        let tmp = self.dir.join(format!(".{}.tmp", Self::file_name(record)));
        let bytes = serde_json::to_vec(record).expect("record serializes");
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(path)
    }

    /// Loads every complete record of `uid` (order unspecified).
    pub fn load_all(&self, uid: &str) -> Result<Vec<CheckpointRecord>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            match serde_json::from_slice::<CheckpointRecord>(&bytes) {
                Ok(r) if r.pipeline_uid == uid => records.push(r),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring incomplete checkpoint record")
                }
            }
        }
        Ok(records)
    }

    /// Keeps the `keep` newest complete records of `uid` and deletes every record file
    /// (complete or torn) older than the oldest one kept.
    pub fn prune(&self, uid: &str, keep: usize) -> Result<usize, StateError> {
        let mut ids: Vec<u64> = self
            .load_all(uid)?
            .iter()
            .map(|r| r.checkpoint_id)
            .collect();
        ids.sort_unstable();
        let Some(&oldest_kept) = ids.len().checked_sub(keep.max(1)).and_then(|i| ids.get(i)) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if id.is_some_and(|id| id < oldest_kept) {
                fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        }
    }

    #[test]
    fn writes_loads_ignores_torn_files_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert!(store.load_all("uid").unwrap().is_empty());
        for id in 1..=4 {
            store.write(&record(id)).unwrap();
        }
        // A record torn by a crash mid-write, and another pipeline's record.
        fs::write(
            store.dir().join("00000000000000000005-r1.json"),
            b"{\"version\":1,",
        )
        .unwrap();
        let mut other = record(6);
        other.pipeline_uid = "other".into();
        store.write(&other).unwrap();
        let mut ids: Vec<u64> = store
            .load_all("uid")
            .unwrap()
            .iter()
            .map(|r| r.checkpoint_id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert_eq!(store.prune("uid", 2).unwrap(), 2);
        let mut ids: Vec<u64> = store
            .load_all("uid")
            .unwrap()
            .iter()
            .map(|r| r.checkpoint_id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![3, 4]);
        assert_eq!(
            store.prune("uid", 5).unwrap(),
            0,
            "fewer records than kept: nothing goes"
        );
    }
}
