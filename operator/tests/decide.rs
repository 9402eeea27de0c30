//! The reconciler's decisions, walked through every lifecycle transition from a YAML fixture:
//! each step feeds the status the previous decision wrote (as the API server would) and what
//! the job reports, and checks the deployment, the job action, the lifecycle and conditions.

mod common;

use chrono::Duration as Span;
use common::walk::{
    apply, completed, condition, deployed, edit, fixture, lifecycle, observe, running_job, start,
    t0,
};
use tidewater_crds::{
    deploy::{JobState, UpgradeMode},
    job_api::{RunState, SavepointState},
    status::{LifecycleState, OperationKind, SavepointTrigger},
};
use tidewater_operator::pipeline::{
    children::Start,
    decide::{JobAction, JobView, SavepointView, decide},
};

#[test]
fn create_deploys_and_becomes_ready() {
    let p = deployed();
    // Nothing changes: steady state keeps the same deployment and does nothing to the job.
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(lifecycle(&d), LifecycleState::Running);
    assert!(d.action.is_none());
    assert_eq!(start(&d), Start::Latest);
}

#[test]
fn an_initial_savepoint_or_stateless_mode_sets_the_first_start() {
    let mut p = fixture();
    edit(&mut p, |s| {
        s.initial_savepoint = Some("s3://lake/sp/sp-1.json".into())
    });
    let d = decide(&p, &observe(None, None, t0()));
    assert_eq!(start(&d), Start::Savepoint("s3://lake/sp/sp-1.json".into()));
    let mut p = fixture();
    edit(&mut p, |s| s.upgrade_mode = UpgradeMode::Stateless);
    let d = decide(&p, &observe(None, None, t0()));
    assert_eq!(start(&d), Start::Fresh);
    apply(&mut p, &d, "");
    // Once running, a restarted pod must not start fresh again.
    let d = decide(&p, &observe(running_job(), None, t0()));
    assert_eq!(start(&d), Start::Latest);
}

#[test]
fn parallelism_changes_rescale_live_without_new_pods() {
    let mut p = deployed();
    edit(&mut p, |s| s.parallelism = 4);
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(d.action, Some(JobAction::Parallelism(4)));
    assert_eq!(d.deploy.as_ref().unwrap().1.workers, 4);
    assert_eq!(start(&d), Start::Latest, "no restart");
    assert_eq!(lifecycle(&d), LifecycleState::Running);
    assert_eq!(d.status.parallelism, Some(4));
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(70)));
    assert!(d.action.is_none(), "applied once");
}

#[test]
fn savepoint_upgrade_stops_with_a_savepoint_then_deploys_from_it() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(d.action, Some(JobAction::Savepoint { stop: true }));
    assert_eq!(lifecycle(&d), LifecycleState::Upgrading);
    assert_eq!(
        condition(&d, "Ready"),
        "False",
        "the new generation is not Ready yet"
    );
    let (deployed_spec, _) = d.deploy.as_ref().unwrap();
    assert_eq!(
        deployed_spec.checkpoint.interval, "10s",
        "old spec until the savepoint is done"
    );
    assert_eq!(
        d.status.operation.as_ref().unwrap().kind,
        OperationKind::SavepointUpgrade
    );
    apply(&mut p, &d, "sp-1");

    let pending = Some(SavepointView {
        state: SavepointState::Pending,
        path: None,
        reason: None,
    });
    let d = decide(
        &p,
        &observe(running_job(), pending, t0() + Span::seconds(61)),
    );
    assert!(d.action.is_none() && d.status.operation.is_some());
    apply(&mut p, &d, "");

    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-1.json"),
            t0() + Span::seconds(65),
        ),
    );
    assert_eq!(start(&d), Start::Savepoint("s3://lake/sp/sp-1.json".into()));
    assert_eq!(d.deploy.as_ref().unwrap().0.checkpoint.interval, "30s");
    assert_eq!(lifecycle(&d), LifecycleState::Deploying);
    assert_eq!(
        d.status.savepoints.last().unwrap().trigger,
        SavepointTrigger::Upgrade
    );
    assert!(d.status.operation.is_none());
    apply(&mut p, &d, "");

    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(80)));
    assert_eq!(lifecycle(&d), LifecycleState::Running);
    assert!(
        d.status
            .last_stable_spec
            .as_deref()
            .unwrap()
            .contains("\"30s\"")
    );
}

#[test]
fn last_state_and_stateless_upgrades_redeploy_at_once() {
    for (mode, expected) in [
        (UpgradeMode::LastState, Start::Latest),
        (UpgradeMode::Stateless, Start::Fresh),
    ] {
        let mut p = deployed();
        edit(&mut p, |s| s.upgrade_mode = mode);
        edit(&mut p, |s| {
            s.image = Some("ghcr.io/tidewater/runtime:0.2.0".into())
        });
        let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
        assert!(d.action.is_none(), "{mode:?}");
        assert_eq!(start(&d), expected, "{mode:?}");
        assert_eq!(
            d.deploy.as_ref().unwrap().1.image,
            "ghcr.io/tidewater/runtime:0.2.0"
        );
        assert_eq!(lifecycle(&d), LifecycleState::Deploying);
    }
}

#[test]
fn savepoint_mode_without_a_running_job_upgrades_from_the_newest_checkpoint() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(60)));
    assert!(d.action.is_none());
    assert_eq!(start(&d), Start::Latest);
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "UpgradeWithoutSavepoint" && n.warning)
    );
}

#[test]
fn suspend_takes_a_savepoint_scales_to_zero_and_resume_starts_from_it() {
    let mut p = deployed();
    edit(&mut p, |s| s.state = JobState::Suspended);
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(d.action, Some(JobAction::Savepoint { stop: true }));
    apply(&mut p, &d, "sp-2");
    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-2.json"),
            t0() + Span::seconds(62),
        ),
    );
    assert_eq!(lifecycle(&d), LifecycleState::Suspended);
    assert!(!d.deploy.as_ref().unwrap().1.running);
    assert_eq!(d.status.parallelism, Some(0));
    assert_eq!(condition(&d, "Stopped"), "True");
    apply(&mut p, &d, "");
    // Stays suspended.
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(90)));
    assert_eq!(lifecycle(&d), LifecycleState::Suspended);
    assert!(!d.deploy.as_ref().unwrap().1.running && d.action.is_none());
    apply(&mut p, &d, "");

    edit(&mut p, |s| s.state = JobState::Running);
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(120)));
    assert_eq!(start(&d), Start::Savepoint("s3://lake/sp/sp-2.json".into()));
    assert!(d.deploy.as_ref().unwrap().1.running);
    assert_eq!(lifecycle(&d), LifecycleState::Deploying);
    assert_eq!(condition(&d, "Stopped"), "False");
}

#[test]
fn nonces_act_exactly_once_per_new_value() {
    let mut p = deployed();
    edit(&mut p, |s| s.savepoint_trigger_nonce = Some(7));
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(d.action, Some(JobAction::Savepoint { stop: false }));
    apply(&mut p, &d, "sp-3");
    let d = decide(
        &p,
        &observe(
            running_job(),
            completed("s3://lake/sp/sp-3.json"),
            t0() + Span::seconds(62),
        ),
    );
    assert_eq!(
        d.status.savepoints.last().unwrap().trigger,
        SavepointTrigger::Manual
    );
    assert_eq!(d.status.last_savepoint_trigger_nonce, Some(7));
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(70)));
    assert!(d.action.is_none(), "the same nonce does nothing again");

    edit(&mut p, |s| s.restart_nonce = Some(1));
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(80)));
    assert_eq!(
        d.action,
        Some(JobAction::Savepoint { stop: true }),
        "restart as upgradeMode says"
    );
    assert_eq!(d.status.last_restart_nonce, Some(1));
}

#[test]
fn an_upgrade_not_ready_in_time_rolls_back_from_its_savepoint() {
    let mut p = deployed();
    edit(&mut p, |s| {
        s.image = Some("ghcr.io/tidewater/runtime:broken".into())
    });
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-4");
    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-4.json"),
            t0() + Span::seconds(65),
        ),
    );
    apply(&mut p, &d, "");
    // Still not running 4 minutes later: keep waiting.
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(65 + 240)));
    assert_eq!(lifecycle(&d), LifecycleState::Deploying);
    apply(&mut p, &d, "");
    // Past upgradeTimeout (5m): back to the last stable spec, from the upgrade savepoint.
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(65 + 301)));
    assert_eq!(lifecycle(&d), LifecycleState::RollingBack);
    assert_eq!(start(&d), Start::Savepoint("s3://lake/sp/sp-4.json".into()));
    assert_eq!(
        d.deploy.as_ref().unwrap().1.image,
        "ghcr.io/tidewater/runtime:0.1.0"
    );
    assert_eq!(condition(&d, "Degraded"), "True");
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "RollingBack" && n.warning)
    );
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(400)));
    assert_eq!(lifecycle(&d), LifecycleState::Running);
    assert_eq!(
        condition(&d, "Degraded"),
        "True",
        "the failed upgrade stays visible"
    );
    assert!(
        d.action.is_none(),
        "the failed spec is not retried by itself"
    );
    assert_eq!(
        d.deploy.as_ref().unwrap().1.image,
        "ghcr.io/tidewater/runtime:0.1.0"
    );
    apply(&mut p, &d, "");
    // A new spec is tried again.
    edit(&mut p, |s| {
        s.image = Some("ghcr.io/tidewater/runtime:0.2.1".into())
    });
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(500)));
    assert_eq!(d.action, Some(JobAction::Savepoint { stop: true }));
}

#[test]
fn a_failed_savepoint_is_reported_and_retried() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-5");
    let failed = Some(SavepointView {
        state: SavepointState::Failed,
        path: None,
        reason: Some("checkpoint 9 aborted: worker 2 lost".into()),
    });
    let d = decide(
        &p,
        &observe(running_job(), failed, t0() + Span::seconds(62)),
    );
    assert_eq!(condition(&d, "Degraded"), "True");
    assert!(d.status.operation.is_none());
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "SavepointFailed" && n.message.contains("worker 2 lost"))
    );
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(75)));
    assert_eq!(
        d.action,
        Some(JobAction::Savepoint { stop: true }),
        "tried again"
    );
}

#[test]
fn savepoint_history_is_bounded() {
    let mut p = deployed();
    edit(&mut p, |s| s.savepoint_history.max_count = 2);
    for n in 1..=4 {
        edit(&mut p, |s| s.savepoint_trigger_nonce = Some(n));
        let d = decide(
            &p,
            &observe(running_job(), None, t0() + Span::seconds(60 * n)),
        );
        apply(&mut p, &d, &format!("sp-{n}"));
        let d = decide(
            &p,
            &observe(
                running_job(),
                completed(&format!("s3://lake/sp/sp-{n}.json")),
                t0() + Span::seconds(60 * n + 5),
            ),
        );
        apply(&mut p, &d, "");
    }
    let ids: Vec<String> = p
        .status
        .unwrap()
        .savepoints
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["sp-3", "sp-4"]);
}

#[test]
fn the_autoscaler_rescales_live_within_bounds_after_its_window() {
    let mut p = deployed();
    edit(&mut p, |s| {
        s.autoscaler = Some(tidewater_crds::deploy::Autoscaler {
            enabled: true,
            min_parallelism: 1,
            max_parallelism: Some(5),
            target_lag_seconds: 60,
            stabilization_window: "1m".into(),
        });
    });
    let job = |rows: u64, lag: i64| {
        Some(JobView {
            state: RunState::Running,
            active_workers: 2,
            last_checkpoint: None,
            total_lag: lag,
            rows_committed: rows,
            partitions: 6,
            tables: vec!["analytics.clicks".into()],
        })
    };
    let mut action = None;
    for (i, (rows, lag)) in [
        (0u64, 3_000_000i64),
        (200_000, 3_000_000),
        (800_000, 2_900_000),
        (1_400_000, 2_800_000),
    ]
    .into_iter()
    .enumerate()
    {
        let at = t0() + Span::seconds(100 + 30 * i64::try_from(i).unwrap());
        let d = decide(&p, &observe(job(rows, lag), None, at));
        action = action.or(d.action);
        if d.action.is_some() {
            // Applied live: workers scale, no savepoint, bounded by maxParallelism.
            assert_eq!(d.action, Some(JobAction::Parallelism(5)));
            assert_eq!(d.deploy.as_ref().unwrap().1.workers, 5);
            assert_eq!(d.status.parallelism, Some(5));
            assert!(d.notes.iter().any(|n| n.reason == "Autoscaled"));
        }
        apply(&mut p, &d, "");
    }
    assert_eq!(
        action,
        Some(JobAction::Parallelism(5)),
        "decided after the window"
    );
    // The new parallelism sticks (no return to spec.parallelism on the next reconcile).
    let d = decide(
        &p,
        &observe(job(2_000_000, 2_700_000), None, t0() + Span::seconds(300)),
    );
    assert_eq!(d.deploy.as_ref().unwrap().1.workers, 5);
}

#[test]
fn deletion_takes_a_final_savepoint_then_lets_go() {
    use tidewater_operator::pipeline::decide::FINALIZER;
    let mut p = deployed();
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    assert_eq!(d.finalizer, None, "no finalizer unless savepointOnDeletion");
    edit(&mut p, |s| s.savepoint_on_deletion = true);
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(70)));
    assert_eq!(d.finalizer, Some(true));
    apply(&mut p, &d, "");
    p.metadata.finalizers = Some(vec![FINALIZER.into()]);

    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).unwrap(),
    ));
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(80)));
    assert_eq!(d.action, Some(JobAction::Savepoint { stop: true }));
    assert_eq!(lifecycle(&d), LifecycleState::Deleting);
    assert!(d.deploy.is_none() && d.finalizer.is_none());
    apply(&mut p, &d, "sp-final");
    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-final.json"),
            t0() + Span::seconds(85),
        ),
    );
    assert_eq!(d.finalizer, Some(false), "deletion proceeds");
    assert_eq!(
        d.status.savepoints.last().unwrap().trigger,
        SavepointTrigger::Deletion
    );

    // Without a running job the deletion must not hang.
    let mut q = deployed();
    edit(&mut q, |s| s.savepoint_on_deletion = true);
    q.metadata.finalizers = Some(vec![FINALIZER.into()]);
    q.metadata.deletion_timestamp = p.metadata.deletion_timestamp.clone();
    let d = decide(&q, &observe(None, None, t0() + Span::seconds(90)));
    assert_eq!(d.finalizer, Some(false));
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "DeletedWithoutSavepoint" && n.warning)
    );
}

#[test]
fn an_unobservable_savepoint_is_waited_for_not_taken_again() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-7");
    // The coordinator did not answer (a restarted operator, a blip, a pod being replaced).
    let mut blind = observe(None, None, t0() + Span::seconds(62));
    blind.savepoint_unreachable = true;
    let d = decide(&p, &blind);
    assert!(d.action.is_none(), "no second savepoint: {:?}", d.action);
    assert_eq!(
        d.status
            .operation
            .as_ref()
            .and_then(|o| o.savepoint_id.as_deref()),
        Some("sp-7"),
        "still waiting for the same savepoint"
    );
    assert_ne!(condition(&d, "Degraded"), "True");
    apply(&mut p, &d, "");
    let d = decide(
        &p,
        &observe(
            running_job(),
            completed("s3://lake/sp/sp-7.json"),
            t0() + Span::seconds(66),
        ),
    );
    assert_eq!(start(&d), Start::Savepoint("s3://lake/sp/sp-7.json".into()));
}

#[test]
fn a_savepoint_unobservable_beyond_the_upgrade_timeout_is_given_up() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-8");
    let timeout = p.spec.upgrade_timeout.clone();
    let secs = i64::try_from(
        tidewater_crds::types::parse_duration(&timeout)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let mut blind = observe(None, None, t0() + Span::seconds(61 + secs));
    blind.savepoint_unreachable = true;
    let d = decide(&p, &blind);
    assert!(d.status.operation.is_none(), "given up after {timeout}");
    assert_eq!(condition(&d, "Degraded"), "True");
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == "SavepointFailed" && n.message.contains("did not answer")),
        "{:?}",
        d.notes
    );
}
