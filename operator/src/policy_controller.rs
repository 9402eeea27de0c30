//! The `CompactionPolicy` controller: observe (the referenced pipeline, the policy's finished
//! Jobs and their pods' reports) → decide (`maintenance`, pure) → act (server-side apply of
//! the ConfigMap, CronJob and run Job; Events; status last).

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, ObjectReference, Pod},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, events::Recorder, reflector::ObjectRef, watcher},
};
use tidewater_crds::{CompactionPolicy, IngestionPipeline};

use crate::{
    controller::{Context, Error, MANAGER, apply, error_policy, log_run_error, publish},
    maintenance::{self, FinishedRun, POLICY_LABEL},
};

/// Finished Jobs of the policy, oldest first, with their pods' termination messages.
async fn finished_runs(ctx: &Context, ns: &str, policy: &str) -> Result<Vec<FinishedRun>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{POLICY_LABEL}={policy}"));
    let mut out = Vec::new();
    for job in jobs.list(&lp).await?.items {
        let Some(status) = &job.status else { continue };
        let succeeded = status.succeeded.unwrap_or(0) > 0;
        let failed = status.failed.unwrap_or(0) > 0;
        if !succeeded && !failed {
            continue;
        }
        let finished_at = status
            .completion_time
            .as_ref()
            .map(|t| t.0.to_string())
            .or_else(|| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .filter_map(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0.to_string())
                    .max()
            })
            .unwrap_or_default();
        let name = job.name_any();
        let report = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await?
            .items
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .next();
        out.push(FinishedRun {
            job: name,
            succeeded,
            finished_at,
            report,
        });
    }
    out.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
    Ok(out)
}

async fn patch_status(
    ctx: &Context,
    policy: &CompactionPolicy,
    status: &impl serde::Serialize,
) -> Result<(), Error> {
    let api: Api<CompactionPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "tidewater.dev/v1alpha1",
        "kind": "CompactionPolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// One reconcile of a policy.
#[tracing::instrument(skip(guard, ctx), fields(policy = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<CompactionPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let policy = match &guard.0 {
        Ok(p) => p,
        Err(invalid) => {
            let reference = ObjectReference {
                api_version: Some("tidewater.dev/v1alpha1".into()),
                kind: Some("CompactionPolicy".into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            publish(&recorder, &reference, "InvalidSpec", &invalid.error, true).await;
            return Ok(Action::await_change());
        }
    };
    let ns = policy.namespace().unwrap_or_else(|| "default".into());
    let reference = policy.object_ref(&());
    let pipeline = match &policy.spec.pipeline_ref {
        Some(name) => {
            Api::<IngestionPipeline>::namespaced(ctx.client.clone(), &ns)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let errors = tidewater_crds::compaction::validate_policy(&policy.spec);
    let resolved = if errors.is_empty() {
        maintenance::resolve(policy, pipeline.as_ref())
    } else {
        Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    };
    let spec = match resolved {
        Ok(spec) => spec,
        Err(message) => {
            publish(&recorder, &reference, "InvalidSpec", &message, true).await;
            let mut status = policy.status.clone().unwrap_or_default();
            status.observed_generation = policy.metadata.generation;
            status.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "InvalidSpec".into(),
                message,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
                observed_generation: policy.metadata.generation,
            }];
            patch_status(&ctx, policy, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| ctx.default_image.clone());
    let kids = maintenance::children(policy, &spec, &image);
    apply(&ctx.client, &ns, &kids.config).await?;
    let crons: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    match &kids.cron {
        Some(cron) => apply(&ctx.client, &ns, cron).await?,
        None => {
            let name = maintenance::cron_name(&policy.name_any());
            if crons.get_opt(&name).await?.is_some() {
                crons.delete(&name, &DeleteParams::background()).await?;
            }
        }
    }
    if let Some(job) = &kids.run {
        apply(&ctx.client, &ns, job).await?;
        publish(
            &recorder,
            &reference,
            "RunRequested",
            &format!("job {}", job.name_any()),
            false,
        )
        .await;
    }
    let runs = finished_runs(&ctx, &ns, &policy.name_any()).await?;
    let (status, notes) = maintenance::status(policy, &runs, chrono::Utc::now());
    for n in &notes {
        publish(&recorder, &reference, &n.reason, &n.message, n.warning).await;
    }
    patch_status(&ctx, policy, &status).await?;
    // Finished Jobs wake the controller (owned); the schedule's next run refreshes nextRun.
    Ok(Action::requeue(Duration::from_secs(300)))
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
        .for_each(|result| async move {
            if let Err(e) = result {
                log_run_error(&e);
            }
        })
        .await;
}
