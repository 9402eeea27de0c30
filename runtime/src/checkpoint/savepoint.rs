//! Savepoints: the durable record of a checkpoint taken on request, and the pure decision
//! whether (and how) a pipeline may start from one. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::{CheckpointRecord, TableStates, record_tables, render_offsets},
    offsets::Offsets,
};

/// A completed savepoint, stored at `<state location>/savepoints/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavepointRecord {
    /// Format version.
    pub version: u32,
    /// Savepoint id.
    pub id: String,
    /// RFC 3339 completion time.
    pub created_at: String,
    /// Pipeline uid of the job that took it.
    pub pipeline_uid: String,
    /// The sink as the spec named it (`namespace.name`, or the route), compared on restore.
    pub table: String,
    /// Topics read when it was taken.
    pub topics: Vec<String>,
    /// The checkpoint it is (committed before the savepoint completed).
    pub checkpoint: CheckpointRecord,
}

impl SavepointRecord {
    /// The offsets `table` holds for the pipeline once this savepoint completed (nothing for
    /// a table the savepoint does not name: it had no commit of the pipeline then).
    pub fn table_offsets(&self, table: &str) -> Offsets {
        if self.checkpoint.commits.contains_key(table) {
            self.checkpoint.offsets.clone()
        } else {
            self.checkpoint
                .table_base_offsets
                .get(table)
                .cloned()
                .unwrap_or_default()
        }
    }

    /// The tables the savepoint names.
    pub fn tables(&self) -> impl Iterator<Item = &String> {
        record_tables(&self.checkpoint)
    }
}

/// The pipeline about to start from a savepoint.
#[derive(Debug, Clone, Copy)]
pub struct RestoreTarget<'a> {
    /// Its pipeline uid.
    pub uid: &'a str,
    /// Its sink (`namespace.name`, or the route), as [`SavepointRecord::table`].
    pub table: &'a str,
    /// Its topics.
    pub topics: &'a [String],
    /// Accept a savepoint of another uid or table, or with topics no longer read.
    pub allow_non_restored_state: bool,
}

/// Where a restored pipeline starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// Offsets to resume from (topics no longer read removed).
    pub start_offsets: Offsets,
    /// Per table: its committed offsets of this pipeline.
    pub table_base_offsets: BTreeMap<String, Offsets>,
    /// Topics in the savepoint that the new spec no longer reads.
    pub dropped_topics: Vec<String>,
}

/// Decides whether `target` may start from `savepoint`, given the newest commit of the
/// target's uid in every table the savepoint or the pipeline's records name (`tables`).
/// Refuses, with the reason, everything that would not be exactly-once: a savepoint older
/// than what any table already holds is never restored; a table that did not exist (or had no
/// commit of the pipeline) when the savepoint was taken must still have none.
pub fn check_restore(
    savepoint: &SavepointRecord,
    target: RestoreTarget<'_>,
    tables: &TableStates,
) -> Result<Restored, String> {
    let allow = target.allow_non_restored_state;
    let hint = "set allowNonRestoredState (--allow-non-restored-state) to start from its offsets \
                anyway";
    let same_uid = savepoint.pipeline_uid == target.uid;
    let same_table = savepoint.table == target.table;
    if !same_uid && !allow {
        return Err(format!(
            "savepoint {} was taken by pipeline uid {}, this pipeline is {} (another pipeline or a \
             re-created resource); {hint}",
            savepoint.id, savepoint.pipeline_uid, target.uid
        ));
    }
    if !same_table && !allow {
        return Err(format!(
            "savepoint {} wrote table {}, this pipeline writes {}; {hint}",
            savepoint.id, savepoint.table, target.table
        ));
    }
    let dropped_topics: Vec<String> = savepoint
        .checkpoint
        .offsets
        .keys()
        .filter(|t| !target.topics.contains(t))
        .cloned()
        .collect();
    if !dropped_topics.is_empty() && !allow {
        return Err(format!(
            "savepoint {} holds offsets of topic(s) {} that this pipeline no longer reads; {hint}",
            savepoint.id,
            dropped_topics.join(", ")
        ));
    }
    let mut table_base_offsets = BTreeMap::new();
    for (table, last) in tables {
        let held = last.as_ref().map(|l| l.offsets.clone()).unwrap_or_default();
        let expected = savepoint.table_offsets(table);
        if same_uid && same_table && held != expected {
            return Err(match last {
                Some(l) => format!(
                    "table {table} already holds checkpoint {} of this pipeline (offsets {}), but \
                     savepoint {} is checkpoint {} (offsets {}): restoring it would write the \
                     records in between twice. Restore the newest savepoint, or start from the \
                     latest checkpoint",
                    l.checkpoint_id,
                    render_offsets(&l.offsets),
                    savepoint.id,
                    savepoint.checkpoint.checkpoint_id,
                    render_offsets(&expected),
                ),
                None => format!(
                    "table {table} has no commit of this pipeline, but savepoint {} expects \
                     offsets {}: the table was dropped, replaced or rolled back",
                    savepoint.id,
                    render_offsets(&expected)
                ),
            });
        }
        if last.is_some() {
            table_base_offsets.insert(table.clone(), held);
        }
    }
    let mut start_offsets = savepoint.checkpoint.offsets.clone();
    start_offsets.retain(|t, _| target.topics.contains(t));
    Ok(Restored {
        start_offsets,
        table_base_offsets,
        dropped_topics,
    })
}

/// Whether an earlier run of this deployment already restored `savepoint_id` and made
/// progress (a record carries it as origin): then the newest checkpoint wins, as with Flink's
/// HA data over `initialSavepointPath`.
pub fn already_restored(records: &[CheckpointRecord], savepoint_id: &str) -> bool {
    records
        .iter()
        .any(|r| r.origin.as_deref() == Some(savepoint_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::{T, committed, offsets, one, record};

    fn savepoint(id: u64) -> SavepointRecord {
        SavepointRecord {
            version: 1,
            id: format!("sp-{id}"),
            created_at: "now".into(),
            pipeline_uid: "uid".into(),
            table: T.into(),
            topics: vec!["clicks".into()],
            checkpoint: record(id, &[(0, 5)], &[(0, 9)], true),
        }
    }

    fn target(allow: bool) -> RestoreTarget<'static> {
        static TOPICS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["clicks".into(), "views".into()]);
        RestoreTarget {
            uid: "uid",
            table: T,
            topics: &TOPICS,
            allow_non_restored_state: allow,
        }
    }

    #[test]
    fn restores_the_newest_savepoint_with_new_topics_and_parallelism() {
        let sp = savepoint(4);
        let r = check_restore(&sp, target(false), &one(Some(committed(4, &[(0, 9)])))).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert_eq!(r.table_base_offsets[T], offsets(&[(0, 9)]));
        assert!(r.dropped_topics.is_empty());
    }

    #[test]
    fn refuses_a_savepoint_older_than_the_table_even_when_allowed() {
        let sp = savepoint(4);
        for allow in [false, true] {
            let e = check_restore(&sp, target(allow), &one(Some(committed(7, &[(0, 20)]))))
                .unwrap_err();
            assert!(e.contains("already holds checkpoint 7"), "{e}");
            assert!(e.contains("twice"), "{e}");
        }
        let e = check_restore(&sp, target(false), &one(None)).unwrap_err();
        assert!(e.contains("dropped, replaced or rolled back"), "{e}");
    }

    #[test]
    fn other_uid_table_or_removed_topics_need_permission() {
        let mut sp = savepoint(4);
        sp.pipeline_uid = "old-uid".into();
        let e = check_restore(&sp, target(false), &one(None)).unwrap_err();
        assert!(
            e.contains("uid old-uid") && e.contains("allowNonRestoredState"),
            "{e}"
        );
        let r = check_restore(&sp, target(true), &one(None)).unwrap();
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
        assert!(r.table_base_offsets.is_empty());

        let mut sp = savepoint(4);
        sp.table = "other.table".into();
        assert!(
            check_restore(&sp, target(false), &one(None))
                .unwrap_err()
                .contains("other.table")
        );

        let mut sp = savepoint(4);
        crate::offsets::set_offset(&mut sp.checkpoint.offsets, "gone", 0, 3);
        let mut last = committed(4, &[(0, 9)]);
        last.offsets = sp.table_offsets(T);
        let e = check_restore(&sp, target(false), &one(Some(last.clone()))).unwrap_err();
        assert!(e.contains("topic(s) gone"), "{e}");
        let r = check_restore(&sp, target(true), &one(Some(last))).unwrap();
        assert_eq!(r.dropped_topics, vec!["gone".to_string()]);
        assert_eq!(r.start_offsets, offsets(&[(0, 9)]));
    }

    #[test]
    fn tables_created_after_the_savepoint_must_have_no_commits() {
        let sp = savepoint(4);
        let newer = "raw.orders";
        // The table did not exist then and has no commit now: restored, T continues.
        let mut tables = one(Some(committed(4, &[(0, 9)])));
        tables.insert(newer.into(), None);
        let r = check_restore(&sp, target(false), &tables).unwrap();
        assert_eq!(r.table_base_offsets.keys().collect::<Vec<_>>(), vec![T]);
        // It was written after the savepoint: restoring would write those records again.
        tables.insert(newer.into(), Some(committed(6, &[(0, 14)])));
        let e = check_restore(&sp, target(false), &tables).unwrap_err();
        assert!(
            e.contains("table raw.orders already holds checkpoint 6"),
            "{e}"
        );
    }

    #[test]
    fn a_restored_lineage_is_recognised_by_its_records() {
        let mut r = record(5, &[(0, 9)], &[(0, 12)], true);
        assert!(!already_restored(std::slice::from_ref(&r), "sp-4"));
        r.origin = Some("sp-4".into());
        assert!(already_restored(&[r], "sp-4"));
    }
}
