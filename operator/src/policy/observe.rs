//! What a policy's reconcile observes besides the policy: the pipeline it names and its
//! finished Jobs with their pods' reports.

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use tidewater_crds::{CompactionPolicy, IngestionPipeline};

use crate::{
    kube_io::{Context, Error, namespace_of},
    policy::decide::{FinishedRun, POLICY_LABEL, PolicyObserved},
};

/// Observes everything `decide` needs.
pub async fn observe(policy: &CompactionPolicy, ctx: &Context) -> Result<PolicyObserved, Error> {
    let ns = namespace_of(policy);
    let pipeline = match &policy.spec.pipeline_ref {
        Some(name) => {
            Api::<IngestionPipeline>::namespaced(ctx.client.clone(), &ns)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    Ok(PolicyObserved {
        pipeline,
        runs: finished_runs(ctx, &ns, &policy.name_any()).await?,
        now: chrono::Utc::now(),
        default_image: ctx.default_image.clone(),
        pods_otlp: ctx.pods_otlp.clone(),
    })
}

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
