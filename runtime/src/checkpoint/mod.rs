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

/// Snapshot summary key: `upsert` on the commits of an upsert pipeline (absent: append).
pub const SUMMARY_MODE: &str = "tidewater.mode";

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableCommitPlan {
    /// Partition spec id of the files.
    pub partition_spec_id: i32,
    /// The data files, as written.
    pub data_files: Vec<DataFileRef>,
    /// Rows in the files.
    pub rows: u64,
    /// Bytes of the files.
    #[serde(default)]
    pub bytes: u64,
    /// Upsert mode: position delete files removing the rows that this checkpoint's changes
    /// replace or delete (committed with the data files in one row-delta snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_files: Vec<DataFileRef>,
    /// Rows the delete files delete.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Per table: its committed offsets of this pipeline after recovery.
    pub table_base_offsets: BTreeMap<String, Offsets>,
    /// The first checkpoint id to use.
    pub next_checkpoint_id: u64,
    /// A record whose commits to `pending_tables` must be finished before anything else.
    pub pending: Option<CheckpointRecord>,
    /// The tables of `pending` that do not hold it yet.
    pub pending_tables: Vec<String>,
    /// Records that were skipped because a table contradicts them, with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Origin of the record resumed from (none when resuming from the table alone).
    pub origin: Option<String>,
}

/// Per table: its newest commit of this pipeline (`None`: none, or the table is gone).
pub type TableStates = BTreeMap<String, Option<CommittedState>>;

/// Every table a record names (with a base or with files).
pub fn record_tables(record: &CheckpointRecord) -> impl Iterator<Item = &String> {
    let mut tables: Vec<&String> = record
        .table_base_offsets
        .keys()
        .chain(record.commits.keys())
        .collect();
    tables.sort();
    tables.dedup();
    tables.into_iter()
}

/// The highest checkpoint id in the records or the tables (0 when none): ids are never reused.
pub fn max_checkpoint_id(records: &[CheckpointRecord], tables: &TableStates) -> u64 {
    records
        .iter()
        .map(|r| r.checkpoint_id)
        .chain(tables.values().flatten().map(|l| l.checkpoint_id))
        .max()
        .unwrap_or(0)
}

/// What the tables say of one record: the tables to finish and every table's base after
/// recovery, or why a table contradicts it.
fn check_record(
    record: &CheckpointRecord,
    tables: &TableStates,
) -> Result<(Vec<String>, BTreeMap<String, Offsets>), String> {
    let mut to_finish = Vec::new();
    let mut bases = BTreeMap::new();
    for table in record_tables(record) {
        let last = tables.get(table).and_then(Option::as_ref);
        if record.commits.contains_key(table) {
            match decide_commit(last, record, table) {
                CommitDecision::AlreadyCommitted { .. } => {}
                CommitDecision::Commit => to_finish.push(table.clone()),
                CommitDecision::Fenced { reason } => return Err(reason),
            }
            bases.insert(table.clone(), record.offsets.clone());
        } else {
            let base = record
                .table_base_offsets
                .get(table)
                .cloned()
                .unwrap_or_default();
            let held = last.map(|l| l.offsets.clone()).unwrap_or_default();
            if held != base {
                return Err(format!(
                    "its base offsets of table {table} differ from the table's"
                ));
            }
            bases.insert(table.clone(), base);
        }
    }
    Ok((to_finish, bases))
}

/// Chooses the restart point from the durable records (any order) and the newest commit of
/// this pipeline in every table they name. The tables are the truth: a record that one of
/// them contradicts (written by a stale writer) is skipped. The newest record that every
/// table agrees with wins; its tables that do not hold it yet are finished (a crash between
/// two table commits). Without such a record the one table that holds commits is trusted;
/// several such tables cannot be brought to one consistent restart point, and that is refused.
pub fn decide_recovery(
    records: &[CheckpointRecord],
    tables: &TableStates,
) -> Result<Recovery, String> {
    let mut sorted: Vec<&CheckpointRecord> = records.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.checkpoint_id));
    let next_checkpoint_id = max_checkpoint_id(records, tables) + 1;
    let mut skipped = Vec::new();
    for record in sorted {
        match check_record(record, tables) {
            Ok((pending_tables, table_base_offsets)) => {
                return Ok(Recovery {
                    start_offsets: record.offsets.clone(),
                    table_base_offsets,
                    next_checkpoint_id,
                    pending: (!pending_tables.is_empty()).then(|| record.clone()),
                    pending_tables,
                    skipped,
                    origin: record.origin.clone(),
                });
            }
            Err(reason) => skipped.push((record.checkpoint_id, reason)),
        }
    }
    let committed: Vec<(&String, &CommittedState)> = tables
        .iter()
        .filter_map(|(t, l)| l.as_ref().map(|l| (t, l)))
        .collect();
    let (start_offsets, table_base_offsets) = match committed.as_slice() {
        [] => (Offsets::new(), BTreeMap::new()),
        [(table, last)] => (
            last.offsets.clone(),
            BTreeMap::from([((*table).clone(), last.offsets.clone())]),
        ),
        several => {
            return Err(format!(
                "tables {} hold commits of this pipeline, but no checkpoint record agrees with                  all of them, so there is no one point to resume from exactly once; start from a                  savepoint or fresh (--fresh), which re-reads from startingOffsets",
                several
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    Ok(Recovery {
        start_offsets,
        table_base_offsets,
        next_checkpoint_id,
        pending: None,
        pending_tables: Vec::new(),
        skipped,
        origin: None,
    })
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
                        bytes: 10,
                        ..Default::default()
                    },
                )])
            } else {
                BTreeMap::new()
            },
            origin: None,
        }
    }

    /// The one table `T` with this newest commit.
    pub(crate) fn one(last: Option<CommittedState>) -> TableStates {
        BTreeMap::from([(T.to_string(), last)])
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
        let r = decide_recovery(&records, &one(Some(committed(1, &[(0, 5)])))).unwrap();
        assert_eq!(r.pending.as_ref().map(|p| p.checkpoint_id), Some(2));
        assert_eq!(r.pending_tables, vec![T.to_string()]);
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.table_base_offsets[T], offsets(&[(0, 9)]));
        assert_eq!(r.next_checkpoint_id, 3);
    }

    #[test]
    fn recovery_after_the_commit_landed_resumes_after_it() {
        let records = vec![record(2, &[(0, 5)], &[(0, 9)], true)];
        let r = decide_recovery(&records, &one(Some(committed(2, &[(0, 9)])))).unwrap();
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
        let r = decide_recovery(&records, &one(Some(committed(2, &[(0, 9)])))).unwrap();
        assert_eq!(r.pending, None);
        assert_eq!(r.start_offsets, offsets(&[(0, 12)]));
        assert_eq!(r.table_base_offsets[T], offsets(&[(0, 9)]));
        assert_eq!(r.next_checkpoint_id, 4);
    }

    #[test]
    fn recovery_skips_records_the_table_contradicts() {
        // A zombie wrote record 5 on a base the table never had; record 4 is consistent.
        let records = vec![
            record(4, &[(0, 9)], &[(0, 15)], true),
            record(5, &[(0, 7)], &[(0, 20)], true),
        ];
        let r = decide_recovery(&records, &one(Some(committed(4, &[(0, 15)])))).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 15)]));
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].0, 5);
        assert_eq!(r.next_checkpoint_id, 6, "ids are never reused");
    }

    #[test]
    fn recovery_without_records_trusts_the_table() {
        let r = decide_recovery(&[], &one(Some(committed(7, &[(0, 30)])))).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 30)]));
        assert_eq!(r.next_checkpoint_id, 8);
        let fresh = decide_recovery(&[], &one(None)).unwrap();
        assert!(fresh.start_offsets.is_empty());
        assert_eq!(fresh.next_checkpoint_id, 1);
    }

    const U: &str = "raw.orders";

    /// `record` that also names table `U`: with files when `u_files`, from base `u_base`.
    fn with_u(mut r: CheckpointRecord, u_base: &[(i32, i64)], u_files: bool) -> CheckpointRecord {
        r.table_base_offsets.insert(U.into(), offsets(u_base));
        if u_files {
            let plan = TableCommitPlan {
                partition_spec_id: 0,
                data_files: vec!["g".into()],
                rows: 2,
                bytes: 20,
                ..Default::default()
            };
            r.commits.insert(U.into(), plan);
        }
        r
    }

    #[test]
    fn a_crash_between_two_table_commits_finishes_the_second_only() {
        let records = vec![with_u(
            record(3, &[(0, 5)], &[(0, 9)], true),
            &[(0, 5)],
            true,
        )];
        // T already holds checkpoint 3; U still holds checkpoint 2.
        let tables = BTreeMap::from([
            (T.to_string(), Some(committed(3, &[(0, 9)]))),
            (U.to_string(), Some(committed(2, &[(0, 5)]))),
        ]);
        let r = decide_recovery(&records, &tables).unwrap();
        assert_eq!(r.pending_tables, vec![U.to_string()]);
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.table_base_offsets[T], offsets(&[(0, 9)]));
        assert_eq!(r.table_base_offsets[U], offsets(&[(0, 9)]));
        // Both landed: nothing pending.
        let both = BTreeMap::from([
            (T.to_string(), Some(committed(3, &[(0, 9)]))),
            (U.to_string(), Some(committed(3, &[(0, 9)]))),
        ]);
        let r = decide_recovery(&records, &both).unwrap();
        assert_eq!((r.pending, r.pending_tables.len()), (None, 0));
    }

    #[test]
    fn a_table_created_in_the_checkpoint_gets_its_first_commit() {
        let records = vec![with_u(record(3, &[(0, 5)], &[(0, 9)], false), &[], true)];
        let tables = BTreeMap::from([
            (T.to_string(), Some(committed(2, &[(0, 5)]))),
            (U.to_string(), None),
        ]);
        let r = decide_recovery(&records, &tables).unwrap();
        assert_eq!(r.pending_tables, vec![U.to_string()]);
        assert_eq!(r.table_base_offsets[T], offsets(&[(0, 5)]), "T not written");
        assert_eq!(r.table_base_offsets[U], offsets(&[(0, 9)]));
    }

    #[test]
    fn one_contradicting_table_skips_the_record() {
        // Record 4 believes U is at 5, but U moved on to 12 (a zombie's record); record 3 agrees.
        let records = vec![
            with_u(record(3, &[(0, 5)], &[(0, 9)], true), &[(0, 12)], false),
            with_u(record(4, &[(0, 9)], &[(0, 15)], false), &[(0, 5)], false),
        ];
        let tables = BTreeMap::from([
            (T.to_string(), Some(committed(3, &[(0, 9)]))),
            (U.to_string(), Some(committed(1, &[(0, 12)]))),
        ]);
        let r = decide_recovery(&records, &tables).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].1.contains(U), "{:?}", r.skipped);
    }

    #[test]
    fn several_committed_tables_without_an_agreeing_record_are_refused() {
        let tables = BTreeMap::from([
            (T.to_string(), Some(committed(3, &[(0, 9)]))),
            (U.to_string(), Some(committed(2, &[(0, 5)]))),
        ]);
        let err = decide_recovery(&[], &tables).unwrap_err();
        assert!(
            err.contains(T) && err.contains(U) && err.contains("--fresh"),
            "{err}"
        );
        // One committed table and one without commits: the committed one is trusted.
        let tables = BTreeMap::from([
            (T.to_string(), Some(committed(3, &[(0, 9)]))),
            (U.to_string(), None),
        ]);
        let r = decide_recovery(&[], &tables).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.next_checkpoint_id, 4);
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
