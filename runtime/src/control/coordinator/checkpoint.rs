//! One checkpoint: barrier → acknowledgements → durable record → exactly-once commit → progress,
//! and savepoints on top of it. Folding the acknowledgements is pure.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    time::{Duration, Instant},
};

use futures::StreamExt;
use tracing::Instrument;

use tidewater_crds::job_api::{CheckpointStatus, RunState, SavepointState, SavepointStatus};

use crate::{
    checkpoint::{CheckpointRecord, TableCommitPlan, savepoint::SavepointRecord},
    commit::{self, CommitOutcome, TableError},
    control::{
        assignment::plan_assignment,
        hub::Event,
        protocol::{ToCoordinator, ToWorker, WorkerAck, WorkerId},
    },
    failpoint,
    metrics::TableLabels,
    offsets::{Offsets, TopicPartition, set_offset},
    source,
};

use super::{Collected, Coordinator, Kind, Outcome, RunError, SOURCE_ANSWER_MAX_AGE, blocking};

/// How many tables of one checkpoint commit at the same time.
const COMMIT_CONCURRENCY: usize = 8;

/// Partitions each current owner must release because `plan` gives them to another worker.
fn releases(
    owner: &BTreeMap<TopicPartition, WorkerId>,
    plan: &BTreeMap<TopicPartition, WorkerId>,
) -> BTreeMap<WorkerId, Vec<TopicPartition>> {
    let mut out: BTreeMap<WorkerId, Vec<TopicPartition>> = BTreeMap::new();
    for (tp, w) in owner {
        if plan.get(tp) != Some(w) {
            out.entry(*w).or_default().push(tp.clone());
        }
    }
    out
}

/// What the acknowledgements of one checkpoint add up to.
#[derive(Debug, Default, PartialEq)]
struct Folded {
    /// `base` advanced by every acknowledged offset.
    offsets: Offsets,
    /// Per table: the data files written, in acknowledgement order.
    tables: BTreeMap<String, TableCommitPlan>,
    rows: u64,
    dead: u64,
    bytes: u64,
    min_ts: Option<i64>,
    max_ts: Option<i64>,
}

/// Folds the acknowledgements of a checkpoint onto the offsets it started from (pure).
/// Workers that wrote one table with different partition specs cannot be committed together.
fn fold_acks(base: &Offsets, acks: Vec<WorkerAck>) -> Result<Folded, String> {
    let mut f = Folded {
        offsets: base.clone(),
        ..Folded::default()
    };
    for ack in acks {
        for (topic, parts) in ack.offsets {
            for (p, o) in parts {
                set_offset(&mut f.offsets, &topic, p, o);
            }
        }
        for (table, plan) in ack.tables {
            match f.tables.entry(table) {
                Entry::Vacant(v) => {
                    v.insert(plan);
                }
                Entry::Occupied(mut o) => {
                    if o.get().partition_spec_id != plan.partition_spec_id {
                        return Err(format!(
                            "workers wrote table {} with partition specs {} and {}",
                            o.key(),
                            o.get().partition_spec_id,
                            plan.partition_spec_id
                        ));
                    }
                    let have = o.get_mut();
                    have.data_files.extend(plan.data_files);
                    have.delete_files.extend(plan.delete_files);
                    have.rows += plan.rows;
                    have.bytes += plan.bytes;
                    have.deleted_rows += plan.deleted_rows;
                }
            }
        }
        f.rows += ack.rows;
        f.bytes += ack.bytes;
        f.dead += ack.dead_lettered;
        f.min_ts = f.min_ts.into_iter().chain(ack.min_timestamp_ms).min();
        f.max_ts = f.max_ts.into_iter().chain(ack.max_timestamp_ms).max();
    }
    f.tables
        .retain(|_, plan| !plan.data_files.is_empty() || !plan.delete_files.is_empty());
    Ok(f)
}

impl Coordinator {
    pub(super) async fn collect_acks(
        &mut self,
        checkpoint_id: u64,
        participants: &BTreeSet<WorkerId>,
    ) -> Result<Collected, RunError> {
        let deadline = tokio::time::Instant::now() + self.config.checkpoint_timeout;
        let mut acks: BTreeMap<WorkerId, WorkerAck> = BTreeMap::new();
        while acks.len() < participants.len() {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    // A worker that is alive but does not answer (stuck I/O) is treated as
                    // lost: it gets "gone" on its next request and starts over.
                    let silent: Vec<WorkerId> = participants
                        .iter()
                        .filter(|w| !acks.contains_key(w))
                        .copied()
                        .collect();
                    for &w in &silent {
                        self.forget(w, "no acknowledgement within checkpoint.timeout");
                    }
                    return Ok(Collected::Aborted(format!(
                        "checkpoint {checkpoint_id} not acknowledged within {:?} by worker(s) {silent:?}",
                        self.config.checkpoint_timeout
                    )));
                }
                Ok(None) => return Err(RunError::EventsClosed),
                Ok(Some(e)) => e,
            };
            match event {
                Event::Worker(ToCoordinator::Failed { worker, reason }) => {
                    return Err(RunError::Worker { worker, reason });
                }
                Event::Worker(ToCoordinator::Ack(ack))
                    if ack.checkpoint_id == checkpoint_id && participants.contains(&ack.worker) =>
                {
                    acks.insert(ack.worker, ack);
                }
                Event::Worker(ToCoordinator::Ack(ack)) => {
                    tracing::debug!(
                        worker = ack.worker,
                        checkpoint = ack.checkpoint_id,
                        "stale acknowledgement ignored"
                    );
                }
                Event::Lost { id, reason } => {
                    let owned = self.forget(id, &reason);
                    if participants.contains(&id) {
                        return Ok(Collected::Aborted(format!("worker {id} lost: {reason}")));
                    }
                    if owned {
                        self.assign_unowned()?;
                    }
                }
                other => self.on_membership(other),
            }
        }
        Ok(Collected::Complete(acks.into_values().collect()))
    }

    /// One checkpoint: barrier (with partition releases) → acks → moved partitions start at
    /// their new owners → durable record → exactly-once commit → progress. Returns an outcome
    /// when the job must end (a savepoint with stop). Traced as a `checkpoint` span with
    /// `barrier` (workers' `flush` spans inside), `durable_record`, `commit` (a `commit_table`
    /// per table) and `savepoint` children.
    #[tracing::instrument(name = "checkpoint", skip_all, fields(checkpoint = self.next_checkpoint_id, savepoint = matches!(kind, Kind::Savepoint { .. })))]
    pub(super) async fn checkpoint(&mut self, kind: Kind) -> Result<Option<Outcome>, RunError> {
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let started = Instant::now();
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut releases = releases(&self.owner, &plan);
        let participants: BTreeSet<WorkerId> = self.owner.values().copied().collect();
        if matches!(kind, Kind::Savepoint { .. }) {
            self.publish(RunState::Savepointing);
        }
        let barrier = tracing::info_span!("barrier", workers = participants.len());
        let collected = async {
            let traceparent = tidewater_telemetry::current_traceparent();
            let mut gone = None;
            for &w in &participants {
                let release = releases.remove(&w).unwrap_or_default();
                let barrier = ToWorker::Barrier {
                    checkpoint_id: id,
                    release,
                    traceparent: traceparent.clone(),
                };
                if self.hub.send(w, barrier).is_err() {
                    gone = Some(w);
                }
            }
            Ok::<_, RunError>(match gone {
                Some(w) => {
                    self.forget(w, "link closed");
                    Collected::Aborted(format!("worker {w} is gone"))
                }
                None => self.collect_acks(id, &participants).await?,
            })
        }
        .instrument(barrier)
        .await?;
        let acks = match collected {
            Collected::Complete(acks) => acks,
            Collected::Aborted(reason) => {
                tracing::warn!(checkpoint = id, %reason, "checkpoint aborted: every worker restarts from the last completed checkpoint");
                self.aborted += 1;
                self.metrics.aborted_checkpoints.inc();
                self.reset_all();
                if let Kind::Savepoint { id: sp, .. } = &kind {
                    self.fail_savepoint(sp, &format!("checkpoint {id} aborted: {reason}"));
                }
                self.publish(RunState::Running);
                return Ok(None);
            }
        };
        let Folded {
            offsets,
            tables,
            rows,
            dead,
            bytes,
            min_ts,
            max_ts,
        } = fold_acks(&self.offsets, acks).map_err(RunError::Acks)?;
        let is_savepoint = matches!(kind, Kind::Savepoint { .. });
        if tables.is_empty() && offsets == self.offsets && !is_savepoint {
            self.move_partitions(&plan, &offsets, started);
            tracing::debug!(
                checkpoint = id,
                "empty checkpoint: nothing to record or commit"
            );
            if self.source_answered.elapsed() <= SOURCE_ANSWER_MAX_AGE {
                self.metrics.mark_committed();
            }
            self.assign_unowned()?;
            // A leaving worker whose partitions just moved is stopped now, not at the next
            // checkpoint with data (an idle pipeline has none: it waited out its 60 s).
            self.retire_idle();
            self.publish(RunState::Running);
            return Ok(None);
        }
        let file_count: usize = tables.values().map(|p| p.data_files.len()).sum();
        for table in tables.keys() {
            self.table_base.entry(table.clone()).or_default();
        }
        let record = CheckpointRecord {
            version: 1,
            pipeline_uid: self.config.uid.clone(),
            checkpoint_id: id,
            run_id: self.run_id.clone(),
            created_at: chrono::Utc::now().to_rfc3339(),
            offsets,
            table_base_offsets: self.table_base.clone(),
            commits: tables,
            origin: self.origin.clone(),
        };
        self.store
            .write(&record)
            .instrument(tracing::info_span!("durable_record"))
            .await?;
        failpoint::hit(failpoint::points::AFTER_RECORD);
        self.metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        let mut commit_ms: Option<f64> = None;
        let snapshots = if record.commits.is_empty() {
            BTreeMap::new()
        } else {
            let commit_started = Instant::now();
            let to_commit: Vec<String> = record.commits.keys().cloned().collect();
            let snapshots = self
                .commit_tables(&record, &to_commit)
                .instrument(tracing::info_span!("commit", tables = to_commit.len()))
                .await?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let commit_secs = commit_started.elapsed().as_secs_f64();
            self.metrics.commit_duration.observe(commit_secs);
            commit_ms = Some(commit_secs * 1000.0);
            self.metrics.commits.inc_by(snapshots.len() as u64);
            self.metrics.rows_committed.inc_by(rows);
            self.rows_committed += rows;
            #[allow(clippy::cast_precision_loss)]
            {
                self.metrics.files_per_commit.observe(file_count as f64);
                self.metrics.bytes_per_commit.observe(bytes as f64);
                for ts in min_ts.into_iter().chain(max_ts) {
                    self.metrics
                        .freshness
                        .observe((now_ms - ts).max(0) as f64 / 1000.0);
                }
            }
            for table in snapshots.keys() {
                self.table_base
                    .insert(table.clone(), record.offsets.clone());
                let plan = &record.commits[table];
                let labels = TableLabels {
                    table: table.clone(),
                };
                self.metrics
                    .table_rows
                    .get_or_create(&labels)
                    .inc_by(plan.rows);
                self.metrics
                    .table_files
                    .get_or_create(&labels)
                    .inc_by(plan.data_files.len() as u64);
                self.metrics.table_commits.get_or_create(&labels).inc();
                if !plan.delete_files.is_empty() {
                    let u = &self.metrics.upsert;
                    u.deleted_rows
                        .get_or_create(&labels)
                        .inc_by(plan.deleted_rows);
                    u.delete_files
                        .get_or_create(&labels)
                        .inc_by(plan.delete_files.len() as u64);
                }
            }
            snapshots
        };
        self.offsets = record.offsets.clone();
        // Partitions move once the checkpoint is committed: their new owner starts from the
        // table as it now is (an upsert worker reads its key index from it).
        self.move_partitions(&plan, &record.offsets, started);
        self.last_checkpoint = Some(CheckpointStatus {
            id,
            time: record.created_at.clone(),
            snapshots: snapshots.clone(),
        });
        self.metrics.mark_committed();
        self.metrics.checkpoints.inc();
        self.metrics
            .last_checkpoint_id
            .set(i64::try_from(id).unwrap_or(i64::MAX));
        tracing::info!(
            checkpoint = id,
            rows,
            dead_lettered = dead,
            files = file_count,
            tables = snapshots.len(),
            snapshot = snapshots.values().next(),
            commit_ms,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "checkpoint complete"
        );
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        if let Err(e) = blocking(move || source::commit_group_offsets(&admin, &offsets)).await {
            tracing::warn!(error = %e, "could not report offsets to the consumer group (progress only)");
        }
        if let Err(e) = self
            .store
            .prune(&self.config.uid, self.config.retained_checkpoints)
            .await
        {
            tracing::warn!(error = %e, "could not prune old checkpoint records");
        }
        if let Kind::Savepoint { id: sp_id, stop } = kind {
            let savepoint = SavepointRecord {
                version: 1,
                id: sp_id.clone(),
                created_at: chrono::Utc::now().to_rfc3339(),
                pipeline_uid: self.config.uid.clone(),
                table: self.config.sink_display(),
                topics: self
                    .partitions
                    .iter()
                    .map(|tp| tp.topic.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                checkpoint: record,
            };
            let written = self
                .store
                .write_savepoint(&savepoint)
                .instrument(tracing::info_span!("savepoint", savepoint = %sp_id, stop))
                .await;
            match written {
                Ok(path) => {
                    tracing::info!(savepoint = %sp_id, %path, checkpoint = id, stop, "savepoint completed");
                    self.shared.set_savepoint(SavepointStatus {
                        id: sp_id,
                        state: SavepointState::Completed,
                        stop,
                        path: Some(path.clone()),
                        checkpoint_id: Some(id),
                        reason: None,
                    });
                    if stop {
                        return Ok(Some(Outcome::Finished { savepoint: path }));
                    }
                }
                Err(e) => self.fail_savepoint(&sp_id, &e.to_string()),
            }
        }
        self.assign_unowned()?;
        self.retire_idle();
        self.publish(RunState::Running);
        Ok(None)
    }

    pub(super) fn fail_savepoint(&self, id: &str, reason: &str) {
        tracing::warn!(savepoint = id, %reason, "savepoint failed");
        let stop = self
            .shared
            .savepoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .is_some_and(|s| s.stop);
        self.shared.set_savepoint(SavepointStatus {
            id: id.into(),
            state: SavepointState::Failed,
            stop,
            path: None,
            checkpoint_id: None,
            reason: Some(reason.into()),
        });
    }

    /// Commits `record` to each of `tables`, a few at a time; every table's commit is
    /// validated and fenced on its own, so a crash between two of them is finished on restart.
    pub(super) async fn commit_tables(
        &self,
        record: &CheckpointRecord,
        tables: &[String],
    ) -> Result<BTreeMap<String, i64>, RunError> {
        let mut commits = futures::stream::iter(tables)
            .map(|table| async move {
                let outcome = self
                    .commit_with_retry(record, table)
                    .instrument(tracing::info_span!("commit_table", table = %table))
                    .await?;
                if let CommitOutcome::Committed {
                    rewritten: Some(rewrite),
                    ..
                } = outcome
                {
                    self.note_rewrite(table, rewrite);
                }
                if let CommitOutcome::Committed {
                    files: Some((data, deletes)),
                    ..
                } = outcome
                {
                    #[allow(clippy::cast_precision_loss)]
                    self.metrics
                        .upsert
                        .read_amplification
                        .get_or_create(&TableLabels {
                            table: table.clone(),
                        })
                        .set(deletes as f64 / data.max(1) as f64);
                }
                Ok::<_, RunError>((table.clone(), outcome.snapshot_id()))
            })
            .buffer_unordered(COMMIT_CONCURRENCY);
        let mut snapshots = BTreeMap::new();
        while let Some(done) = commits.next().await {
            let (table, snapshot) = done?;
            snapshots.insert(table, snapshot);
            if snapshots.len() < tables.len() {
                failpoint::hit(failpoint::points::BETWEEN_TABLE_COMMITS);
            }
        }
        Ok(snapshots)
    }

    /// A compaction moved rows of upsert table `table` (the newest such snapshot is
    /// `rewrite`): the first time it is seen, every worker reads the table's key index again.
    fn note_rewrite(&self, table: &str, rewrite: i64) {
        let mut seen = self.rewrites.lock().expect("rewrites lock");
        if seen.insert(table.to_string(), rewrite) == Some(rewrite) {
            return;
        }
        tracing::info!(%table, snapshot = rewrite, "a compaction moved rows: workers read their key index again");
        for &w in self.members.keys() {
            let _ = self.hub.send(
                w,
                ToWorker::ReloadIndex {
                    tables: vec![table.to_string()],
                },
            );
        }
    }

    /// Commits `record` to `table`, retrying what may be transient (not fencing).
    async fn commit_with_retry(
        &self,
        record: &CheckpointRecord,
        table: &str,
    ) -> Result<CommitOutcome, RunError> {
        let ident = commit::parse_ident(table)?;
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            match commit::commit_checkpoint(
                self.catalog.as_ref(),
                self.swap.as_deref(),
                &ident,
                table,
                record,
                &self.config.state_location,
            )
            .await
            {
                Ok(o) => return Ok(o),
                Err(e @ (TableError::Fenced(_) | TableError::History(_))) => return Err(e.into()),
                Err(e) if attempt < 6 => {
                    tracing::warn!(attempt, %table, error = %e, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::DataFileRef;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    fn plan(spec: i32, files: &[&str], rows: u64) -> TableCommitPlan {
        TableCommitPlan {
            partition_spec_id: spec,
            data_files: files.iter().map(|f| DataFileRef::from(*f)).collect(),
            rows,
            bytes: rows * 10,
            ..Default::default()
        }
    }

    #[test]
    fn acknowledgements_advance_the_base_and_add_up_per_table() {
        let mut base = Offsets::new();
        set_offset(&mut base, "a", 0, 10);
        set_offset(&mut base, "a", 1, 20);
        let ack = |worker, p, o, tables: Vec<(&str, TableCommitPlan)>, ts: Option<i64>| {
            let mut offsets = Offsets::new();
            set_offset(&mut offsets, "a", p, o);
            let rows = tables.iter().map(|(_, t)| t.rows).sum();
            WorkerAck {
                worker,
                checkpoint_id: 3,
                tables: tables
                    .into_iter()
                    .map(|(t, p)| (t.to_string(), p))
                    .collect(),
                offsets,
                rows,
                bytes: rows * 10,
                dead_lettered: 1,
                min_timestamp_ms: ts,
                max_timestamp_ms: ts.map(|t| t + 5),
            }
        };
        let f = fold_acks(
            &base,
            vec![
                ack(1, 0, 15, vec![("ns.t", plan(2, &["f1"], 5))], Some(100)),
                ack(
                    2,
                    2,
                    7,
                    vec![
                        ("ns.t", plan(2, &["f2", "f3"], 7)),
                        ("ns.u", plan(0, &["g1"], 1)),
                        ("ns.empty", plan(0, &[], 0)),
                    ],
                    None,
                ),
            ],
        )
        .unwrap();
        let mut want = base.clone();
        set_offset(&mut want, "a", 0, 15);
        set_offset(&mut want, "a", 2, 7);
        assert_eq!(f.offsets, want, "partition 1 keeps its base offset");
        assert_eq!(
            f.tables,
            BTreeMap::from([
                ("ns.t".to_string(), plan(2, &["f1", "f2", "f3"], 12)),
                ("ns.u".to_string(), plan(0, &["g1"], 1)),
            ]),
            "a table without files is not committed"
        );
        assert_eq!((f.rows, f.bytes, f.dead), (13, 130, 2));
        assert_eq!((f.min_ts, f.max_ts), (Some(100), Some(105)));
        assert_eq!(fold_acks(&base, vec![]).unwrap().offsets, base);
        let split = fold_acks(
            &base,
            vec![
                ack(1, 0, 15, vec![("ns.t", plan(1, &["f1"], 5))], None),
                ack(2, 2, 7, vec![("ns.t", plan(2, &["f2"], 5))], None),
            ],
        );
        assert!(
            split
                .unwrap_err()
                .contains("ns.t with partition specs 1 and 2")
        );
    }

    #[test]
    fn owners_release_what_the_plan_moves() {
        let owner = BTreeMap::from([(tp("a", 0), 1), (tp("a", 1), 1), (tp("a", 2), 2)]);
        let plan = BTreeMap::from([(tp("a", 0), 1), (tp("a", 1), 3), (tp("a", 2), 3)]);
        assert_eq!(
            releases(&owner, &plan),
            BTreeMap::from([(1, vec![tp("a", 1)]), (2, vec![tp("a", 2)])])
        );
        assert!(releases(&owner, &owner).is_empty());
    }
}
