//! What a spec change means for the running job, decided before anything is done (pure):
//! nothing, a live rescale, or an upgrade that needs new pods. Lifecycle fields (`state`,
//! nonces) are compared by the reconciler itself.

use tidewater_crds::IngestionPipelineSpec;

/// Spec fields that never need new pods: parallelism is changed live, the others only steer
/// the operator.
const OPERATOR_ONLY: &[&str] = &[
    "parallelism",
    "autoscaler",
    "savepointHistory",
    "upgradeTimeout",
    "upgradeMode",
    "state",
    "savepointTriggerNonce",
    "restartNonce",
    "initialSavepoint",
    "savepointOnDeletion",
];

/// The part of a spec the runtime pods depend on.
pub fn runtime_view(spec: &IngestionPipelineSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(spec).expect("spec serializes");
    if let Some(map) = v.as_object_mut() {
        for key in OPERATOR_ONLY {
            map.remove(*key);
        }
    }
    v
}

/// A stable fingerprint (FNV-1a 64 over canonical JSON) of [`runtime_view`]: pods whose
/// template carries another fingerprint run an older spec.
pub fn runtime_fingerprint(spec: &IngestionPipelineSpec) -> String {
    let text = runtime_view(spec).to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// How the new spec differs from the one the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecChange {
    /// Nothing the job needs to know.
    Ignore,
    /// Only the parallelism: rescale live.
    Scale {
        /// Old parallelism.
        from: i32,
        /// New parallelism.
        to: i32,
    },
    /// Something the pods depend on: redeploy as `upgradeMode` says.
    Upgrade,
}

/// Classifies `new` against `running` (the last reconciled spec).
pub fn classify(running: &IngestionPipelineSpec, new: &IngestionPipelineSpec) -> SpecChange {
    if runtime_view(running) != runtime_view(new) {
        SpecChange::Upgrade
    } else if running.parallelism != new.parallelism {
        SpecChange::Scale {
            from: running.parallelism,
            to: new.parallelism,
        }
    } else {
        SpecChange::Ignore
    }
}

#[cfg(test)]
mod tests {
    use tidewater_crds::IngestionPipeline;

    use super::*;

    fn spec() -> IngestionPipelineSpec {
        IngestionPipeline::from_yaml(include_str!("../../../examples/clickstream.yaml"))
            .unwrap()
            .spec
    }

    #[test]
    fn classifies_changes() {
        let old = spec();
        assert_eq!(classify(&old, &old), SpecChange::Ignore);
        let mut new = old.clone();
        new.parallelism = 4;
        assert_eq!(classify(&old, &new), SpecChange::Scale { from: 2, to: 4 });
        new.savepoint_trigger_nonce = Some(3);
        new.upgrade_timeout = "10m".into();
        assert_eq!(classify(&old, &new), SpecChange::Scale { from: 2, to: 4 });
        new.sink
            .write_properties
            .insert("write.parquet.compression-codec".into(), "snappy".into());
        assert_eq!(classify(&old, &new), SpecChange::Upgrade);
        let mut image = old.clone();
        image.image = Some("tidewater:2".into());
        assert_eq!(classify(&old, &image), SpecChange::Upgrade);
    }

    #[test]
    fn the_fingerprint_ignores_operator_only_fields() {
        let old = spec();
        let mut new = old.clone();
        new.parallelism = 9;
        new.restart_nonce = Some(1);
        assert_eq!(runtime_fingerprint(&old), runtime_fingerprint(&new));
        new.checkpoint.interval = "30s".into();
        assert_ne!(runtime_fingerprint(&old), runtime_fingerprint(&new));
        assert_eq!(runtime_fingerprint(&old).len(), 16);
    }
}
