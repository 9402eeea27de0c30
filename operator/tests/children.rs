//! The rendered children of the fixture pipeline: names, ownership, hardening, start
//! arguments, scaling and secret wiring.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use tidewater_crds::IngestionPipeline;
use tidewater_operator::{
    pipeline::children::{Deploy, FINGERPRINT_ANNOTATION, Start, children, render_pipeline},
    pod_otel::PodOtlp,
};

fn fixture() -> IngestionPipeline {
    IngestionPipeline::from_yaml(include_str!("fixtures/clicks.yaml")).unwrap()
}

fn deploy(start: Start, running: bool) -> Deploy {
    Deploy {
        image: "ghcr.io/tidewater/runtime:0.1.0".into(),
        start,
        workers: 2,
        running,
        otlp: PodOtlp {
            endpoint: Some("http://otel-collector.monitoring:4317".into()),
            protocol: Some("grpc".into()),
        },
    }
}

fn env_value(t: &PodTemplateSpec, name: &str) -> Option<String> {
    let env = t.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    env.iter().find(|v| v.name == name).map(|v| {
        v.value
            .clone()
            .unwrap_or_else(|| "(from a reference)".into())
    })
}

#[test]
fn pods_export_opentelemetry_to_the_operators_collector_unless_their_env_says_otherwise() {
    let mut p = fixture();
    let c = children(&p, &deploy(Start::Latest, true));
    let worker = &c.workers.spec.as_ref().unwrap().template;
    let coordinator = &c.coordinator.spec.as_ref().unwrap().template;
    for (t, component) in [(worker, "worker"), (coordinator, "coordinator")] {
        assert_eq!(
            env_value(t, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://otel-collector.monitoring:4317")
        );
        assert_eq!(
            env_value(t, "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
            Some("grpc")
        );
        assert_eq!(env_value(t, "OTEL_SERVICE_NAME").as_deref(), Some("clicks"));
        let attrs = env_value(t, "OTEL_RESOURCE_ATTRIBUTES").unwrap();
        assert!(
            attrs.contains(&format!("tidewater.component={component}"))
                && attrs.contains("k8s.pod.name=$(TIDEWATER_POD_NAME)"),
            "{attrs}"
        );
        let env = t.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        let pos = |n: &str| env.iter().position(|v| v.name == n).unwrap();
        assert!(
            pos("TIDEWATER_POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"),
            "$(TIDEWATER_POD_NAME) expands only if defined earlier"
        );
    }
    // The pipeline's own env wins, and is not set twice.
    let mut overrides = p.spec.pod_template.clone().unwrap_or_default();
    overrides.env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        "http://mine:4318".into(),
    );
    p.spec.pod_template = Some(overrides);
    let c = children(&p, &deploy(Start::Latest, true));
    let t = &c.workers.spec.as_ref().unwrap().template;
    assert_eq!(
        env_value(t, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://mine:4318")
    );
    let env = t.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    assert_eq!(
        env.iter()
            .filter(|v| v.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .count(),
        1
    );
}

fn args(t: &PodTemplateSpec) -> Vec<String> {
    t.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

#[test]
fn names_ownership_and_hardening() {
    let p = fixture();
    let c = children(&p, &deploy(Start::Latest, true));
    assert_eq!(c.config.metadata.name.as_deref(), Some("clicks-config"));
    assert_eq!(
        c.coordinator.metadata.name.as_deref(),
        Some("clicks-coordinator")
    );
    assert_eq!(
        c.coordinator_service.metadata.name.as_deref(),
        Some("clicks-coordinator")
    );
    assert_eq!(
        c.coordinator_service
            .spec
            .as_ref()
            .unwrap()
            .publish_not_ready_addresses,
        Some(true),
        "a finished coordinator (not Ready) still answers for its savepoint"
    );
    assert_eq!(c.workers.metadata.name.as_deref(), Some("clicks-workers"));
    assert_eq!(
        c.worker_service
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None")
    );
    for meta in [
        &c.config.metadata,
        &c.coordinator.metadata,
        &c.workers.metadata,
        &c.pdb.metadata,
    ] {
        let owner = &meta.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("IngestionPipeline", "clicks")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("analytics"));
    }
    for t in [
        &c.coordinator.spec.as_ref().unwrap().template,
        &c.workers.spec.as_ref().unwrap().template,
    ] {
        let pod = t.spec.as_ref().unwrap();
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        let env = pod.containers[0].env.as_ref().unwrap();
        let key = env
            .iter()
            .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
            .unwrap();
        let secret = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("lake-credentials", "secret-access-key")
        );
        assert!(env.iter().all(|e| e.value.as_deref() != Some("s3cr3t")));
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/var/run/secrets/catalog" && m.read_only == Some(true))
        );
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/tidewater"));
    }
    let rendered = render_pipeline(&p);
    assert!(
        rendered.contains("uid: 6f1c2a4e-0000-4000-8000-000000000001"),
        "{rendered}"
    );
    assert!(!rendered.contains("status"));
    // The rendered file is a valid pipeline for the runtime.
    let back = IngestionPipeline::from_yaml(&rendered).unwrap();
    assert_eq!(back.spec, p.spec);
    assert_eq!(back.pipeline_uid(), "6f1c2a4e-0000-4000-8000-000000000001");
}

#[test]
fn start_arguments_and_replicas() {
    let p = fixture();
    let c = children(
        &p,
        &deploy(Start::Savepoint("s3://lake/sp/sp-1.json".into()), true),
    );
    let a = args(&c.coordinator.spec.as_ref().unwrap().template);
    assert_eq!(a[0], "coordinator");
    assert!(
        a.windows(2)
            .any(|w| w == ["--from-savepoint", "s3://lake/sp/sp-1.json"]),
        "{a:?}"
    );
    assert!(a.contains(&"--wait-after-finish".to_string()));
    let w = args(&c.workers.spec.as_ref().unwrap().template);
    assert_eq!(
        w[..3],
        [
            "worker",
            "--coordinator",
            "http://clicks-coordinator.analytics.svc:9464"
        ]
    );
    assert_eq!(c.workers.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(c.coordinator.spec.as_ref().unwrap().replicas, Some(1));
    for (start, flag) in [(Start::Latest, "--from-latest"), (Start::Fresh, "--fresh")] {
        let c = children(&p, &deploy(start, true));
        assert!(args(&c.coordinator.spec.as_ref().unwrap().template).contains(&flag.to_string()));
    }
    let suspended = children(&p, &deploy(Start::Latest, false));
    assert_eq!(suspended.workers.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(
        suspended.coordinator.spec.as_ref().unwrap().replicas,
        Some(0)
    );
}

#[test]
fn a_rescale_does_not_change_the_pod_templates() {
    let p = fixture();
    let mut scaled = p.clone();
    scaled.spec.parallelism = 5;
    let a = children(&p, &deploy(Start::Latest, true));
    let b = children(&scaled, &deploy(Start::Latest, true));
    let fp = |t: &PodTemplateSpec| {
        t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[FINGERPRINT_ANNOTATION].clone()
    };
    assert_eq!(
        fp(&a.workers.spec.as_ref().unwrap().template),
        fp(&b.workers.spec.as_ref().unwrap().template)
    );
    let mut changed = p.clone();
    changed.spec.checkpoint.interval = "1m".into();
    let c = children(&changed, &deploy(Start::Latest, true));
    assert_ne!(
        fp(&a.workers.spec.as_ref().unwrap().template),
        fp(&c.workers.spec.as_ref().unwrap().template)
    );
}
