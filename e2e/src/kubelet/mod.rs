//! A stand-in kubelet and kube-proxy for the Kubernetes e2e suite, for API servers without
//! nodes: one node whose pods run as podman containers of their images ([`Runner::Podman`]) or
//! as local processes of the runtime binary, each on an address of its own in 127.0.0.0/8. `plan` (pure) turns a pod into a process; [`LocalNode`] binds pods that select
//! it, runs, probes, restarts and terminates them, reports pod status, renews the node lease,
//! and forwards each ClusterIP Service from a local address to its ready pods.

mod plan;
mod pods;
mod proxy;

pub use plan::{ContainerRun, ProcessPlan, Refs, plan, plan_container, selects};
use pods::{Running, discard, report, start_pod, supervise, terminate};
use proxy::{Proxy, serve_services};

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Label a pod must select (and taint it must tolerate) to run on the local node.
pub const NODE_LABEL: &str = "tidewater.dev/e2e-node";

struct NodeState {
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) namespace: String,
    pub(super) root: PathBuf,
    /// The local binary pods run as, or `None` for podman containers of their images.
    pub(super) program: Option<PathBuf>,
    pub(super) pods: HashMap<String, Running>,
    pub(super) proxies: HashMap<String, Proxy>,
    pub(super) next_ip: u32,
    pub(super) next_service_ip: u32,
    pub(super) last_heartbeat: Option<Instant>,
    pub(super) log: std::fs::File,
}

/// How the node runs a pod's container.
#[derive(Debug, Clone)]
pub enum Runner {
    /// As a local process of this binary (the image's entrypoint).
    Processes(PathBuf),
    /// As a podman container of the pod's image, honouring its security context and limits.
    Podman,
}

/// The local node: a thread that plays kubelet and kube-proxy for one namespace.
pub struct LocalNode {
    /// Node name (also the value of [`NODE_LABEL`]).
    pub name: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Client,
}

impl LocalNode {
    /// Registers node `name` and starts serving pods of `namespace` that select it; pods run as
    /// `runner` says, with volumes and logs under `root`.
    pub async fn start(
        client: Client,
        name: &str,
        namespace: &str,
        root: &Path,
        runner: Runner,
    ) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let labels = BTreeMap::from([
            (NODE_LABEL.to_string(), name.to_string()),
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
        ]);
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": [{"key": NODE_LABEL, "value": name, "effect": "NoSchedule"}]},
        }))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .context("create the local node")?;
        let mut state = NodeState {
            name: name.to_string(),
            labels,
            namespace: namespace.to_string(),
            root: root.to_path_buf(),
            program: match runner {
                Runner::Processes(p) => Some(p),
                Runner::Podman => None,
            },
            pods: HashMap::new(),
            proxies: HashMap::new(),
            next_ip: 0,
            next_service_ip: 0,
            last_heartbeat: None,
            log: std::fs::File::create(root.join("kubelet.log"))?,
        };
        heartbeat(&client, &mut state).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c) = (stop.clone(), client.clone());
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::spawn(move || {
            handle.block_on(async move {
                while !s.load(Ordering::Relaxed) {
                    if let Err(e) = tick(&c, &mut state).await {
                        let _ = writeln!(state.log, "tick: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                for run in state.pods.values_mut() {
                    discard(run);
                }
            });
        });
        Ok(Self {
            name: name.to_string(),
            stop,
            thread: Some(thread),
            client,
        })
    }

    /// Node selector and toleration a pod template needs to run here (as JSON for the
    /// pipeline's `spec.podTemplate`).
    pub fn pod_template(&self) -> serde_json::Value {
        json!({
            "nodeSelector": {NODE_LABEL: self.name},
            "tolerations": [{"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        })
    }

    /// Stops every process and removes the node and its lease.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await?
                .map_err(|_| anyhow::anyhow!("local node thread panicked"))?;
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let _ = nodes.delete(&self.name, &DeleteParams::default()).await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let _ = leases.delete(&self.name, &DeleteParams::default()).await;
        Ok(())
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Renews the node lease and reports the node Ready (every 10 s).
async fn heartbeat(client: &Client, state: &mut NodeState) -> Result<()> {
    if state
        .last_heartbeat
        .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
    {
        return Ok(());
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": state.name},
        "spec": {"holderIdentity": state.name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    });
    leases
        .patch(
            &state.name,
            &PatchParams::apply("tidewater-e2e-kubelet").force(),
            &Patch::Apply(lease),
        )
        .await
        .context("renew the node lease")?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let t = now();
    let status = json!({"status": {
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": state.name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "tidewater e2e local node", "lastHeartbeatTime": t, "lastTransitionTime": t}],
        "nodeInfo": {"machineID": "tidewater-e2e", "systemUUID": "tidewater-e2e", "bootID": "tidewater-e2e",
                     "kernelVersion": "", "osImage": "local processes", "containerRuntimeVersion": "local://0",
                     "kubeletVersion": "v1.35.0", "kubeProxyVersion": "v1.35.0",
                     "operatingSystem": "linux", "architecture": std::env::consts::ARCH},
    }});
    nodes
        .patch_status(&state.name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .context("report the node status")?;
    state.last_heartbeat = Some(Instant::now());
    Ok(())
}

/// One pass: lease, Services, bindings, process starts/restarts/terminations, status.
async fn tick(client: &Client, state: &mut NodeState) -> Result<()> {
    heartbeat(client, state).await?;
    let ns = state.namespace.clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default();
    let pods = pods_api.list(&lp).await?.items;
    let mut refs = Refs::default();
    for cm in config_maps.list(&lp).await?.items {
        refs.config_maps
            .insert(cm.name_any(), cm.data.clone().unwrap_or_default());
    }
    for s in secrets.list(&lp).await?.items {
        let data = s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        refs.secrets.insert(s.name_any(), data);
    }
    let services = services.list(&lp).await?.items;
    serve_services(state, &services, &pods, &mut refs).await?;

    for pod in &pods {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        match spec.node_name.as_deref() {
            None if pod.metadata.deletion_timestamp.is_none() && selects(pod, &state.labels) => {
                let binding = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": pod.name_any()},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": state.name},
                });
                // POST pods/NAME/binding answers with a Status, not the Binding.
                let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let bound = pods_api
                    .create_subresource::<_, kube::core::Status>(
                        "binding",
                        &pod.name_any(),
                        &PostParams::default(),
                        &binding,
                    )
                    .await;
                match bound {
                    Ok(status) if status.is_failure() => {
                        writeln!(state.log, "bind {}: {}", pod.name_any(), status.message)?;
                    }
                    Ok(_) => {}
                    Err(e) => writeln!(state.log, "bind {}: {e}", pod.name_any())?,
                }
                continue;
            }
            Some(n) if n == state.name => {}
            _ => continue,
        }
        if pod.metadata.deletion_timestamp.is_some() {
            terminate(client, state, pod, &uid).await?;
            continue;
        }
        if !state.pods.contains_key(&uid) {
            start_pod(state, pod, &uid, &refs)?;
        }
        let Some(run) = state.pods.get_mut(&uid) else {
            continue; // could not be planned; the reason is in kubelet.log
        };
        supervise(run)?;
        report(client, &ns, run).await?;
    }
    let live: Vec<String> = pods.iter().filter_map(|p| p.uid()).collect();
    state.pods.retain(|uid, run| {
        let keep = live.contains(uid);
        if !keep {
            discard(run);
        }
        keep
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_operator::pipeline::children::{Deploy, Start, children};

    /// A pod as a controller would create it from `template`.
    fn pod_of(template: k8s_openapi::api::core::v1::PodTemplateSpec, name: &str) -> Pod {
        let mut metadata = template.metadata.unwrap_or_default();
        metadata.name = Some(name.into());
        metadata.namespace = Some("lake".into());
        Pod {
            metadata,
            spec: template.spec,
            status: None,
        }
    }

    /// The ConfigMap and Secrets the fixture pipeline's pods refer to.
    fn fixture_refs(kids: &tidewater_operator::pipeline::children::Children) -> Refs {
        let mut refs = Refs::default();
        refs.config_maps.insert(
            kids.config.metadata.name.clone().unwrap(),
            kids.config.data.clone().unwrap(),
        );
        refs.secrets.insert(
            "catalog-client".into(),
            BTreeMap::from([("secret".to_string(), b"id:s3cret".to_vec())]),
        );
        refs.secrets.insert(
            "lake-credentials".into(),
            BTreeMap::from([
                ("access-key-id".to_string(), b"AKIA".to_vec()),
                ("secret-access-key".to_string(), b"sk".to_vec()),
            ]),
        );
        refs
    }

    #[test]
    fn operator_pods_become_hardened_podman_containers() {
        let mut p: tidewater_crds::IngestionPipeline =
            serde_yaml::from_str(include_str!("../../../operator/tests/fixtures/clicks.yaml"))
                .unwrap();
        p.metadata.namespace = Some("lake".into());
        p.spec.resources = Some(
            serde_json::from_value(serde_json::json!({
                "coordinator": {"limits": {"memory": "512Mi", "cpu": "500m"}}
            }))
            .unwrap(),
        );
        let deploy = Deploy {
            image: "ghcr.io/tidewater/runtime:0.1.0-debug".into(),
            start: Start::Latest,
            workers: 2,
            running: true,
            otlp: Default::default(),
        };
        let kids = children(&p, &deploy);
        let refs = fixture_refs(&kids);
        let mut pod = pod_of(
            kids.coordinator.spec.clone().unwrap().template,
            "clicks-coordinator-abc",
        );
        pod.metadata.uid = Some("0123456789".into());
        let root = Path::new("/node/pods/x");
        let c = plan_container(&pod, "127.0.1.2", root, &refs).unwrap();
        let run = c.container.clone().unwrap();
        assert_eq!(run.image, "ghcr.io/tidewater/runtime:0.1.0-debug");
        assert_eq!(run.name, "tw-clicks-coordinator-abc-01234567");
        // Paths stay the container's; only the listen address becomes the pod's own.
        assert_eq!(
            &c.args[..5],
            [
                "coordinator",
                "-f",
                "/etc/tidewater/pipeline.yaml",
                "--listen",
                "127.0.1.2:9464"
            ]
        );
        let args = pods::podman_run_args(&run, &c.env, &c.args);
        let joined = args.join(" ");
        for want in [
            "--network host",
            "--user 65532",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt no-new-privileges",
            "--memory 512m",
            "--cpus 0.5",
            "-v /node/pods/x/volumes/config:/etc/tidewater",
            "-v /node/pods/x/termination-log:/dev/termination-log",
            "-e AWS_ACCESS_KEY_ID=AKIA",
            "ghcr.io/tidewater/runtime:0.1.0-debug coordinator -f /etc/tidewater/pipeline.yaml",
        ] {
            assert!(joined.contains(want), "{want} missing from: {joined}");
        }
        assert!(
            c.files
                .iter()
                .any(|(path, _)| path == Path::new("/node/pods/x/termination-log")),
            "the termination-log file exists before it is mounted"
        );
    }

    #[test]
    fn operator_pods_become_local_processes() {
        let mut p: tidewater_crds::IngestionPipeline =
            serde_yaml::from_str(include_str!("../../../operator/tests/fixtures/clicks.yaml"))
                .unwrap();
        p.metadata.namespace = Some("lake".into());
        p.metadata.uid = Some("u-1".into());
        let deploy = Deploy {
            image: "tidewater:e2e".into(),
            start: Start::Savepoint("/state/savepoints/sp-1".into()),
            workers: 2,
            running: true,
            otlp: tidewater_operator::pod_otel::PodOtlp {
                endpoint: Some("http://127.0.0.1:4317".into()),
                protocol: None,
            },
        };
        let kids = children(&p, &deploy);
        let mut refs = fixture_refs(&kids);
        refs.services
            .insert("clicks-coordinator.lake.svc".into(), "127.0.200.1".into());
        let root = Path::new("/node/pods/x");
        let program = Path::new("/bin/tidewater");

        let pod = pod_of(
            kids.coordinator.spec.clone().unwrap().template,
            "clicks-coordinator-abc",
        );
        let c = plan(&pod, "127.0.1.2", root, program, &refs).unwrap();
        assert_eq!(
            c.args,
            [
                "coordinator",
                "-f",
                "/node/pods/x/volumes/config/pipeline.yaml",
                "--listen",
                "127.0.1.2:9464",
                "--wait-after-finish",
                "--from-savepoint",
                "/state/savepoints/sp-1",
            ]
        );
        assert!(c.files.iter().any(|(path, data)| {
            path == Path::new("/node/pods/x/volumes/config/pipeline.yaml")
                && String::from_utf8_lossy(data).contains("kind: IngestionPipeline")
        }));
        assert!(c.files.iter().any(|(path, data)| {
            path.starts_with("/node/pods/x/volumes/secret-0") && data == b"id:s3cret"
        }));
        assert_eq!(c.workdir, Path::new("/node/pods/x/volumes/tmp"));
        assert_eq!(c.readiness, Some((9464, "/readyz".into())));
        assert!(
            c.env
                .contains(&("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()))
        );

        let worker = pod_of(
            kids.workers.spec.clone().unwrap().template,
            "clicks-workers-1",
        );
        let w = plan(&worker, "127.0.1.3", root, program, &refs).unwrap();
        assert_eq!(
            w.args,
            [
                "worker",
                "--coordinator",
                "http://127.0.200.1:9464",
                "--metrics-addr",
                "127.0.1.3:9465",
            ]
        );
        assert!(w.env.contains(&(
            "TIDEWATER_WORKER_NAME".to_string(),
            "clicks-workers-1".to_string()
        )));
        // `$(TIDEWATER_POD_NAME)` expands as the kubelet expands it.
        assert!(
            w.env.contains(&(
                "OTEL_RESOURCE_ATTRIBUTES".to_string(),
                "k8s.namespace.name=lake,k8s.pod.name=clicks-workers-1,tidewater.component=worker"
                    .to_string()
            ))
        );

        refs.config_maps.clear();
        let err = plan(&pod, "127.0.1.2", root, program, &refs).unwrap_err();
        assert_eq!(err, "volume config: configmap clicks-config not found");
    }

    #[test]
    fn a_maintenance_job_reports_to_a_file_of_its_own() {
        let policy: tidewater_crds::CompactionPolicy =
            serde_yaml::from_str(include_str!("../../../examples/compaction.yaml")).unwrap();
        let kids = tidewater_operator::policy::decide::children(
            &policy,
            &policy.spec,
            "tw:1",
            &Default::default(),
        );
        let template = kids
            .cron
            .unwrap()
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template;
        let pod = pod_of(template, "clicks-maintenance-run-1");
        let mut refs = Refs::default();
        refs.config_maps.insert(
            kids.config.metadata.name.clone().unwrap(),
            kids.config.data.clone().unwrap(),
        );
        let root = Path::new("/node/pods/j");
        let p = plan(&pod, "127.0.1.9", root, Path::new("/bin/tidewater"), &refs).unwrap();
        assert_eq!(
            p.args,
            [
                "compact",
                "-f",
                "/node/pods/j/volumes/policy/policy.yaml",
                "--once",
                "--report",
                "/node/pods/j/termination-log",
            ]
        );
        assert_eq!(p.termination_log, root.join("termination-log"));
    }

    #[test]
    fn only_pods_selecting_the_node_are_bound() {
        let labels = BTreeMap::from([(NODE_LABEL.to_string(), "n1".to_string())]);
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
        }))
        .unwrap();
        assert!(!selects(&pod, &labels), "no selector: another node's pod");
        pod.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([(NODE_LABEL.to_string(), "n1".to_string())]));
        assert!(selects(&pod, &labels));
        pod.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([(NODE_LABEL.to_string(), "n2".to_string())]));
        assert!(!selects(&pod, &labels));
    }
}
