//! The reconciler's decision (pure, no client): from the pipeline (spec and status) and what
//! was observed of its job, the children to deploy, the one job action to take, the new
//! status and the Events to emit. Every lifecycle transition of the operator is here.

mod step;

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use tidewater_crds::{
    IngestionPipeline, IngestionPipelineSpec, IngestionPipelineStatus,
    job_api::{RunState, SavepointState},
    status::{
        AutoscalerStatus, CheckpointStatus, LifecycleState, OperationKind, OperationStatus,
        SavepointInfo, SavepointTrigger,
    },
    types::parse_duration,
};

use crate::pipeline::{
    autoscale,
    children::{Children, Deploy, Start, children, worker_selector_string},
};
use step::step;

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
    /// Tables written.
    pub tables: Vec<String>,
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
    /// Where the rendered pods send OpenTelemetry.
    pub pods_otlp: crate::pod_otel::PodOtlp,
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
    /// The children rendered from `deploy`, what `act` applies.
    pub children: Option<Children>,
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
            otlp: self.obs.pods_otlp.clone(),
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
        let now = crate::conditions::time(self.obs.now);
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
    let mut d = decide_lifecycle(p, obs);
    d.children = d.deploy.as_ref().map(|(spec, deploy)| {
        // A rollback renders the last stable spec, not the one stored.
        let mut view = p.clone();
        view.spec = spec.clone();
        children(&view, deploy)
    });
    d
}

fn decide_lifecycle(p: &IngestionPipeline, obs: &Observed) -> Decision {
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
        if !job.tables.is_empty() {
            cx.status.tables.clone_from(&job.tables);
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
        children: None,
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
            children: None,
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
                children: None,
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
            children: None,
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
