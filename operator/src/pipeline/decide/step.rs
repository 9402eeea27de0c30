//! The lifecycle step of a live pipeline: a spec change (in place, rescale, savepoint or stateless
//! upgrade, rollback on a failed upgrade), suspend and resume, manual savepoints and the
//! autoscaler, and the operation in progress carried to its end.

use std::time::Duration;

use super::{Ctx, JobAction, QUICK, STEADY, parse_spec, spec_json, start_of, start_text};
use crate::pipeline::{
    children::{Deploy, Start},
    spec_change::{SpecChange, classify},
};
use tidewater_crds::{
    IngestionPipelineSpec,
    deploy::{JobState, UpgradeMode},
    job_api::{RunState, SavepointState},
    status::{LifecycleState, OperationKind, OperationStatus, SavepointTrigger},
    types::parse_duration,
};

pub(super) type Step = (
    Option<(IngestionPipelineSpec, Deploy)>,
    Option<JobAction>,
    Duration,
);

pub(super) fn step(cx: &mut Ctx<'_>) -> Step {
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
