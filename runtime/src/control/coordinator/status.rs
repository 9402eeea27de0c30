//! What the job reports: lag per partition and the status document behind `/v1/status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tidewater_crds::job_api::{JobStatus, PartitionStatus, RunState, WorkerState, WorkerStatus};

use crate::{control::protocol::WorkerId, metrics::PartitionLabels, offsets::get_offset, source};

use super::{Coordinator, blocking};

impl Coordinator {
    pub(super) async fn update_lag(&mut self) {
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        let partitions: usize = offsets.values().map(BTreeMap::len).sum();
        let started = Instant::now();
        let answers = blocking(move || source::lag(&admin, &offsets)).await;
        if answers.len() == partitions {
            self.source_answered = started;
        }
        for (tp, lag) in answers {
            self.metrics
                .lag
                .get_or_create(&PartitionLabels {
                    topic: tp.topic.clone(),
                    partition: tp.partition.to_string(),
                })
                .set(lag);
            self.lag.insert(tp, lag);
        }
        self.publish_current();
    }

    pub(super) fn publish_current(&self) {
        let state = self
            .shared
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state;
        self.publish(state);
    }

    /// Publishes the status document for `GET /v1/status`.
    pub(super) fn publish(&self, state: RunState) {
        let active: BTreeSet<WorkerId> = self.active_workers().into_iter().collect();
        let seen = self.hub.last_seen();
        let workers = self
            .members
            .iter()
            .map(|(&id, m)| WorkerStatus {
                id,
                name: m.name.clone(),
                state: if m.leaving {
                    WorkerState::Leaving
                } else if active.contains(&id) {
                    WorkerState::Active
                } else {
                    WorkerState::Idle
                },
                partitions: self
                    .owner
                    .iter()
                    .filter(|(_, w)| **w == id)
                    .map(|(tp, _)| format!("{}/{}", tp.topic, tp.partition))
                    .collect(),
                last_seen_seconds: seen.get(&id).copied(),
                metrics_addr: m.metrics_addr.clone(),
            })
            .collect();
        let partitions: Vec<PartitionStatus> = self
            .partitions
            .iter()
            .map(|tp| PartitionStatus {
                topic: tp.topic.clone(),
                partition: tp.partition,
                worker: self.owner.get(tp).copied(),
                offset: get_offset(&self.offsets, &tp.topic, tp.partition).unwrap_or(0),
                lag: self.lag.get(tp).copied(),
            })
            .collect();
        self.metrics
            .active_workers
            .set(i64::try_from(self.owner.values().collect::<BTreeSet<_>>().len()).unwrap_or(0));
        self.shared.publish(JobStatus {
            pipeline: self.config.name.clone(),
            pipeline_uid: self.config.uid.clone(),
            run_id: self.run_id.clone(),
            state,
            target_workers: self.target,
            workers,
            last_checkpoint: self.last_checkpoint.clone(),
            total_lag: partitions.iter().filter_map(|p| p.lag).sum(),
            partitions,
            tables: self.table_base.keys().cloned().collect(),
            rows_committed: self.rows_committed,
            aborted_checkpoints: self.aborted,
            error: None,
        });
    }
}
