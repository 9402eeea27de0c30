//! The desired child objects of a pipeline. No client: a pure function from the pipeline and
//! the deployment decision to objects with deterministic names (`<name>-<component>`), owned
//! by the pipeline, hardened (non-root, read-only root filesystem, no capabilities).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use tidewater_crds::{
    IngestionPipeline,
    deploy::{SecretEnv, SecretMount},
};

use crate::{pipeline::spec_change::runtime_fingerprint, pod_otel::PodOtlp};

/// Port of the coordinator's API (workers, /v1, probes, /metrics).
pub const API_PORT: i32 = 9464;
/// Port of a worker's /metrics and probes.
pub const WORKER_PORT: i32 = 9465;
/// Where the rendered pipeline file is mounted.
pub const CONFIG_DIR: &str = "/etc/tidewater";
/// Pod annotation holding the fingerprint of the runtime-relevant spec.
pub const FINGERPRINT_ANNOTATION: &str = "tidewater.dev/spec-fingerprint";
/// Unprivileged user the runtime runs as.
const RUN_AS: i64 = 65_532;

/// Where the coordinator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The newest checkpoint (also what a restarted pod does).
    Latest,
    /// A savepoint path.
    Savepoint(String),
    /// No state.
    Fresh,
}

/// What to deploy: decided by the reconciler, rendered here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// Runtime image.
    pub image: String,
    /// Start mode of the coordinator.
    pub start: Start,
    /// Worker replicas (0 when suspended).
    pub workers: i32,
    /// Whether the coordinator runs (false when suspended).
    pub running: bool,
    /// Where the pods send OpenTelemetry.
    pub otlp: PodOtlp,
}

/// Names of the children of pipeline `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// ConfigMap with the rendered pipeline.
    pub config: String,
    /// Coordinator Deployment and Service.
    pub coordinator: String,
    /// Worker StatefulSet, its headless Service and PodDisruptionBudget.
    pub workers: String,
}

impl Names {
    /// The deterministic names.
    pub fn of(name: &str) -> Self {
        Self {
            config: format!("{name}-config"),
            coordinator: format!("{name}-coordinator"),
            workers: format!("{name}-workers"),
        }
    }
}

/// Every child, in the order they are applied (config and services before the workloads, so
/// pods never start twice).
#[derive(Debug, Clone)]
pub struct Children {
    /// Rendered pipeline.
    pub config: ConfigMap,
    /// Coordinator Service.
    pub coordinator_service: Service,
    /// Worker headless Service.
    pub worker_service: Service,
    /// Worker disruption budget.
    pub pdb: PodDisruptionBudget,
    /// Coordinator.
    pub coordinator: Deployment,
    /// Workers.
    pub workers: StatefulSet,
}

/// Labels that select the pods of one component.
pub fn selector(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "tidewater".into()),
        ("app.kubernetes.io/instance".into(), name.into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// The worker label selector as a string (status `selector`, for the scale subresource).
pub fn worker_selector_string(name: &str) -> String {
    selector(name, "worker")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pipeline file the runtime reads: the resource without status, with its uid (the
/// fencing identity) and without operator-managed metadata.
pub fn render_pipeline(p: &IngestionPipeline) -> String {
    let doc = serde_json::json!({
        "apiVersion": "tidewater.dev/v1alpha1",
        "kind": "IngestionPipeline",
        "metadata": {
            "name": p.name_any(),
            "namespace": p.namespace(),
            "uid": p.metadata.uid,
        },
        "spec": p.spec,
    });
    serde_yaml::to_string(&doc).expect("pipeline serializes")
}

fn meta(p: &IngestionPipeline, name: &str, component: &str) -> ObjectMeta {
    let mut labels = selector(&p.name_any(), component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "tidewater-operator".into(),
    );
    ObjectMeta {
        name: Some(name.into()),
        namespace: p.namespace(),
        labels: Some(labels),
        owner_references: p.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Renders every child.
pub fn children(p: &IngestionPipeline, deploy: &Deploy) -> Children {
    let name = p.name_any();
    let names = Names::of(&name);
    let config = ConfigMap {
        metadata: meta(p, &names.config, "config"),
        data: Some(BTreeMap::from([(
            "pipeline.yaml".to_string(),
            render_pipeline(p),
        )])),
        ..ConfigMap::default()
    };
    let coordinator_service = Service {
        metadata: meta(p, &names.coordinator, "coordinator"),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name, "coordinator")),
            ports: Some(vec![port("http", API_PORT)]),
            // A coordinator finished by a savepoint with stop is not Ready (it processes
            // nothing) but must still answer: the operator reads the savepoint's result there.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let worker_service = Service {
        metadata: meta(p, &names.workers, "worker"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(&name, "worker")),
            ports: Some(vec![port("metrics", WORKER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(p, &names.workers, "worker"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name, "worker")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let mut args: Vec<String> = [
        "coordinator",
        "-f",
        &format!("{CONFIG_DIR}/pipeline.yaml"),
        "--listen",
        &format!("0.0.0.0:{API_PORT}"),
        "--wait-after-finish",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    match &deploy.start {
        Start::Latest => args.push("--from-latest".into()),
        Start::Savepoint(path) => args.extend(["--from-savepoint".into(), path.clone()]),
        Start::Fresh => args.push("--fresh".into()),
    }
    if p.spec.allow_non_restored_state {
        args.push("--allow-non-restored-state".into());
    }
    let coordinator = Deployment {
        metadata: meta(p, &names.coordinator, "coordinator"),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::from(deploy.running)),
            selector: LabelSelector {
                match_labels: Some(selector(&name, "coordinator")),
                ..LabelSelector::default()
            },
            // Never two coordinators of one pipeline by design (fencing would still hold).
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: pod(p, deploy, "coordinator", args, API_PORT),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let worker_args = vec![
        "worker".to_string(),
        "--coordinator".into(),
        format!(
            "http://{}.{}.svc:{API_PORT}",
            names.coordinator,
            p.namespace().unwrap_or_else(|| "default".into())
        ),
        "--metrics-addr".into(),
        format!("0.0.0.0:{WORKER_PORT}"),
    ];
    let workers = StatefulSet {
        metadata: meta(p, &names.workers, "worker"),
        spec: Some(StatefulSetSpec {
            replicas: Some(if deploy.running { deploy.workers } else { 0 }),
            service_name: Some(names.workers.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector(&name, "worker")),
                ..LabelSelector::default()
            },
            template: pod(p, deploy, "worker", worker_args, WORKER_PORT),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    Children {
        config,
        coordinator_service,
        worker_service,
        pdb,
        coordinator,
        workers,
    }
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::Int(number)),
        ..ServicePort::default()
    }
}

fn probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn pod(
    p: &IngestionPipeline,
    deploy: &Deploy,
    component: &str,
    args: Vec<String>,
    http_port: i32,
) -> PodTemplateSpec {
    let name = p.name_any();
    let overrides = p.spec.pod_template.clone().unwrap_or_default();
    let mut labels = overrides.labels.clone();
    labels.extend(selector(&name, component));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(FINGERPRINT_ANNOTATION.into(), runtime_fingerprint(&p.spec));
    let mut env: Vec<EnvVar> = overrides
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..EnvVar::default()
        })
        .collect();
    env.extend(secret_env_vars(&p.spec.secret_env));
    let taken = env.iter().map(|v| v.name.clone()).collect();
    env.extend(
        deploy
            .otlp
            .env(&name, &p.namespace().unwrap_or_default(), component, &taken),
    );
    if component == "worker" {
        env.push(crate::pod_otel::pod_name_var("TIDEWATER_WORKER_NAME"));
    }
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::of(&name).config,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let (secret_volumes, secret_mounts) = secret_volumes(&p.spec.secret_mounts);
    volumes.extend(secret_volumes);
    mounts.extend(secret_mounts);
    let resources = p.spec.resources.clone().unwrap_or_default();
    let container = Container {
        name: "tidewater".into(),
        image: Some(deploy.image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: http_port,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", http_port, 10)),
        readiness_probe: Some(probe("/readyz", http_port, 2)),
        resources: if component == "worker" {
            resources.workers
        } else {
            resources.coordinator
        },
        volume_mounts: Some(mounts),
        working_dir: Some("/tmp".into()),
        security_context: Some(container_security()),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            service_account_name: p.spec.service_account_name.clone(),
            automount_service_account_token: Some(false),
            node_selector: (!overrides.node_selector.is_empty()).then_some(overrides.node_selector),
            tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
            affinity: overrides.affinity,
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                .then_some(overrides.image_pull_secrets),
            priority_class_name: overrides.priority_class_name,
            // A worker's SIGTERM hands its partitions over at the next checkpoint.
            termination_grace_period_seconds: Some(60),
            security_context: Some(pod_security()),
            ..PodSpec::default()
        }),
    }
}

/// Environment variables filled from Secret keys.
pub fn secret_env_vars(secret_env: &[SecretEnv]) -> Vec<EnvVar> {
    secret_env
        .iter()
        .map(|s| EnvVar {
            name: s.name.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s.secret_name.clone(),
                    key: s.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect()
}

/// Secrets mounted read-only as files: volumes `secret-N` and their mounts.
pub fn secret_volumes(mounts: &[SecretMount]) -> (Vec<Volume>, Vec<VolumeMount>) {
    mounts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let vol = format!("secret-{i}");
            (
                Volume {
                    name: vol.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(s.secret_name.clone()),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                VolumeMount {
                    name: vol,
                    mount_path: s.mount_path.clone(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            )
        })
        .unzip()
}

/// The runtime container's hardening: no privilege escalation, read-only root filesystem,
/// non-root, no capabilities.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The runtime pod's security context: an unprivileged user and `RuntimeDefault` seccomp.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}
