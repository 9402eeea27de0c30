//! How the operator runs a pipeline on Kubernetes: image, resources, pod overrides, upgrade
//! mode, lifecycle nonces, savepoint history, autoscaler and secret references. The runtime
//! ignores these fields; `tidewater run` reads the same resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a spec change that needs new pods is carried out.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Stop with a savepoint, start the new spec from it (exactly once across the upgrade).
    #[default]
    Savepoint,
    /// Start the new spec from the newest checkpoint (no savepoint; also works when the job
    /// is unhealthy).
    LastState,
    /// Start the new spec without state: partitions from `startingOffsets`.
    Stateless,
}

/// Desired state of the job.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Running.
    #[default]
    Running,
    /// Stopped with a savepoint and scaled to zero; `running` again resumes from it.
    Suspended,
}

/// Resources of the two pod kinds.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodResources {
    /// Coordinator container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<ResourceRequirements>,
    /// Resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ResourceRequirements>,
}

/// Overrides applied to the coordinator and worker pods.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Image pull secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Plain environment variables for the runtime container (secrets: `secretEnv`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// An environment variable filled from a Secret key, e.g. `AWS_ACCESS_KEY_ID` for S3 or the
/// variable named by `sink.catalog.auth.secretEnv`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnv {
    /// Variable name in the runtime container.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Secret in the pipeline's namespace.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A Secret mounted read-only as files, e.g. for `sink.catalog.auth.secretFile` or
/// `storage.s3.accessKeyIdFile`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    /// Secret in the pipeline's namespace.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Absolute directory in the runtime container.
    #[schemars(regex(pattern = r"^/"))]
    pub mount_path: String,
}

/// Which savepoints the operator keeps.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointHistory {
    /// Most savepoints kept in the status history.
    #[serde(default = "default_max_count")]
    #[schemars(range(min = 1))]
    pub max_count: u32,
    /// Savepoints older than this are dropped from the history (e.g. `7d`).
    #[serde(default = "default_max_age")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_age: String,
}

impl Default for SavepointHistory {
    fn default() -> Self {
        Self {
            max_count: default_max_count(),
            max_age: default_max_age(),
        }
    }
}

fn default_max_count() -> u32 {
    10
}

fn default_max_age() -> String {
    "7d".into()
}

/// Lag-based autoscaling of the parallelism.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.maxParallelism) || self.minParallelism <= self.maxParallelism",
    "message": "minParallelism must not exceed maxParallelism"
}]))]
pub struct Autoscaler {
    /// Turns the autoscaler on.
    #[serde(default)]
    pub enabled: bool,
    /// Lowest parallelism.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub min_parallelism: i32,
    /// Highest parallelism (also capped by the partition count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallelism: Option<i32>,
    /// Pick the parallelism that drains the current lag within this many seconds.
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag_seconds: u32,
    /// A new parallelism must be wanted this long before it is applied (no flapping).
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub stabilization_window: String,
}

fn one() -> i32 {
    1
}

fn default_target_lag() -> u32 {
    60
}

fn default_window() -> String {
    "5m".into()
}
