//! Checkpoint bookkeeping: the durable record format and the pure decisions built on it
//! (what to commit, whether a commit is ours to make, where to restart). No I/O.
//!
//! The invariant that makes commits exactly-once: every Iceberg commit of a pipeline carries
//! the offsets it reached, and a commit is only made on top of a table whose newest commit of
//! this pipeline reached exactly the offsets this commit starts from (`base_offsets`). Two
//! writers with one pipeline uid can therefore never both land data for the same offsets.

pub mod savepoint;
pub mod store;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{offsets::Offsets, write::DataFileRef};

/// Snapshot summary key: pipeline uid.
pub const SUMMARY_PIPELINE_UID: &str = "tidewater.pipeline-uid";
/// Snapshot summary key: checkpoint id.
pub const SUMMARY_CHECKPOINT_ID: &str = "tidewater.checkpoint-id";
/// Snapshot summary key: offsets reached, JSON `{"topic":{"partition":next}}`.
pub const SUMMARY_OFFSETS: &str = "tidewater.offsets";
/// Snapshot summary key: the coordinator run that made the commit.
pub const SUMMARY_RUN_ID: &str = "tidewater.run-id";
/// Snapshot summary key: where the committing pipeline keeps its checkpoint records (so table
/// maintenance can protect the files they reference).
pub const SUMMARY_STATE_LOCATION: &str = "tidewater.state-location";

/// A completed checkpoint, written durably before any table commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Format version of this record.
    pub version: u32,
    /// Pipeline uid.
    pub pipeline_uid: String,
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// Coordinator run that wrote it.
    pub run_id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Next offset of every partition at this checkpoint: where a restart resumes.
    pub offsets: Offsets,
    /// Per table: offsets of the table's newest commit of this pipeline before this checkpoint.
    pub table_base_offsets: BTreeMap<String, Offsets>,
    /// Per table: files to commit (absent when the checkpoint wrote nothing to it).
    pub commits: BTreeMap<String, TableCommitPlan>,
    /// The savepoint this run's lineage was restored from, carried forward by every record so
    /// a restarted coordinator knows the savepoint was already applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Files of one table in one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCommitPlan {
    /// Partition spec id of the files.
    pub partition_spec_id: i32,
    /// The data files, as written.
    pub data_files: Vec<DataFileRef>,
    /// Rows in the files.
    pub rows: u64,
}

/// The newest commit of a pipeline found in a table's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedState {
    /// Snapshot id.
    pub snapshot_id: i64,
    /// Checkpoint id in its summary.
    pub checkpoint_id: u64,
    /// Offsets in its summary.
    pub offsets: Offsets,
}

impl CommittedState {
    /// Reads the tidewater properties of a snapshot summary, if it was made by `uid`.
    pub fn from_summary(
        snapshot_id: i64,
        summary: &HashMap<String, String>,
        uid: &str,
    ) -> Option<Result<Self, String>> {
        if summary.get(SUMMARY_PIPELINE_UID).map(String::as_str) != Some(uid) {
            return None;
        }
        let parse = || -> Result<Self, String> {
            let checkpoint_id = summary
                .get(SUMMARY_CHECKPOINT_ID)
                .ok_or("no checkpoint id")?
                .parse()
                .map_err(|e| format!("bad checkpoint id: {e}"))?;
            let offsets = serde_json::from_str(summary.get(SUMMARY_OFFSETS).ok_or("no offsets")?)
                .map_err(|e| format!("bad offsets: {e}"))?;
            Ok(Self {
                snapshot_id,
                checkpoint_id,
                offsets,
            })
        };
        Some(parse().map_err(|e| format!("snapshot {snapshot_id}: {e}")))
    }
}

/// What to do with a table commit of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitDecision {
    /// The table already holds this checkpoint (a retry after a crash): nothing to do.
    AlreadyCommitted {
        /// The snapshot that holds it.
        snapshot_id: i64,
    },
    /// The table is exactly where this checkpoint starts: commit.
    Commit,
    /// Another writer with the same pipeline uid moved the table: this writer is stale.
    Fenced {
        /// What the table shows versus what this writer expected.
        reason: String,
    },
}

/// Decides whether `record` may be committed to a table whose newest commit of this pipeline
/// is `last`.
pub fn decide_commit(
    last: Option<&CommittedState>,
    record: &CheckpointRecord,
    table: &str,
) -> CommitDecision {
    let empty = Offsets::new();
    let base = record.table_base_offsets.get(table).unwrap_or(&empty);
    match last {
        Some(l) if l.checkpoint_id == record.checkpoint_id && l.offsets == record.offsets => {
            CommitDecision::AlreadyCommitted {
                snapshot_id: l.snapshot_id,
            }
        }
        Some(l) if l.offsets == *base && l.checkpoint_id < record.checkpoint_id => {
            CommitDecision::Commit
        }
        None if base.is_empty() => CommitDecision::Commit,
        Some(l) => CommitDecision::Fenced {
            reason: format!(
                "table {table} holds checkpoint {} (snapshot {}) at offsets {}, but checkpoint {} \
                 of this writer continues from {}: another writer with the same pipeline uid \
                 has committed, so this one is stale",
                l.checkpoint_id,
                l.snapshot_id,
                render_offsets(&l.offsets),
                record.checkpoint_id,
                render_offsets(base)
            ),
        },
        None => CommitDecision::Fenced {
            reason: format!(
                "table {table} has no commit of this pipeline, but checkpoint {} continues from \
                 {}: the table was dropped, replaced or rolled back",
                record.checkpoint_id,
                render_offsets(base)
            ),
        },
    }
}

/// Compact `topic/partition=offset` rendering for messages.
pub fn render_offsets(offsets: &Offsets) -> String {
    if offsets.is_empty() {
        return "(nothing)".into();
    }
    offsets
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| format!("{t}/{p}={o}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a (re)started pipeline begins.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Offsets to resume from (partitions absent here use the starting policy).
    pub start_offsets: Offsets,
    /// The table's committed offsets of this pipeline after recovery.
    pub table_base_offsets: Offsets,
    /// The first checkpoint id to use.
    pub next_checkpoint_id: u64,
    /// A record whose table commit must be finished before anything else.
    pub pending: Option<CheckpointRecord>,
    /// Records that were skipped because the table contradicts them, with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Origin of the record resumed from (none when resuming from the table alone).
    pub origin: Option<String>,
}

/// The highest checkpoint id in the records or the table (0 when none): ids are never reused.
pub fn max_checkpoint_id(records: &[CheckpointRecord], last: Option<&CommittedState>) -> u64 {
    records
        .iter()
        .map(|r| r.checkpoint_id)
        .chain(last.map(|l| l.checkpoint_id))
        .max()
        .unwrap_or(0)
}

/// Chooses the restart point from the durable records (any order) and the table's newest
/// commit of this pipeline. The table is the truth: a record that contradicts it (written by
/// a stale writer) is skipped.
pub fn decide_recovery(
    records: &[CheckpointRecord],
    last: Option<&CommittedState>,
    table: &str,
) -> Recovery {
    let mut sorted: Vec<&CheckpointRecord> = records.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.checkpoint_id));
    let max_seen = max_checkpoint_id(records, last);
    let table_offsets = last.map(|l| l.offsets.clone()).unwrap_or_default();
    let mut skipped = Vec::new();
    for record in sorted {
        let base = record
            .table_base_offsets
            .get(table)
            .cloned()
            .unwrap_or_default();
        let recovery = |pending, table_base_offsets| Recovery {
            start_offsets: record.offsets.clone(),
            table_base_offsets,
            next_checkpoint_id: max_seen + 1,
            pending,
            skipped: skipped.clone(),
            origin: record.origin.clone(),
        };
        if !record.commits.contains_key(table) {
            if base == table_offsets {
                return recovery(None, base);
            }
            skipped.push((
                record.checkpoint_id,
                "its base offsets differ from the table's".into(),
            ));
            continue;
        }
        match decide_commit(last, record, table) {
            CommitDecision::AlreadyCommitted { .. } => {
                return recovery(None, record.offsets.clone());
            }
            CommitDecision::Commit => {
                return recovery(Some(record.clone()), record.offsets.clone());
            }
            CommitDecision::Fenced { reason } => skipped.push((record.checkpoint_id, reason)),
        }
    }
    Recovery {
        start_offsets: table_offsets.clone(),
        table_base_offsets: table_offsets,
        next_checkpoint_id: max_seen + 1,
        pending: None,
        skipped,
        origin: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offsets::set_offset;

    pub(crate) const T: &str = "analytics.clicks";

    pub(crate) fn offsets(pairs: &[(i32, i64)]) -> Offsets {
        let mut o = Offsets::new();
        for (p, n) in pairs {
            set_offset(&mut o, "clicks", *p, *n);
        }
        o
    }

    pub(crate) fn record(
        id: u64,
        base: &[(i32, i64)],
        end: &[(i32, i64)],
        files: bool,
    ) -> CheckpointRecord {
        CheckpointRecord {
            version: 1,
            pipeline_uid: "uid".into(),
            checkpoint_id: id,
            run_id: "run".into(),
            created_at: "now".into(),
            offsets: offsets(end),
            table_base_offsets: BTreeMap::from([(T.to_string(), offsets(base))]),
            commits: if files {
                BTreeMap::from([(
                    T.to_string(),
                    TableCommitPlan {
                        partition_spec_id: 0,
                        data_files: vec!["f".into()],
                        rows: 1,
                    },
                )])
            } else {
                BTreeMap::new()
            },
            origin: None,
        }
    }

    pub(crate) fn committed(id: u64, end: &[(i32, i64)]) -> CommittedState {
        CommittedState {
            snapshot_id: 100 + i64::try_from(id).unwrap(),
            checkpoint_id: id,
            offsets: offsets(end),
        }
    }

    #[test]
    fn first_commit_on_an_empty_table() {
        let r = record(1, &[], &[(0, 5)], true);
        assert_eq!(decide_commit(None, &r, T), CommitDecision::Commit);
    }

    #[test]
    fn commit_continues_exactly_from_the_table() {
        let r = record(3, &[(0, 5)], &[(0, 9)], true);
        assert_eq!(
            decide_commit(Some(&committed(2, &[(0, 5)])), &r, T),
            CommitDecision::Commit
        );
    }

    #[test]
    fn retry_of_a_landed_commit_is_a_no_op() {
        let r = record(3, &[(0, 5)], &[(0, 9)], true);
        assert_eq!(
            decide_commit(Some(&committed(3, &[(0, 9)])), &r, T),
            CommitDecision::AlreadyCommitted { snapshot_id: 103 }
        );
    }

    #[test]
    fn a_stale_writer_is_fenced_even_with_a_higher_checkpoint_id() {
        // The live writer committed checkpoint 4 up to offset 12; the zombie still believes
        // the table is at 5 and tries checkpoint 9.
        let zombie = record(9, &[(0, 5)], &[(0, 11)], true);
        let d = decide_commit(Some(&committed(4, &[(0, 12)])), &zombie, T);
        let CommitDecision::Fenced { reason } = d else {
            panic!("{d:?}")
        };
        assert!(reason.contains("holds checkpoint 4"), "{reason}");
        assert!(reason.contains("clicks/0=5"), "{reason}");
        // Same offsets but an older checkpoint id than the table: also refused.
        let old = record(2, &[(0, 12)], &[(0, 20)], true);
        assert!(matches!(
            decide_commit(Some(&committed(4, &[(0, 12)])), &old, T),
            CommitDecision::Fenced { .. }
        ));
    }

    #[test]
    fn a_table_without_our_commits_fences_a_continuing_writer() {
        let r = record(3, &[(0, 5)], &[(0, 9)], true);
        assert!(matches!(
            decide_commit(None, &r, T),
            CommitDecision::Fenced { .. }
        ));
    }

    #[test]
    fn recovery_finishes_a_recorded_but_uncommitted_checkpoint() {
        let records = vec![
            record(1, &[], &[(0, 5)], true),
            record(2, &[(0, 5)], &[(0, 9)], true),
        ];
        let r = decide_recovery(&records, Some(&committed(1, &[(0, 5)])), T);
        assert_eq!(r.pending.as_ref().map(|p| p.checkpoint_id), Some(2));
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.table_base_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.next_checkpoint_id, 3);
    }

    #[test]
    fn recovery_after_the_commit_landed_resumes_after_it() {
        let records = vec![record(2, &[(0, 5)], &[(0, 9)], true)];
        let r = decide_recovery(&records, Some(&committed(2, &[(0, 9)])), T);
        assert_eq!(r.pending, None);
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
    }

    #[test]
    fn recovery_keeps_offsets_advanced_by_dead_letters_only() {
        // Checkpoint 3 wrote no files (all records dead-lettered) but moved the offsets.
        let records = vec![
            record(2, &[(0, 5)], &[(0, 9)], true),
            record(3, &[(0, 9)], &[(0, 12)], false),
        ];
        let r = decide_recovery(&records, Some(&committed(2, &[(0, 9)])), T);
        assert_eq!(r.pending, None);
        assert_eq!(r.start_offsets, offsets(&[(0, 12)]));
        assert_eq!(r.table_base_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.next_checkpoint_id, 4);
    }

    #[test]
    fn recovery_skips_records_the_table_contradicts() {
        // A zombie wrote record 5 on a base the table never had; record 4 is consistent.
        let records = vec![
            record(4, &[(0, 9)], &[(0, 15)], true),
            record(5, &[(0, 7)], &[(0, 20)], true),
        ];
        let r = decide_recovery(&records, Some(&committed(4, &[(0, 15)])), T);
        assert_eq!(r.start_offsets, offsets(&[(0, 15)]));
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].0, 5);
        assert_eq!(r.next_checkpoint_id, 6, "ids are never reused");
    }

    #[test]
    fn recovery_without_records_trusts_the_table() {
        let r = decide_recovery(&[], Some(&committed(7, &[(0, 30)])), T);
        assert_eq!(r.start_offsets, offsets(&[(0, 30)]));
        assert_eq!(r.next_checkpoint_id, 8);
        let fresh = decide_recovery(&[], None, T);
        assert!(fresh.start_offsets.is_empty());
        assert_eq!(fresh.next_checkpoint_id, 1);
    }

    #[test]
    fn summaries_of_other_pipelines_are_ignored() {
        let mut s = HashMap::new();
        s.insert(SUMMARY_PIPELINE_UID.to_string(), "other".to_string());
        assert!(CommittedState::from_summary(1, &s, "uid").is_none());
        s.insert(SUMMARY_PIPELINE_UID.to_string(), "uid".to_string());
        s.insert(SUMMARY_CHECKPOINT_ID.to_string(), "4".to_string());
        s.insert(
            SUMMARY_OFFSETS.to_string(),
            r#"{"clicks":{"0":12}}"#.to_string(),
        );
        let c = CommittedState::from_summary(1, &s, "uid").unwrap().unwrap();
        assert_eq!(c.offsets, offsets(&[(0, 12)]));
    }
}
