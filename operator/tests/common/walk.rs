//! The pipeline reconciler's decisions as a walk: the example fixture, observations of the
//! job, and applying a decision's status as the API server would (no client).

use chrono::{DateTime, Duration as Span, Utc};
use tidewater_crds::{
    IngestionPipeline,
    job_api::{RunState, SavepointState},
    status::LifecycleState,
};
use tidewater_operator::pipeline::{
    children::Start,
    decide::{Decision, JobAction, JobView, Observed, SavepointView, decide},
};

/// The `clicks` pipeline of `tests/fixtures/clicks.yaml`, generation 1, no status.
pub fn fixture() -> IngestionPipeline {
    IngestionPipeline::from_yaml(include_str!("../fixtures/clicks.yaml")).unwrap()
}

/// The walk's start time.
pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A running job with two workers, as the coordinator reports it.
pub fn running_job() -> Option<JobView> {
    Some(JobView {
        state: RunState::Running,
        active_workers: 2,
        last_checkpoint: None,
        total_lag: 42,
        rows_committed: 0,
        partitions: 6,
        tables: vec!["analytics.clicks".into()],
    })
}

/// What a reconcile observes at `now`.
pub fn observe(
    job: Option<JobView>,
    savepoint: Option<SavepointView>,
    now: DateTime<Utc>,
) -> Observed {
    Observed {
        job,
        savepoint,
        savepoint_unreachable: false,
        now,
        default_image: "ghcr.io/tidewater/runtime:0.1.0".into(),
        pods_otlp: Default::default(),
    }
}

/// A completed savepoint at `path`.
pub fn completed(path: &str) -> Option<SavepointView> {
    Some(SavepointView {
        state: SavepointState::Completed,
        path: Some(path.into()),
        reason: None,
    })
}

/// Edits the spec as a user would: the API server bumps the generation.
pub fn edit(p: &mut IngestionPipeline, f: impl FnOnce(&mut tidewater_crds::IngestionPipelineSpec)) {
    f(&mut p.spec);
    p.metadata.generation = Some(p.metadata.generation.unwrap_or(1) + 1);
}

/// Applies a decision as the API server would: the status is written back; a savepoint
/// action gets the id the coordinator answered.
pub fn apply(p: &mut IngestionPipeline, d: &Decision, savepoint_id: &str) {
    let mut status = d.status.clone();
    if let (Some(JobAction::Savepoint { .. }), Some(op)) = (&d.action, status.operation.as_mut()) {
        op.savepoint_id = Some(savepoint_id.into());
    }
    p.status = Some(status);
}

/// The status (`True`/`False`, empty when absent) of condition `kind`.
pub fn condition(d: &Decision, kind: &str) -> String {
    d.status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// The lifecycle state a decision writes.
pub fn lifecycle(d: &Decision) -> LifecycleState {
    d.status.lifecycle_state.unwrap()
}

/// How a decision's deployment starts.
pub fn start(d: &Decision) -> Start {
    d.deploy.as_ref().unwrap().1.start.clone()
}

/// Created → Deploying → Running.
pub fn deployed() -> IngestionPipeline {
    let mut p = fixture();
    let d = decide(&p, &observe(None, None, t0()));
    assert_eq!(lifecycle(&d), LifecycleState::Deploying);
    assert_eq!(start(&d), Start::Latest);
    assert_eq!(d.deploy.as_ref().unwrap().1.workers, 2);
    assert_eq!(condition(&d, "Ready"), "False");
    assert!(d.action.is_none());
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(20)));
    assert_eq!(lifecycle(&d), LifecycleState::Running);
    assert_eq!(condition(&d, "Ready"), "True");
    assert_eq!(d.status.last_stable_spec, d.status.last_reconciled_spec);
    assert_eq!(d.status.lag, Some(42));
    assert_eq!(d.status.parallelism, Some(2));
    assert!(
        d.status
            .selector
            .as_deref()
            .unwrap()
            .contains("app.kubernetes.io/component=worker")
    );
    apply(&mut p, &d, "");
    p
}
