//! What a pipeline's reconcile observes besides the object: where its coordinator answers,
//! the job's status and the savepoint of the operation in progress. Never fails: an
//! unreachable coordinator is an observation.

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{Api, ResourceExt, api::ListParams};
use tidewater_crds::IngestionPipeline;

use crate::{
    job_client::JobClient,
    kube_io::{Address, Context, namespace_of},
    pipeline::{
        children::{API_PORT, Names, selector},
        decide::Observed,
    },
};

async fn coordinator_url(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let names = Names::of(name);
    match &ctx.address {
        Address::Dns => Some(format!("http://{}.{ns}.svc:{API_PORT}", names.coordinator)),
        Address::Fixed(url) => Some(url.clone()),
        Address::EndpointSlice => {
            let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
            let lp = ListParams::default()
                .labels(&format!("kubernetes.io/service-name={}", names.coordinator));
            let slices = api.list(&lp).await.ok()?;
            slices
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .find(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .and_then(|e| e.addresses.first().cloned())
                .map(|ip| format!("http://{ip}:{API_PORT}"))
        }
        Address::PodIp => {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            let selector = selector(name, "coordinator")
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let pods = api
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            // The ready pod, else a running one: a coordinator finished by a savepoint with
            // stop is not Ready but still answers for its savepoint.
            let live: Vec<_> = pods
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.status.as_ref())
                .filter(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
                .collect();
            let ready = |s: &k8s_openapi::api::core::v1::PodStatus| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            };
            live.iter()
                .copied()
                .find(|s| ready(s))
                .or_else(|| live.first().copied())
                .and_then(|s| s.pod_ip.clone())
                .map(|ip| format!("http://{ip}:{API_PORT}"))
        }
    }
}

/// Observes the job (never fails: an unreachable coordinator is an observation).
pub async fn observe(p: &IngestionPipeline, ctx: &Context) -> (Observed, Option<JobClient>) {
    let ns = namespace_of(p);
    let client = coordinator_url(ctx, &ns, &p.name_any())
        .await
        .map(JobClient::new);
    let mut obs = Observed {
        job: None,
        savepoint: None,
        savepoint_unreachable: false,
        now: chrono::Utc::now(),
        default_image: ctx.default_image.clone(),
        pods_otlp: ctx.pods_otlp.clone(),
    };
    let op = p.status.as_ref().and_then(|s| s.operation.as_ref());
    let asked = op.and_then(|o| o.savepoint_id.as_deref());
    match (&client, asked) {
        (Some(c), asked) => {
            obs.job = c.status().await.ok();
            if let Some(id) = asked {
                match c.savepoint(id).await {
                    Ok(sp) => obs.savepoint = sp,
                    Err(_) => obs.savepoint_unreachable = true,
                }
            }
        }
        (None, Some(_)) => obs.savepoint_unreachable = true,
        (None, None) => {}
    }
    (obs, client)
}
