//! The `CompactionPolicy` controller: observe (the referenced pipeline, the policy's finished
//! Jobs and their pods' reports) → decide (pure: children, status, Events) → act (server-side
//! apply of the ConfigMap, CronJob and run Job; Events; status last).

pub mod act;
pub mod decide;
pub mod observe;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    batch::v1::{CronJob, Job},
    core::v1::ConfigMap,
};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use tidewater_crds::CompactionPolicy;

use crate::kube_io::{Context, Error, error_policy, log_outcome, measured, report_malformed};
use decide::POLICY_LABEL;

/// One reconcile of a (possibly malformed) policy, measured.
#[tracing::instrument(skip(guard, ctx), fields(policy = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<CompactionPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    measured(&ctx.metrics, async {
        let policy = match &guard.0 {
            Ok(p) => p,
            Err(invalid) => {
                return Ok(report_malformed::<CompactionPolicy>(
                    &ctx,
                    &invalid.metadata,
                    &invalid.error,
                )
                .await);
            }
        };
        let obs = observe::observe(policy, &ctx).await?;
        let decision = decide::decide(policy, &obs);
        act::act(policy, decision, &ctx).await
    })
    .await
}

/// Runs the CompactionPolicy controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let policies: Api<DeserializeGuard<CompactionPolicy>> = Api::all(client.clone());
    Controller::new(policies, watcher::Config::default())
        // Jobs of the CronJob are owned by it, not by the policy: map them by label.
        .watches(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(POLICY_LABEL),
            |job| {
                let policy = job.labels().get(POLICY_LABEL)?.clone();
                Some(ObjectRef::new(&policy).within(&job.namespace()?))
            },
        )
        .owns(
            Api::<CronJob>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<ConfigMap>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move { log_outcome(result.map(|(obj, _)| obj)) })
        .await;
}
