//! The reconciler's decision (pure, no client): from the pipeline (spec and status) and what
//! was observed of its job, the children to deploy, the one job action to take, the new
//! status and the Events to emit. Every lifecycle transition of the operator is here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use tidewater_crds::{
    IngestionPipeline, IngestionPipelineSpec, IngestionPipelineStatus,
    deploy::{JobState, UpgradeMode},
    job_api::{RunState, SavepointState},
    status::{
        AutoscalerStatus, CheckpointStatus, LifecycleState, OperationKind, OperationStatus,
        SavepointInfo, SavepointTrigger,
    },
    types::parse_duration,
};

use crate::{
    autoscale,
    children::{Deploy, Start, worker_selector_string},
    spec_change::{SpecChange, classify},
};

/// What the coordinator reported (`GET /v1/status`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobView {
    /// Where the coordinator run is.
    pub state: RunState,
    /// Workers owning partitions.
    pub active_workers: i32,
    /// Newest completed checkpoint.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Total lag.
    pub total_lag: i64,
    /// Rows committed by this coordinator run.
    pub rows_committed: u64,
    /// Partitions read.
    pub partitions: i32,
}

/// The savepoint of the operation in progress (`GET /v1/savepoints/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointView {
    /// Where the savepoint is.
    pub state: SavepointState,
    /// Path once completed.
    pub path: Option<String>,
    /// Reason when failed.
    pub reason: Option<String>,
}

/// Everything observed for one reconcile.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The job's status, when the coordinator answered.
    pub job: Option<JobView>,
    /// The operation's savepoint, when one was requested and the coordinator knows it.
    pub savepoint: Option<SavepointView>,
    /// The operation's savepoint could not be asked about (no ready coordinator, or no
    /// answer): unknown, not lost; only a coordinator that answers "not found" has lost it.
    pub savepoint_unreachable: bool,
    /// Now.
    pub now: DateTime<Utc>,
    /// Runtime image when the spec names none.
    pub default_image: String,
}

/// An action on the running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// `POST /v1/savepoints`; the id goes into `status.operation.savepointId`.
    Savepoint {
        /// Stop the job after it.
        stop: bool,
    },
    /// `POST /v1/parallelism`.
    Parallelism(i32),
}

/// A Kubernetes Event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Short CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Warning instead of Normal.
    pub warning: bool,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub struct Decision {
    /// Children to apply: rendered from this spec with this deployment (a rollback renders the
    /// last stable spec).
    pub deploy: Option<(IngestionPipelineSpec, Deploy)>,
    /// The job action to take before the status is written.
    pub action: Option<JobAction>,
    /// The new status.
    pub status: IngestionPipelineStatus,
    /// Events.
    pub notes: Vec<Note>,
    /// When to look again.
    pub requeue: Duration,
    /// The deletion finalizer: `Some(true)` ensure it is present, `Some(false)` remove it
    /// (deletion may proceed), `None` leave it.
    pub finalizer: Option<bool>,
}

/// Finalizer that holds a deletion until the final savepoint is taken.
pub const FINALIZER: &str = "tidewater.dev/final-savepoint";

const QUICK: Duration = Duration::from_secs(2);
const STEADY: Duration = Duration::from_secs(15);

fn start_text(start: &Start) -> String {
    match start {
        Start::Latest => "latest".into(),
        Start::Fresh => "fresh".into(),
        Start::Savepoint(p) => p.clone(),
    }
}

fn start_of(text: Option<&str>) -> Start {
    match text {
        None | Some("latest") => Start::Latest,
        Some("fresh") => Start::Fresh,
        Some(path) => Start::Savepoint(path.into()),
    }
}

struct Ctx<'a> {
    p: &'a IngestionPipeline,
    obs: &'a Observed,
    status: IngestionPipelineStatus,
    notes: Vec<Note>,
}

impl Ctx<'_> {
    fn note(&mut self, reason: &str, message: String, warning: bool) {
        self.notes.push(Note {
            reason: reason.into(),
            message,
            warning,
        });
    }

    fn deploy(&self, spec: &IngestionPipelineSpec, start: Start, running: bool) -> Deploy {
        // With the autoscaler on, the spec's parallelism is the initial one.
        let autoscaled = spec.autoscaler.as_ref().is_some_and(|a| a.enabled);
        let workers = match self.status.parallelism {
            Some(n) if autoscaled && n > 0 => n,
            _ => spec.parallelism,
        };
        Deploy {
            image: spec
                .image
                .clone()
                .unwrap_or_else(|| self.obs.default_image.clone()),
            start,
            workers,
            running,
        }
    }

    /// One autoscaler step; returns the parallelism to apply now.
    fn autoscale(&mut self, spec: &IngestionPipelineSpec, current: i32) -> Option<i32> {
        let a = spec.autoscaler.as_ref().filter(|a| a.enabled)?;
        let job = self.obs.job.as_ref()?;
        let memory = self.status.autoscaler.clone().unwrap_or_default();
        let memory = autoscale::Memory {
            rows: memory.rows,
            at_ms: memory.sampled_at_ms,
            capacity: memory.rows_per_second_per_worker,
            wanted: memory.wanted_parallelism.zip(memory.wanted_since_ms),
        };
        let sample = autoscale::Sample {
            rows: job.rows_committed,
            lag: job.total_lag,
            now_ms: self.obs.now.timestamp_millis(),
            parallelism: current,
            partitions: job.partitions,
        };
        let policy = autoscale::Policy {
            min: a.min_parallelism,
            max: a.max_parallelism.unwrap_or(i32::MAX),
            target: Duration::from_secs(u64::from(a.target_lag_seconds)),
            window: parse_duration(&a.stabilization_window).unwrap_or(Duration::ZERO),
        };
        let (apply, next) = autoscale::recommend(&memory, sample, policy);
        self.status.autoscaler = Some(AutoscalerStatus {
            rows: next.rows,
            sampled_at_ms: next.at_ms,
            rows_per_second_per_worker: next.capacity,
            wanted_parallelism: next.wanted.map(|w| w.0),
            wanted_since_ms: next.wanted.map(|w| w.1),
        });
        apply
    }

    /// Sets a condition, keeping `lastTransitionTime` when the status does not change.
    fn condition(&mut self, kind: &str, on: bool, reason: &str, message: &str) {
        let status = if on { "True" } else { "False" };
        let now = Time(
            k8s_openapi::jiff::Timestamp::from_millisecond(self.obs.now.timestamp_millis())
                .expect("time in range"),
        );
        let generation = self.p.metadata.generation;
        let conditions = &mut self.status.conditions;
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.observed_generation = generation;
            }
            None => conditions.push(Condition {
                type_: kind.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now,
                observed_generation: generation,
            }),
        }
    }

    fn since(&self, kind: &str) -> Option<Duration> {
        let c = self.status.conditions.iter().find(|c| c.type_ == kind)?;
        let since_ms = self.obs.now.timestamp_millis() - c.last_transition_time.0.as_millisecond();
        u64::try_from(since_ms).ok().map(Duration::from_millis)
    }

    fn push_savepoint(&mut self, id: &str, path: &str, trigger: SavepointTrigger) {
        let spec = &self.p.spec;
        self.status.savepoints.push(SavepointInfo {
            id: id.into(),
            path: path.into(),
            time: self.obs.now.to_rfc3339(),
            trigger,
        });
        let max_age = parse_duration(&spec.savepoint_history.max_age).unwrap_or(Duration::MAX);
        let now = self.obs.now;
        self.status.savepoints.retain(|s| {
            DateTime::parse_from_rfc3339(&s.time)
                .ok()
                .and_then(|t| (now - t.with_timezone(&Utc)).to_std().ok())
                .is_none_or(|age| age <= max_age)
        });
        let max = spec.savepoint_history.max_count as usize;
        let excess = self.status.savepoints.len().saturating_sub(max);
        self.status.savepoints.drain(..excess);
    }

    /// How long the operation has been in flight.
    fn operation_age(&self, op: &OperationStatus) -> Option<Duration> {
        let started = DateTime::parse_from_rfc3339(&op.started_at).ok()?;
        (self.obs.now - started.with_timezone(&Utc)).to_std().ok()
    }

    fn operation(&mut self, kind: OperationKind) {
        self.status.operation = Some(OperationStatus {
            kind,
            savepoint_id: None,
            started_at: self.obs.now.to_rfc3339(),
        });
    }
}

fn spec_json(spec: &IngestionPipelineSpec) -> String {
    serde_json::to_string(spec).expect("spec serializes")
}

fn parse_spec(json: Option<&String>) -> Option<IngestionPipelineSpec> {
    json.and_then(|j| serde_json::from_str(j).ok())
}

/// Decides one reconcile of `p`.
pub fn decide(p: &IngestionPipeline, obs: &Observed) -> Decision {
    let mut cx = Ctx {
        p,
        obs,
        status: p.status.clone().unwrap_or_default(),
        notes: Vec::new(),
    };
    cx.status.observed_generation = p.metadata.generation;
    cx.status.selector = Some(worker_selector_string(&p.name_any()));
    if let Some(job) = &obs.job {
        cx.status.lag = Some(job.total_lag);
        if job.last_checkpoint.is_some() {
            cx.status.last_checkpoint.clone_from(&job.last_checkpoint);
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        return deleting(cx);
    }
    let has_finalizer = p.finalizers().iter().any(|f| f == FINALIZER);
    let finalizer =
        (p.spec.savepoint_on_deletion != has_finalizer).then_some(p.spec.savepoint_on_deletion);
    let (deploy, action, requeue) = step(&mut cx);
    if let Some((_, d)) = &deploy {
        cx.status.started_from = Some(start_text(&d.start));
        cx.status.parallelism = Some(if d.running { d.workers } else { 0 });
    }
    Decision {
        deploy,
        action,
        status: cx.status,
        notes: cx.notes,
        requeue,
        finalizer,
    }
}

/// Deletion: a final savepoint when `savepointOnDeletion` and the job runs, then the
/// finalizer goes and the children are garbage-collected with the pipeline.
fn deleting(mut cx: Ctx<'_>) -> Decision {
    let done = |mut cx: Ctx<'_>| {
        cx.status.operation = None;
        Decision {
            deploy: None,
            action: None,
            status: cx.status,
            notes: cx.notes,
            requeue: STEADY,
            finalizer: Some(false),
        }
    };
    let wants_savepoint =
        cx.p.spec.savepoint_on_deletion && cx.p.finalizers().iter().any(|f| f == FINALIZER);
    if !wants_savepoint {
        return done(cx);
    }
    cx.status.lifecycle_state = Some(LifecycleState::Deleting);
    let op = cx
        .status
        .operation
        .clone()
        .filter(|o| o.kind == OperationKind::Delete);
    let job_running = cx
        .obs
        .job
        .as_ref()
        .is_some_and(|j| j.state == RunState::Running);
    match (op.and_then(|o| o.savepoint_id), &cx.obs.savepoint) {
        (None, _) if job_running => {
            cx.operation(OperationKind::Delete);
            cx.note(
                "Deleting",
                "taking a final savepoint before deletion".into(),
                false,
            );
            Decision {
                deploy: None,
                action: Some(JobAction::Savepoint { stop: true }),
                status: cx.status,
                notes: cx.notes,
                requeue: QUICK,
                finalizer: None,
            }
        }
        (Some(id), Some(sp)) if sp.state == SavepointState::Completed => {
            let path = sp.path.clone().unwrap_or_default();
            cx.push_savepoint(&id, &path, SavepointTrigger::Deletion);
            cx.note(
                "FinalSavepoint",
                format!("savepoint {path}; deleting"),
                false,
            );
            done(cx)
        }
        (Some(_), Some(sp)) if sp.state == SavepointState::Pending => Decision {
            deploy: None,
            action: None,
            status: cx.status,
            notes: cx.notes,
            requeue: QUICK,
            finalizer: None,
        },
        _ => {
            // No running job, or the savepoint failed or was lost: deletion must not hang.
            cx.note(
                "DeletedWithoutSavepoint",
                "no final savepoint could be taken (job not running or savepoint failed); the newest checkpoint remains in the state location".into(),
                true,
            );
            done(cx)
        }
    }
}

type Step = (
    Option<(IngestionPipelineSpec, Deploy)>,
    Option<JobAction>,
    Duration,
);

fn step(cx: &mut Ctx<'_>) -> Step {
    let spec = cx.p.spec.clone();
    if let Some(op) = cx.status.operation.clone() {
        return continue_operation(cx, &op);
    }
    let running_spec = parse_spec(cx.status.last_reconciled_spec.as_ref());
    let lifecycle = cx.status.lifecycle_state.unwrap_or(LifecycleState::Created);
    let job_running = cx
        .obs
        .job
        .as_ref()
        .is_some_and(|j| j.state == RunState::Running);
    let Some(running_spec) = running_spec else {
        // First deployment.
        let start = match (&spec.initial_savepoint, spec.upgrade_mode) {
            (Some(path), _) => Start::Savepoint(path.clone()),
            (None, UpgradeMode::Stateless) => Start::Fresh,
            (None, _) => Start::Latest,
        };
        let running = spec.state == JobState::Running;
        cx.status.last_reconciled_spec = Some(spec_json(&spec));
        cx.status.last_restart_nonce = spec.restart_nonce;
        cx.status.last_savepoint_trigger_nonce = spec.savepoint_trigger_nonce;
        if running {
            cx.status.lifecycle_state = Some(LifecycleState::Deploying);
            cx.condition(
                "Progressing",
                true,
                "Deploying",
                "creating the coordinator and workers",
            );
            cx.condition("Ready", false, "Deploying", "waiting for the job to run");
            cx.condition("Stopped", false, "Running", "");
            cx.note(
                "Deploying",
                format!("deploying from {}", start_text(&start)),
                false,
            );
        } else {
            cx.status.lifecycle_state = Some(LifecycleState::Suspended);
            cx.condition("Stopped", true, "Suspended", "spec.state is suspended");
            cx.condition("Ready", false, "Suspended", "spec.state is suspended");
        }
        let deploy = cx.deploy(&spec, start, running);
        return (Some((spec, deploy)), None, QUICK);
    };
    let current = start_of(cx.status.started_from.as_deref());

    if lifecycle == LifecycleState::Suspended {
        let deploy_spec = running_spec.clone();
        if spec.state == JobState::Running {
            let start = cx
                .status
                .savepoints
                .iter()
                .rev()
                .find(|s| s.trigger == SavepointTrigger::Suspend)
                .map_or(Start::Latest, |s| Start::Savepoint(s.path.clone()));
            cx.status.last_reconciled_spec = Some(spec_json(&spec));
            cx.status.lifecycle_state = Some(LifecycleState::Deploying);
            cx.condition("Stopped", false, "Resumed", "");
            cx.condition(
                "Progressing",
                true,
                "Resuming",
                "resuming from the suspend savepoint",
            );
            cx.note(
                "Resuming",
                format!("resuming from {}", start_text(&start)),
                false,
            );
            let deploy = cx.deploy(&spec, start, true);
            return (Some((spec, deploy)), None, QUICK);
        }
        let deploy = cx.deploy(&deploy_spec, current, false);
        return (Some((deploy_spec, deploy)), None, STEADY);
    }

    // Suspend.
    if spec.state == JobState::Suspended {
        if job_running {
            cx.operation(OperationKind::Suspend);
            cx.condition(
                "Progressing",
                true,
                "Suspending",
                "taking a savepoint with stop",
            );
            cx.note(
                "Suspending",
                "taking a savepoint, then scaling to zero".into(),
                false,
            );
            let deploy = cx.deploy(&running_spec, current, true);
            return (
                Some((running_spec, deploy)),
                Some(JobAction::Savepoint { stop: true }),
                QUICK,
            );
        }
        // No running job to savepoint: scale to zero; it resumes from its newest checkpoint.
        cx.status.lifecycle_state = Some(LifecycleState::Suspended);
        cx.condition(
            "Stopped",
            true,
            "Suspended",
            "suspended without a savepoint: the job was not running",
        );
        cx.condition("Ready", false, "Suspended", "");
        let deploy = cx.deploy(&running_spec, Start::Latest, false);
        return (Some((running_spec, deploy)), None, STEADY);
    }

    let restart =
        spec.restart_nonce.is_some() && spec.restart_nonce != cx.status.last_restart_nonce;
    let rolled_back = cx.status.rolled_back_generation.is_some()
        && cx.status.rolled_back_generation == cx.p.metadata.generation;
    let raw_change = classify(&running_spec, &spec);
    let change = match raw_change {
        // The spec that failed stays failed until it is changed again.
        SpecChange::Upgrade if rolled_back => SpecChange::Ignore,
        other => other,
    };
    if change == SpecChange::Upgrade || restart {
        cx.status.rolled_back_generation = None;
        cx.status.last_restart_nonce = spec.restart_nonce;
        return upgrade(cx, spec, running_spec, job_running);
    }

    // Ready, rollback and steady state.
    let mut deploy_spec = running_spec.clone();
    if raw_change == SpecChange::Ignore && cx.status.last_reconciled_spec != Some(spec_json(&spec))
    {
        // Only operator-side fields changed (nonces, autoscaler, history...): adopt them.
        cx.status.last_reconciled_spec = Some(spec_json(&spec));
        deploy_spec = spec.clone();
    }
    let mut action = None;
    if let SpecChange::Scale { from, to } = change {
        cx.status.last_reconciled_spec = Some(spec_json(&spec));
        // An explicit parallelism wins over the autoscaler's until it decides again.
        cx.status.parallelism = Some(to);
        cx.note(
            "Rescaling",
            format!("parallelism {from} → {to} (live, no restart)"),
            false,
        );
        deploy_spec = spec.clone();
        if job_running {
            action = Some(JobAction::Parallelism(to));
        }
    } else if spec.savepoint_trigger_nonce.is_some()
        && spec.savepoint_trigger_nonce != cx.status.last_savepoint_trigger_nonce
        && job_running
    {
        cx.operation(OperationKind::ManualSavepoint);
        cx.note(
            "SavepointTriggered",
            "savepointTriggerNonce changed".into(),
            false,
        );
        action = Some(JobAction::Savepoint { stop: false });
    }
    let mut start = current;
    match lifecycle {
        LifecycleState::Deploying | LifecycleState::RollingBack | LifecycleState::Upgrading
            if job_running =>
        {
            cx.status.lifecycle_state = Some(LifecycleState::Running);
            cx.status
                .last_stable_spec
                .clone_from(&cx.status.last_reconciled_spec);
            cx.condition(
                "Ready",
                true,
                "Running",
                "the job is running and checkpointing",
            );
            cx.condition("Progressing", false, "Stable", "");
            if !rolled_back {
                cx.condition("Degraded", false, "Healthy", "");
            }
            cx.note("Running", "the job is running".into(), false);
            if start == Start::Fresh {
                // A restarted pod must not start fresh again.
                start = Start::Latest;
            }
        }
        LifecycleState::Deploying => {
            let timeout = parse_duration(&spec.upgrade_timeout).unwrap_or(Duration::MAX);
            let stable = parse_spec(cx.status.last_stable_spec.as_ref());
            let overdue = cx.since("Progressing").is_some_and(|d| d > timeout);
            if let (true, Some(stable)) = (overdue, stable)
                && cx.status.last_stable_spec != cx.status.last_reconciled_spec
            {
                let from = cx
                    .status
                    .savepoints
                    .iter()
                    .rev()
                    .find(|s| s.trigger == SavepointTrigger::Upgrade)
                    .map_or(Start::Latest, |s| Start::Savepoint(s.path.clone()));
                cx.status.lifecycle_state = Some(LifecycleState::RollingBack);
                cx.status
                    .last_reconciled_spec
                    .clone_from(&cx.status.last_stable_spec);
                cx.status.rolled_back_generation = cx.p.metadata.generation;
                cx.condition("Degraded", true, "UpgradeTimedOut", "the upgrade was not ready in time: rolled back to the last stable spec; change the spec to try again");
                cx.condition("Progressing", true, "RollingBack", "");
                cx.note(
                    "RollingBack",
                    format!(
                        "not ready within {}: back to the last stable spec",
                        spec.upgrade_timeout
                    ),
                    true,
                );
                let deploy = cx.deploy(&stable, from, true);
                return (Some((stable, deploy)), None, QUICK);
            }
        }
        _ => {}
    }
    let mut deploy = cx.deploy(&deploy_spec, start, true);
    if action.is_none()
        && job_running
        && cx.status.lifecycle_state == Some(LifecycleState::Running)
        && let Some(n) = cx.autoscale(&spec, deploy.workers)
    {
        let lag = cx.obs.job.as_ref().map_or(0, |j| j.total_lag);
        cx.note(
            "Autoscaled",
            format!("parallelism {} → {n} (lag {lag} records)", deploy.workers),
            false,
        );
        deploy.workers = n;
        action = Some(JobAction::Parallelism(n));
    }
    let requeue = if action.is_some() || cx.status.lifecycle_state != Some(LifecycleState::Running)
    {
        QUICK
    } else {
        STEADY
    };
    (Some((deploy_spec, deploy)), action, requeue)
}

fn upgrade(
    cx: &mut Ctx<'_>,
    spec: IngestionPipelineSpec,
    running_spec: IngestionPipelineSpec,
    job_running: bool,
) -> Step {
    let current = start_of(cx.status.started_from.as_deref());
    match spec.upgrade_mode {
        UpgradeMode::Savepoint if job_running => {
            cx.operation(OperationKind::SavepointUpgrade);
            cx.status.lifecycle_state = Some(LifecycleState::Upgrading);
            cx.condition(
                "Progressing",
                true,
                "Upgrading",
                "taking a savepoint with stop",
            );
            // The new generation is not Ready until it runs (`kubectl wait` right after an
            // apply must wait for the upgrade, not see the old job's Ready).
            cx.condition(
                "Ready",
                false,
                "Upgrading",
                "taking a savepoint of the running job, then deploying the new spec",
            );
            cx.note(
                "Upgrading",
                "spec changed: savepoint with stop, then the new spec from it".into(),
                false,
            );
            let deploy = cx.deploy(&running_spec, current, true);
            (
                Some((running_spec, deploy)),
                Some(JobAction::Savepoint { stop: true }),
                QUICK,
            )
        }
        mode => {
            // last-state, stateless, or savepoint mode without a running job to savepoint
            // (then the newest checkpoint is the best state there is, as Flink does).
            let start = if mode == UpgradeMode::Stateless {
                Start::Fresh
            } else {
                Start::Latest
            };
            if mode == UpgradeMode::Savepoint {
                cx.note(
                    "UpgradeWithoutSavepoint",
                    "the job is not running: upgrading from its newest checkpoint".into(),
                    true,
                );
            }
            cx.status.last_reconciled_spec = Some(spec_json(&spec));
            cx.status.lifecycle_state = Some(LifecycleState::Deploying);
            cx.condition("Progressing", true, "Upgrading", "redeploying");
            cx.condition("Ready", false, "Upgrading", "");
            let deploy = cx.deploy(&spec, start, true);
            (Some((spec, deploy)), None, QUICK)
        }
    }
}

fn continue_operation(cx: &mut Ctx<'_>, op: &OperationStatus) -> Step {
    let spec = cx.p.spec.clone();
    let running_spec =
        parse_spec(cx.status.last_reconciled_spec.as_ref()).unwrap_or_else(|| spec.clone());
    let current = start_of(cx.status.started_from.as_deref());
    let keep = |cx: &Ctx<'_>| {
        let d = cx.deploy(&running_spec, current.clone(), true);
        Some((running_spec.clone(), d))
    };
    let Some(id) = op.savepoint_id.clone() else {
        // The action was decided but never confirmed: ask again.
        let stop = op.kind != OperationKind::ManualSavepoint;
        return (keep(cx), Some(JobAction::Savepoint { stop }), QUICK);
    };
    // A restarting operator, a network blip or a coordinator pod being replaced: ask again
    // rather than take a second savepoint, for at most upgradeTimeout.
    let patience = parse_duration(&spec.upgrade_timeout).unwrap_or(Duration::MAX);
    let unobservable = cx.obs.savepoint.is_none() && cx.obs.savepoint_unreachable;
    if unobservable && cx.operation_age(op).is_none_or(|age| age <= patience) {
        return (keep(cx), None, QUICK);
    }
    let sp = match &cx.obs.savepoint {
        Some(sp) if sp.state == SavepointState::Completed => sp.clone(),
        Some(sp) if sp.state == SavepointState::Pending => return (keep(cx), None, QUICK),
        other => {
            let reason = match other {
                Some(s) => s.reason.clone().unwrap_or_else(|| s.state.to_string()),
                None if unobservable => format!(
                    "the coordinator did not answer for {} (upgradeTimeout)",
                    spec.upgrade_timeout
                ),
                None => "the coordinator no longer knows it (restarted?)".into(),
            };
            cx.status.operation = None;
            cx.condition("Degraded", true, "SavepointFailed", &reason);
            cx.note(
                "SavepointFailed",
                format!("savepoint {id}: {reason}; will retry"),
                true,
            );
            return (keep(cx), None, Duration::from_secs(10));
        }
    };
    let path = sp.path.unwrap_or_default();
    cx.status.operation = None;
    cx.condition("Degraded", false, "Healthy", "");
    match op.kind {
        OperationKind::SavepointUpgrade | OperationKind::Rollback => {
            cx.push_savepoint(&id, &path, SavepointTrigger::Upgrade);
            cx.status.last_reconciled_spec = Some(spec_json(&spec));
            cx.status.lifecycle_state = Some(LifecycleState::Deploying);
            cx.condition("Ready", false, "Upgrading", "");
            cx.note(
                "Upgraded",
                format!("deploying the new spec from savepoint {path}"),
                false,
            );
            let deploy = cx.deploy(&spec, Start::Savepoint(path), true);
            (Some((spec, deploy)), None, QUICK)
        }
        OperationKind::Suspend => {
            cx.push_savepoint(&id, &path, SavepointTrigger::Suspend);
            cx.status.lifecycle_state = Some(LifecycleState::Suspended);
            cx.condition("Stopped", true, "Suspended", "stopped with a savepoint");
            cx.condition("Ready", false, "Suspended", "");
            cx.condition("Progressing", false, "Suspended", "");
            cx.note(
                "Suspended",
                format!("savepoint {path}; scaled to zero"),
                false,
            );
            let deploy = cx.deploy(&running_spec, Start::Savepoint(path), false);
            (Some((running_spec, deploy)), None, STEADY)
        }
        OperationKind::ManualSavepoint => {
            cx.push_savepoint(&id, &path, SavepointTrigger::Manual);
            cx.status.last_savepoint_trigger_nonce = spec.savepoint_trigger_nonce;
            cx.note("SavepointCompleted", format!("savepoint {path}"), false);
            (keep(cx), None, STEADY)
        }
        OperationKind::LastStateUpgrade
        | OperationKind::StatelessUpgrade
        | OperationKind::Delete => (keep(cx), None, QUICK),
    }
}
