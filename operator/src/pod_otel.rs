//! OpenTelemetry settings for the pods the operator renders (pure): the collector the operator
//! was told about (`--pods-otlp-endpoint`, `--pods-otlp-protocol`), and a service name and
//! resource attributes that say which pipeline, namespace, pod and component a span or metric
//! comes from. A variable the pod template already sets is left to the user.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};

/// The pod's own name, for `k8s.pod.name` (`$(…)` in later variables expands it).
pub const POD_NAME_ENV: &str = "TIDEWATER_POD_NAME";

/// Where the rendered pods send OTLP; nothing when `endpoint` is unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOtlp {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` of the pods.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` of the pods (`grpc` or `http/protobuf`).
    pub protocol: Option<String>,
}

/// `name` set to the pod's own name (the downward API's `metadata.name`).
pub fn pod_name_var(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

impl PodOtlp {
    /// The variables for one pod of `service` (the pipeline or policy name) in `namespace`,
    /// leaving out every name in `taken` (set by the user's pod template or secretEnv).
    pub fn env(
        &self,
        service: &str,
        namespace: &str,
        component: &str,
        taken: &BTreeSet<String>,
    ) -> Vec<EnvVar> {
        let plain = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            ..EnvVar::default()
        };
        let mut env = vec![pod_name_var(POD_NAME_ENV)];
        env.push(plain("OTEL_SERVICE_NAME", service.into()));
        env.push(plain(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "k8s.namespace.name={namespace},k8s.pod.name=$({POD_NAME_ENV}),\
                 tidewater.component={component}"
            ),
        ));
        if let Some(endpoint) = &self.endpoint {
            env.push(plain("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
        }
        if let Some(protocol) = &self.protocol {
            env.push(plain("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.clone()));
        }
        env.retain(|v| !taken.contains(&v.name));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.as_deref())
    }

    #[test]
    fn names_the_pod_and_points_at_the_collector() {
        let otlp = PodOtlp {
            endpoint: Some("http://otel-collector.monitoring:4317".into()),
            protocol: Some("grpc".into()),
        };
        let env = otlp.env("clicks", "data", "worker", &BTreeSet::new());
        assert_eq!(env[0].name, POD_NAME_ENV, "defined before it is referenced");
        assert_eq!(value(&env, "OTEL_SERVICE_NAME"), Some("clicks"));
        assert_eq!(
            value(&env, "OTEL_RESOURCE_ATTRIBUTES"),
            Some(
                "k8s.namespace.name=data,k8s.pod.name=$(TIDEWATER_POD_NAME),tidewater.component=worker"
            )
        );
        assert_eq!(
            value(&env, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://otel-collector.monitoring:4317")
        );
        assert_eq!(value(&env, "OTEL_EXPORTER_OTLP_PROTOCOL"), Some("grpc"));
    }

    #[test]
    fn no_endpoint_without_one_and_the_users_variables_win() {
        let env = PodOtlp::default().env(
            "clicks",
            "data",
            "coordinator",
            &BTreeSet::from(["OTEL_SERVICE_NAME".to_string()]),
        );
        assert_eq!(value(&env, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
        assert_eq!(value(&env, "OTEL_SERVICE_NAME"), None);
        assert!(value(&env, "OTEL_RESOURCE_ATTRIBUTES").is_some());
    }
}
