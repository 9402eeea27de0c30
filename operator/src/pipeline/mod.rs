//! The IngestionPipeline controller: observe (I/O: the stored object, the coordinator's API)
//! → decide (pure, `decide`, rendering `children`) → act (server-side apply of the children in
//! dependency order, the one job action, Events, status last). A malformed object is reported,
//! never stalls the controller.

pub mod act;
pub mod autoscale;
pub mod children;
pub mod decide;
pub mod observe;
pub mod spec_change;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::ConfigMap,
};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, watcher},
};
use tidewater_crds::IngestionPipeline;

use crate::{
    conditions,
    kube_io::{
        Context, Error, error_policy, log_outcome, measured, namespace_of, report_invalid,
        report_malformed,
    },
};
use act::act;
use decide::decide;
use observe::observe;

/// One reconcile of a (possibly malformed) pipeline, measured.
#[tracing::instrument(skip(guard, ctx), fields(pipeline = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<IngestionPipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    measured(&ctx.metrics, reconcile_inner(&guard, &ctx)).await
}

async fn reconcile_inner(
    guard: &DeserializeGuard<IngestionPipeline>,
    ctx: &Context,
) -> Result<Action, Error> {
    let p = match &guard.0 {
        Ok(p) => p,
        // Nothing to reconcile until it is fixed; say why where users look.
        Err(invalid) => {
            return Ok(report_malformed::<IngestionPipeline>(
                ctx,
                &invalid.metadata,
                &invalid.error,
            )
            .await);
        }
    };
    // Validate and decide on the stored object, not the watch cache: right after this
    // operator's own status write the cache can still hold the previous status, and a
    // decision on it would repeat an operation (a second savepoint). The status write is
    // conditional on this read's resourceVersion, so a concurrent change makes it a
    // conflict, decided again at once.
    let api: Api<IngestionPipeline> = Api::namespaced(ctx.client.clone(), &namespace_of(p));
    let Some(p) = api.get_opt(&p.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let errors = tidewater_crds::validate(&p.spec);
    if !errors.is_empty() {
        // What schema and CEL rules cannot check: a `Degraded` condition naming the fields,
        // an Event, and no change to what runs.
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut status = p.status.clone().unwrap_or_default();
        status.observed_generation = p.metadata.generation;
        status.conditions.retain(|c| c.type_ != "Degraded");
        status.conditions.push(conditions::invalid_spec(
            &message,
            p.metadata.generation,
            chrono::Utc::now(),
        ));
        report_invalid(ctx, &p, &message, &status).await?;
        return Ok(Action::await_change());
    }
    let (obs, job) = observe(&p, ctx).await;
    let decision = decide(&p, &obs);
    act(&p, decision, job.as_ref(), ctx).await
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let pipelines: Api<DeserializeGuard<IngestionPipeline>> = Api::all(client.clone());
    Controller::new(pipelines, watcher::Config::default())
        .owns(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<ConfigMap>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move { log_outcome(result.map(|(obj, _)| obj)) })
        .await;
}
