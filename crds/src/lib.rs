//! Tidewater's custom resource types and the contract shared by the operator and the runtime.
//! No I/O here: types, parsers and pure validation only.

pub mod compaction;
pub mod cron;
pub mod deploy;
pub mod format;
pub mod job_api;
pub mod pipeline;
pub mod status;
pub mod types;
pub mod upsert;
pub mod validate;

pub use compaction::{CompactionPolicy, CompactionPolicySpec, CompactionPolicyStatus};
pub use pipeline::{IngestionPipeline, IngestionPipelineSpec, IngestionPipelineStatus};
pub use validate::{FieldError, validate};

/// Every CRD of this crate as (file name, YAML).
pub fn crd_files() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    vec![
        (
            "ingestionpipeline.yaml",
            serde_yaml::to_string(&IngestionPipeline::crd()).expect("CRD serializes"),
        ),
        (
            "compactionpolicy.yaml",
            serde_yaml::to_string(&CompactionPolicy::crd()).expect("CRD serializes"),
        ),
    ]
}

/// Renders every CRD of this crate as one multi-document YAML string.
pub fn render_crds() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
