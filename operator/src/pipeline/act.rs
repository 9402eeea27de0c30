//! Carries out a pipeline's decision: the rendered children in dependency order, the one job
//! action, Events, the status (conditional on the observed resourceVersion), the finalizer.

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::Service,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use tidewater_crds::IngestionPipeline;

use crate::{
    job_client::JobClient,
    kube_io::{Context, Error, apply, apply_status, namespace_of, publish},
    pipeline::decide::{Decision, FINALIZER, JobAction},
};

/// Carries out a decision: children, job action, Events, status (last).
pub async fn act(
    p: &IngestionPipeline,
    mut d: Decision,
    job: Option<&JobClient>,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = namespace_of(p);
    if let Some(c) = &d.children {
        // Config and Services first, workloads last: pods start once, with their config.
        apply(&ctx.client, &ns, &c.config).await?;
        apply::<Service>(&ctx.client, &ns, &c.coordinator_service).await?;
        apply::<Service>(&ctx.client, &ns, &c.worker_service).await?;
        apply::<PodDisruptionBudget>(&ctx.client, &ns, &c.pdb).await?;
        apply::<Deployment>(&ctx.client, &ns, &c.coordinator).await?;
        apply::<StatefulSet>(&ctx.client, &ns, &c.workers).await?;
    }
    match (d.action, job) {
        (Some(JobAction::Savepoint { stop }), Some(job)) => match job.trigger_savepoint(stop).await
        {
            Ok(id) => {
                if let Some(op) = d.status.operation.as_mut() {
                    op.savepoint_id = Some(id);
                }
            }
            Err(e) => d.notes.push(crate::pipeline::decide::Note {
                reason: "SavepointRequestFailed".into(),
                message: e.to_string(),
                warning: true,
            }),
        },
        (Some(JobAction::Parallelism(n)), Some(job)) => {
            if let Err(e) = job.set_parallelism(n).await {
                d.notes.push(crate::pipeline::decide::Note {
                    reason: "RescaleFailed".into(),
                    message: e.to_string(),
                    warning: true,
                });
            }
        }
        _ => {}
    }
    for note in &d.notes {
        publish(ctx, p, &note.reason, &note.message, note.warning).await;
    }
    let applied = apply_status(ctx, p, &d.status, p.resource_version()).await?;
    // The finalizer last: removing it lets a deletion complete. The list is written with the
    // resourceVersion the status write returned (the observed one is stale by then), so a
    // concurrent change to the finalizers is refused instead of overwritten.
    if let Some(want) = d.finalizer {
        let mut finalizers: Vec<String> = applied
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if want {
            finalizers.push(FINALIZER.into());
        }
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": applied.resource_version()}
        });
        let api: Api<IngestionPipeline> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Action::requeue(d.requeue))
}
