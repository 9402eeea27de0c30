//! Tidewater's custom resource types and the contract shared by the operator and the runtime.
//! No I/O here: types, parsers and pure validation only.

pub mod deploy;
pub mod pipeline;
pub mod status;
pub mod types;
pub mod validate;

pub use pipeline::{IngestionPipeline, IngestionPipelineSpec, IngestionPipelineStatus};
pub use validate::{FieldError, validate};

/// Renders every CRD of this crate as one multi-document YAML string.
pub fn render_crds() -> String {
    use kube::CustomResourceExt;
    let crd = IngestionPipeline::crd();
    serde_yaml::to_string(&crd).expect("CRD serializes")
}
