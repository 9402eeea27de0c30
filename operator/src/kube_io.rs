//! Kubernetes I/O shared by both controllers: the context, server-side apply of children and
//! of status, Events, reporting a malformed or invalid object, the reconcile timing metric,
//! the error policy and the controller-loop log. No decisions here.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::metrics::{CategoryLabels, Metrics};

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

/// Shared state of the controllers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Runtime image when a spec names none.
    pub default_image: String,
    /// Where the rendered pods send OpenTelemetry.
    pub pods_otlp: crate::pod_otel::PodOtlp,
    /// How coordinators are reached.
    pub address: Address,
    /// Event reporter.
    pub reporter: Reporter,
    /// Reconcile metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// An Event recorder as this operator.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

/// The namespace of a namespaced object (`default` when the object names none).
pub fn namespace_of(obj: &impl ResourceExt) -> String {
    obj.namespace().unwrap_or_else(|| "default".into())
}

/// Server-side apply of one namespaced child, forced, as the operator's field manager.
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + Clone
        + DeserializeOwned
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

/// Server-side apply of `status` on `obj`, as the operator's field manager. With
/// `resource_version` the write is refused (409) when the object changed since that read.
pub async fn apply_status<K>(
    ctx: &Context,
    obj: &K,
    status: &impl Serialize,
    resource_version: Option<String>,
) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace_of(obj));
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    Ok(api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?)
}

/// Publishes an Event on `obj` (failures to publish are logged, never fatal).
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    reason: &str,
    note: &str,
    warning: bool,
) {
    publish_on(&ctx.recorder(), &obj.object_ref(&()), reason, note, warning).await;
}

async fn publish_on(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
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

/// An object of kind `K` that could not be read as one (its spec does not deserialize): an
/// `InvalidSpec` Event naming the error, and nothing else until it changes.
pub async fn report_malformed<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    meta: &ObjectMeta,
    error: &str,
) -> Action {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    publish_on(&ctx.recorder(), &reference, "InvalidSpec", error, true).await;
    Action::await_change()
}

/// Reports a spec that cannot run as written: an `InvalidSpec` Event and `status` (which
/// carries the `Degraded` condition); what runs is not touched.
pub async fn report_invalid<K>(
    ctx: &Context,
    obj: &K,
    message: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    publish(ctx, obj, "InvalidSpec", message, true).await;
    apply_status(ctx, obj, status, None).await?;
    Ok(())
}

/// Runs one reconcile and records it: count, duration, failures by category.
pub async fn measured(
    metrics: &Metrics,
    reconcile: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    metrics.reconciles.inc();
    let result = reconcile.await;
    metrics.duration.observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        metrics
            .failures
            .get_or_create(&CategoryLabels {
                category: e.category().into(),
            })
            .inc();
    }
    result
}

/// Logs one outcome of a controller loop: a reconciled object at debug, errors as
/// [`log_run_error`] does.
pub fn log_outcome<K: std::fmt::Display, Q: std::fmt::Display>(
    result: Result<K, kube::runtime::controller::Error<Error, Q>>,
) {
    match result {
        Ok(obj) => tracing::debug!(object = %obj, "reconciled"),
        Err(e) => log_run_error(&e),
    }
}

/// Logs what the controller loop reports: expected outcomes (a conflict retried at once, an
/// object deleted before its turn) at debug, the rest as warnings.
pub fn log_run_error<Q: std::fmt::Display>(e: &kube::runtime::controller::Error<Error, Q>) {
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
        tracing::info!(%error, "the object changed while reconciling; again");
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(%error, category = error.category(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}
