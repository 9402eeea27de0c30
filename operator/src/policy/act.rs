//! Carries out a policy's decision: the policy file, the CronJob (or its removal), the run
//! Job, Events, the status last.

use k8s_openapi::api::batch::v1::CronJob;
use kube::{Api, ResourceExt, api::DeleteParams, runtime::controller::Action};
use tidewater_crds::CompactionPolicy;

use crate::{
    kube_io::{Context, Error, apply, apply_status, namespace_of, publish, report_invalid},
    metrics::RunLabels,
    policy::decide::PolicyDecision,
};

/// Applies `d` for `policy`.
pub async fn act(
    policy: &CompactionPolicy,
    d: PolicyDecision,
    ctx: &Context,
) -> Result<Action, Error> {
    if let Some(message) = &d.invalid {
        report_invalid(ctx, policy, message, &d.status).await?;
        return Ok(Action::requeue(d.requeue));
    }
    let ns = namespace_of(policy);
    if let Some(kids) = &d.children {
        apply(&ctx.client, &ns, &kids.config).await?;
        if let Some(cron) = &kids.cron {
            apply(&ctx.client, &ns, cron).await?;
        }
        if let Some(job) = &kids.run {
            apply(&ctx.client, &ns, job).await?;
        }
    }
    if let Some(name) = &d.remove_cron {
        let crons: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        if crons.get_opt(name).await?.is_some() {
            crons.delete(name, &DeleteParams::background()).await?;
        }
    }
    let runs = |result: &str| RunLabels {
        namespace: ns.clone(),
        policy: policy.name_any(),
        result: result.into(),
    };
    // Both series exist at 0 from the first reconcile, so the first failure is an increase
    // Prometheus can see.
    for result in ["succeeded", "failed"] {
        let _created = ctx.metrics.maintenance_runs.get_or_create(&runs(result));
    }
    for n in &d.notes {
        if let Some(result) = n.run_result() {
            ctx.metrics
                .maintenance_runs
                .get_or_create(&runs(result))
                .inc();
        }
        publish(ctx, policy, &n.reason, &n.message, n.warning).await;
    }
    apply_status(ctx, policy, &d.status, None).await?;
    Ok(Action::requeue(d.requeue))
}
