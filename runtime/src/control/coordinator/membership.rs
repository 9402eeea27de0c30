//! Membership and assignment: workers joining, leaving and lost, partition discovery, handing out
//! unowned partitions and moving released ones (the plan itself is `assignment`, pure).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    checkpoint::render_offsets,
    control::{
        assignment::plan_assignment,
        hub::Event,
        protocol::{ToWorker, WorkerId},
    },
    offsets::{Offsets, TopicPartition, get_offset, set_offset},
    source,
};

use super::{Coordinator, Member, RunError, blocking, start_policy};

impl Coordinator {
    /// Joins, leaves, savepoint and parallelism requests: the same inside and outside a
    /// checkpoint (they take effect at the next boundary).
    pub(super) fn on_membership(&mut self, event: Event) {
        match event {
            Event::Joined {
                id,
                name,
                metrics_addr,
            } => {
                tracing::info!(worker = id, %name, "worker joined");
                self.members.insert(
                    id,
                    Member {
                        name,
                        metrics_addr,
                        leaving: false,
                        thread: None,
                    },
                );
                self.rebalance = true;
            }
            Event::Leaving { id } => {
                if let Some(m) = self.members.get_mut(&id) {
                    tracing::info!(
                        worker = id,
                        "worker is leaving: its partitions move at the next checkpoint"
                    );
                    m.leaving = true;
                    self.rebalance = true;
                }
            }
            Event::Savepoint { id, stop } => self.savepoints.push_back((id, stop)),
            Event::Parallelism { workers } => {
                tracing::info!(
                    from = self.target,
                    to = workers,
                    "target parallelism changed"
                );
                self.target = workers;
                if self.options.local_workers {
                    while self.members.values().filter(|m| !m.leaving).count() < workers {
                        if let Err(e) = self.spawn_local() {
                            tracing::error!(error = %e, "cannot start a worker");
                            break;
                        }
                    }
                }
                self.rebalance = true;
            }
            Event::Worker(_) | Event::Lost { .. } => {}
        }
    }

    /// Removes a lost member; returns whether it owned partitions.
    pub(super) fn forget(&mut self, id: WorkerId, reason: &str) -> bool {
        if self.members.remove(&id).is_none() {
            return false;
        }
        self.hub.remove(id);
        self.metrics.workers_lost.inc();
        let before = self.owner.len();
        self.owner.retain(|_, w| *w != id);
        tracing::warn!(worker = id, %reason, partitions = before - self.owner.len(), "worker lost");
        before != self.owner.len()
    }

    /// The workers that should own partitions: the first `target` members not leaving.
    pub(super) fn active_workers(&self) -> Vec<WorkerId> {
        self.members
            .iter()
            .filter(|(_, m)| !m.leaving)
            .map(|(&id, _)| id)
            .take(self.target)
            .collect()
    }

    /// Gives partitions without an owner to workers, starting at the checkpointed offsets;
    /// notes whether owned partitions should move (they move at the next barrier).
    pub(super) fn assign_unowned(&mut self) -> Result<(), RunError> {
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut per_worker: BTreeMap<WorkerId, Offsets> = BTreeMap::new();
        for (tp, &w) in &plan {
            if self.owner.contains_key(tp) {
                continue;
            }
            let start = get_offset(&self.offsets, &tp.topic, tp.partition)
                .ok_or_else(|| RunError::NoStartOffset(tp.clone()))?;
            set_offset(
                per_worker.entry(w).or_default(),
                &tp.topic,
                tp.partition,
                start,
            );
        }
        self.give(per_worker, "assigning");
        if self.owner.iter().any(|(tp, w)| plan.get(tp) != Some(w)) {
            self.rebalance = true;
        }
        Ok(())
    }

    /// Tells each worker to start reading these partitions at these offsets and records it as
    /// their owner (a worker that is gone owns nothing: the partitions stay unowned).
    pub(super) fn give(&mut self, per_worker: BTreeMap<WorkerId, Offsets>, what: &str) {
        for (w, partitions) in per_worker {
            tracing::info!(worker = w, partitions = %render_offsets(&partitions), "{what}");
            let tps: Vec<TopicPartition> = partitions
                .iter()
                .flat_map(|(topic, parts)| {
                    parts.keys().map(|&partition| TopicPartition {
                        topic: topic.clone(),
                        partition,
                    })
                })
                .collect();
            if self.hub.send(w, ToWorker::Assign { partitions }).is_ok() {
                self.owner.extend(tps.into_iter().map(|tp| (tp, w)));
            }
        }
    }

    /// Sends Stop to every member and waits for local threads and for remote workers to
    /// fetch it.
    pub(super) async fn stop_workers(&mut self) {
        for &id in self.members.keys() {
            let _ = self.hub.send(id, ToWorker::Stop);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.hub.all_delivered() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for m in self.members.values_mut() {
            if let Some(t) = m.thread.take() {
                let _ = blocking(move || t.join()).await;
            }
        }
    }

    /// Finds partitions not seen before and assigns them; new partitions of a topic that
    /// was already checkpointed start at `earliest`.
    pub(super) async fn discover(&mut self) -> Result<(), RunError> {
        let found = {
            let (admin, config) = (self.admin.clone(), self.config.clone());
            blocking(move || {
                source::discover_partitions(&admin, &config.topics, |t| config.reads(t))
                    .map_err(|e| source::with_cause(&admin, e))
            })
            .await
            .map_err(|message| RunError::Kafka {
                during: "metadata".into(),
                message,
            })?
        };
        let new: Vec<TopicPartition> = found
            .into_iter()
            .filter(|tp| !self.partitions.contains(tp))
            .collect();
        if new.is_empty() {
            self.discovered = true;
            return Ok(());
        }
        for tp in &new {
            if get_offset(&self.offsets, &tp.topic, tp.partition).is_none() {
                let known = self.offsets.contains_key(&tp.topic)
                    || (self.config.topic_pattern.is_some() && self.discovered);
                let policy = start_policy(known, self.config.starting_offsets);
                let (admin, tp2) = (self.admin.clone(), tp.clone());
                let start = blocking(move || source::resolve_start(&admin, &tp2, policy))
                    .await
                    .map_err(|e| RunError::Kafka {
                        during: format!("start offset of {}/{}", tp.topic, tp.partition),
                        message: e.to_string(),
                    })?;
                set_offset(&mut self.offsets, &tp.topic, tp.partition, start);
            }
            self.partitions.insert(tp.clone());
        }
        self.discovered = true;
        self.assign_unowned()?;
        self.publish_current();
        Ok(())
    }

    /// After an aborted checkpoint every worker drops what it read since the last completed
    /// checkpoint and starts again from it, with a fresh assignment.
    pub(super) fn reset_all(&mut self) {
        self.owner.retain(|_, w| self.members.contains_key(w));
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut per_worker: BTreeMap<WorkerId, Offsets> = self
            .members
            .keys()
            .map(|&id| (id, Offsets::new()))
            .collect();
        for (tp, &w) in &plan {
            if let Some(o) = get_offset(&self.offsets, &tp.topic, tp.partition) {
                set_offset(per_worker.entry(w).or_default(), &tp.topic, tp.partition, o);
            }
        }
        self.owner = plan;
        for (w, partitions) in per_worker {
            if self.hub.send(w, ToWorker::Reset { partitions }).is_err() {
                self.owner.retain(|_, o| *o != w);
            }
        }
        self.rebalance = false;
    }

    /// Right after the acknowledgements: partitions released at this barrier start at their
    /// new owners from the offsets their old owners reached.
    pub(super) fn move_partitions(
        &mut self,
        plan: &BTreeMap<TopicPartition, WorkerId>,
        offsets: &Offsets,
        barrier_sent: Instant,
    ) {
        let mut per_worker: BTreeMap<WorkerId, Offsets> = BTreeMap::new();
        let moved: Vec<TopicPartition> = self
            .owner
            .iter()
            .filter(|(tp, w)| plan.get(*tp) != Some(*w))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in moved {
            self.owner.remove(&tp);
            if let (Some(&to), Some(o)) =
                (plan.get(&tp), get_offset(offsets, &tp.topic, tp.partition))
            {
                set_offset(
                    per_worker.entry(to).or_default(),
                    &tp.topic,
                    tp.partition,
                    o,
                );
            }
        }
        if per_worker.is_empty() {
            self.rebalance = false;
            return;
        }
        let moved: usize = per_worker
            .values()
            .map(|o| o.values().map(BTreeMap::len).sum::<usize>())
            .sum();
        let span = tracing::info_span!("rescale", partitions = moved, workers = per_worker.len());
        let _entered = span.enter();
        self.give(per_worker, "moving partitions");
        let pause = barrier_sent.elapsed();
        self.metrics.rescale_pause.observe(pause.as_secs_f64());
        tracing::info!(pause_ms = pause.as_secs_f64() * 1000.0, "partitions moved");
        self.rebalance = false;
    }

    /// Local workers beyond the target and leaving workers that own nothing are stopped.
    pub(super) fn retire_idle(&mut self) {
        let active: BTreeSet<WorkerId> = self.active_workers().into_iter().collect();
        let owning: BTreeSet<WorkerId> = self.owner.values().copied().collect();
        let idle: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                !owning.contains(id) && (m.leaving || (m.thread.is_some() && !active.contains(id)))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            tracing::info!(worker = id, "stopping idle worker");
            let _ = self.hub.send(id, ToWorker::Stop);
            // A local thread ends after its current poll (nothing waits for it); a remote
            // worker fetches its Stop and its link expires when it stops polling.
            if self.members.remove(&id).is_some_and(|m| m.thread.is_some()) {
                self.hub.remove(id);
            }
        }
    }
}
