//! The IngestionPipeline controller: observe (I/O: the coordinator's API) → decide (pure,
//! `decide`) → act (server-side apply of the children in dependency order, the one job action,
//! Events, status last). A malformed object is reported, never stalls the controller.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, ObjectReference, Pod, Service},
        discovery::v1::EndpointSlice,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde::Serialize;
use tidewater_crds::IngestionPipeline;

use crate::{
    children::{API_PORT, Names, children, selector},
    decide::{Decision, FINALIZER, JobAction, Observed, decide},
    job_client::JobClient,
};

/// Field manager of every server-side apply.
pub const MANAGER: &str = "tidewater-operator";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Label for the failure metric.
    pub fn category(&self) -> &'static str {
        if self.is_conflict() {
            return "conflict";
        }
        match self {
            Self::Kube(_) => "kubernetes",
        }
    }

    /// A write refused because the object changed since it was read (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

/// How the operator reaches coordinators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// Cluster DNS: `http://<name>-coordinator.<ns>.svc:9464`.
    Dns,
    /// The first ready address of the coordinator Service's EndpointSlice (clusters without
    /// DNS or service routing, e.g. tests with only an API server).
    EndpointSlice,
    /// The pod IP of the ready coordinator pod (no Service at all: clusters whose pods have
    /// addresses EndpointSlices refuse, such as the e2e suite's local node on 127.0.0.0/8).
    PodIp,
    /// A fixed URL for every pipeline (tests).
    Fixed(String),
}

/// Shared state of the controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Runtime image when a spec names none.
    pub default_image: String,
    /// How coordinators are reached.
    pub address: Address,
    /// Event reporter.
    pub reporter: Reporter,
    /// Reconcile metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
}

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
async fn observe(p: &IngestionPipeline, ctx: &Context) -> (Observed, Option<JobClient>) {
    let ns = p.namespace().unwrap_or_else(|| "default".into());
    let client = coordinator_url(ctx, &ns, &p.name_any())
        .await
        .map(JobClient::new);
    let mut obs = Observed {
        job: None,
        savepoint: None,
        savepoint_unreachable: false,
        now: chrono::Utc::now(),
        default_image: ctx.default_image.clone(),
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

/// Server-side apply of one namespaced child, forced, as the operator's field manager.
pub(crate) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Carries out a decision: children, job action, Events, status (last).
pub async fn act(
    p: &IngestionPipeline,
    mut d: Decision,
    job: Option<&JobClient>,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = p.namespace().unwrap_or_else(|| "default".into());
    if let Some((spec, deploy)) = &d.deploy {
        let mut view = p.clone();
        view.spec = spec.clone();
        let c = children(&view, deploy);
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
            Err(e) => d.notes.push(crate::decide::Note {
                reason: "SavepointRequestFailed".into(),
                message: e.to_string(),
                warning: true,
            }),
        },
        (Some(JobAction::Parallelism(n)), Some(job)) => {
            if let Err(e) = job.set_parallelism(n).await {
                d.notes.push(crate::decide::Note {
                    reason: "RescaleFailed".into(),
                    message: e.to_string(),
                    warning: true,
                });
            }
        }
        _ => {}
    }
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let reference = p.object_ref(&());
    for note in &d.notes {
        publish(
            &recorder,
            &reference,
            &note.reason,
            &note.message,
            note.warning,
        )
        .await;
    }
    let api: Api<IngestionPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "tidewater.dev/v1alpha1",
        "kind": "IngestionPipeline",
        "metadata": {"resourceVersion": p.resource_version()},
        "status": d.status,
    });
    let applied = api
        .patch_status(
            &p.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
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
        api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Action::requeue(d.requeue))
}

/// Publishes an Event (failures to publish are logged, never fatal).
pub(crate) async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    reason: &str,
    note: &str,
    warning: bool,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

/// One reconcile of a (possibly malformed) pipeline, measured.
#[tracing::instrument(skip(guard, ctx), fields(pipeline = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<IngestionPipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&guard, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .failures
            .get_or_create(&crate::metrics::CategoryLabels {
                category: e.category().into(),
            })
            .inc();
    }
    result
}

async fn reconcile_inner(
    guard: &DeserializeGuard<IngestionPipeline>,
    ctx: &Context,
) -> Result<Action, Error> {
    let p = match &guard.0 {
        Ok(p) => p,
        Err(invalid) => {
            // Nothing to reconcile until it is fixed; say why where users look.
            let reference = ObjectReference {
                api_version: Some("tidewater.dev/v1alpha1".into()),
                kind: Some("IngestionPipeline".into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
            publish(&recorder, &reference, "InvalidSpec", &invalid.error, true).await;
            return Ok(Action::await_change());
        }
    };
    // Validate and decide on the stored object, not the watch cache: right after this
    // operator's own status write the cache can still hold the previous status, and a
    // decision on it would repeat an operation (a second savepoint). The status write is
    // conditional on this read's resourceVersion, so a concurrent change makes it a
    // conflict, decided again at once.
    let api: Api<IngestionPipeline> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    let Some(p) = api.get_opt(&p.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let errors = tidewater_crds::validate(&p.spec);
    if !errors.is_empty() {
        return report_invalid(&p, &errors, ctx).await;
    }
    let (obs, job) = observe(&p, ctx).await;
    let decision = decide(&p, &obs);
    act(&p, decision, job.as_ref(), ctx).await
}

/// What schema and CEL rules cannot check: a `Degraded` condition naming the fields, an
/// Event, and no change to what runs.
async fn report_invalid(
    p: &IngestionPipeline,
    errors: &[tidewater_crds::FieldError],
    ctx: &Context,
) -> Result<Action, Error> {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = p.status.clone().unwrap_or_default();
    status.observed_generation = p.metadata.generation;
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    status.conditions.retain(|c| c.type_ != "Degraded");
    status.conditions.push(Condition {
        type_: "Degraded".into(),
        status: "True".into(),
        reason: "InvalidSpec".into(),
        message: message.clone(),
        last_transition_time: now,
        observed_generation: p.metadata.generation,
    });
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    publish(&recorder, &p.object_ref(&()), "InvalidSpec", &message, true).await;
    let api: Api<IngestionPipeline> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "tidewater.dev/v1alpha1",
        "kind": "IngestionPipeline",
        "status": status,
    });
    api.patch_status(
        &p.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(Action::await_change())
}

/// Logs what the controller loop reports: expected outcomes (a conflict retried at once, an
/// object deleted before its turn) at debug, the rest as warnings.
pub(crate) fn log_run_error<Q: std::fmt::Display>(e: &kube::runtime::controller::Error<Error, Q>) {
    use kube::runtime::controller::Error as Run;
    match e {
        Run::ReconcilerFailed(err, obj) if err.is_conflict() => {
            tracing::debug!(object = %obj, "conflict; decided again")
        }
        Run::ObjectNotFound(obj) => tracing::debug!(object = %obj, "gone before its reconcile"),
        other => tracing::warn!(error = %other, "reconcile error"),
    }
}

/// Transient failures are retried with a delay; nothing crash-loops.
pub fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        // Someone (a user, or this operator's previous write) changed the object since it
        // was read: decide again on the new version.
        tracing::info!(%error, "the pipeline changed while reconciling; again");
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(%error, category = error.category(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
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
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(pipeline = %obj.name, "reconciled"),
                Err(e) => log_run_error(&e),
            }
        })
        .await;
}
