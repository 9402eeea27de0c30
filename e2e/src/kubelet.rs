//! A stand-in kubelet and kube-proxy for the Kubernetes e2e suite, for API servers without
//! nodes: one node whose pods run as local processes, each on an address of its own in
//! 127.0.0.0/8. `plan` (pure) turns a pod into a process; [`LocalNode`] binds pods that select
//! it, runs, probes, restarts and terminates them, reports pod status, renews the node lease,
//! and forwards each ClusterIP Service from a local address to its ready pods.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod, Secret, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
};
use serde_json::json;

/// Label a pod must select (and taint it must tolerate) to run on the local node.
pub const NODE_LABEL: &str = "tidewater.dev/e2e-node";

/// What a pod's container becomes on the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// The program (the runtime image's entrypoint, mapped to a local binary).
    pub program: PathBuf,
    /// Arguments with mount paths, `0.0.0.0` and Service names rewritten.
    pub args: Vec<String>,
    /// The container's environment, resolved.
    pub env: Vec<(String, String)>,
    /// Volume contents to write before the start.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// Volume directories.
    pub dirs: Vec<PathBuf>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Readiness probe (port, path).
    pub readiness: Option<(u16, String)>,
    /// The container's termination-message file, on this machine.
    pub termination_log: PathBuf,
}

/// The cluster objects a pod refers to, and where Services are reachable locally.
#[derive(Debug, Default, Clone)]
pub struct Refs {
    /// ConfigMap data by name.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secret data by name.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Service host names (`name.ns.svc`, `name.ns.svc.cluster.local`) → local address.
    pub services: BTreeMap<String, String>,
}

/// Turns `pod` into a local process on address `ip`, with its volumes under `root`.
pub fn plan(
    pod: &Pod,
    ip: &str,
    root: &Path,
    program: &Path,
    refs: &Refs,
) -> Result<ProcessPlan, String> {
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let [container] = spec.containers.as_slice() else {
        return Err("only pods with one container are supported".into());
    };
    if container.command.is_some() {
        return Err("container.command is not supported (the image's entrypoint is)".into());
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut volume_dirs = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        let dir = root.join("volumes").join(&v.name);
        dirs.push(dir.clone());
        if let Some(cm) = &v.config_map {
            let data = refs
                .config_maps
                .get(&cm.name)
                .ok_or_else(|| format!("volume {}: configmap {} not found", v.name, cm.name))?;
            for (k, val) in data {
                files.push((dir.join(k), val.clone().into_bytes()));
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = refs
                .secrets
                .get(&name)
                .ok_or_else(|| format!("volume {}: secret {name} not found", v.name))?;
            for (k, val) in data {
                files.push((dir.join(k), val.clone()));
            }
        } else if v.empty_dir.is_none() {
            return Err(format!(
                "volume {}: only configMap, secret and emptyDir",
                v.name
            ));
        }
        volume_dirs.insert(v.name.clone(), dir);
    }
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", m.name))?;
        mounts.push((m.mount_path.trim_end_matches('/').to_string(), dir.clone()));
    }
    // The kubelet mounts the termination-message file; here it is a file of the pod's.
    let termination_log = root.join("termination-log");
    mounts.push((
        container
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into()),
        termination_log.clone(),
    ));
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut hosts: Vec<(&String, &String)> = refs.services.iter().collect();
    hosts.sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
    let rewrite = |s: &str| -> String {
        let mut out = s.to_string();
        for (mount, dir) in &mounts {
            if out == *mount || out.starts_with(&format!("{mount}/")) {
                out = format!("{}{}", dir.display(), &out[mount.len()..]);
                break;
            }
        }
        out = out.replace("0.0.0.0:", &format!("{ip}:"));
        for (host, addr) in &hosts {
            out = out.replace(host.as_str(), addr);
        }
        out
    };
    let mut env = Vec::new();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => rewrite(v),
            (None, Some(from)) => {
                if let Some(k) = &from.secret_key_ref {
                    let bytes = refs
                        .secrets
                        .get(&k.name)
                        .and_then(|d| d.get(&k.key))
                        .ok_or_else(|| {
                            format!("env {}: secret {}/{} not found", e.name, k.name, k.key)
                        })?;
                    String::from_utf8_lossy(bytes).into_owned()
                } else if let Some(k) = &from.config_map_key_ref {
                    refs.config_maps
                        .get(&k.name)
                        .and_then(|d| d.get(&k.key))
                        .cloned()
                        .ok_or_else(|| {
                            format!("env {}: configmap {}/{} not found", e.name, k.name, k.key)
                        })?
                } else if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => pod.name_any(),
                        "metadata.namespace" => pod.namespace().unwrap_or_default(),
                        "status.podIP" => ip.to_string(),
                        "spec.nodeName" => spec.node_name.clone().unwrap_or_default(),
                        other => {
                            return Err(format!(
                                "env {}: fieldRef {other} is not supported",
                                e.name
                            ));
                        }
                    }
                } else {
                    return Err(format!("env {}: unsupported valueFrom", e.name));
                }
            }
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    let workdir = container
        .working_dir
        .as_deref()
        .map(|w| PathBuf::from(rewrite(w)))
        .unwrap_or_else(|| root.to_path_buf());
    let readiness = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| match &h.port {
            IntOrString::Int(port) => Some((
                u16::try_from(*port).ok()?,
                h.path.clone().unwrap_or_else(|| "/".into()),
            )),
            IntOrString::String(_) => None,
        });
    Ok(ProcessPlan {
        program: program.to_path_buf(),
        args: container
            .args
            .iter()
            .flatten()
            .map(|a| rewrite(a))
            .collect(),
        env,
        files,
        dirs,
        workdir,
        readiness,
        termination_log,
    })
}

/// Whether a pod selects the node with these labels (and tolerates its taint).
pub fn selects(pod: &Pod, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let selector = spec.node_selector.clone().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

struct Running {
    name: String,
    ip: String,
    container: String,
    image: String,
    plan: ProcessPlan,
    log: PathBuf,
    child: Option<Child>,
    started_at: String,
    restarts: i32,
    restart_at: Option<Instant>,
    last_exit: Option<i32>,
    ready: bool,
    restart_always: bool,
    terminating_since: Option<Instant>,
    grace: Duration,
    reported: Option<serde_json::Value>,
}

struct Proxy {
    ip: String,
    targets: Arc<Mutex<Vec<String>>>,
}

struct NodeState {
    name: String,
    labels: BTreeMap<String, String>,
    namespace: String,
    root: PathBuf,
    program: PathBuf,
    pods: HashMap<String, Running>,
    proxies: HashMap<String, Proxy>,
    next_ip: u32,
    next_service_ip: u32,
    last_heartbeat: Option<Instant>,
    log: std::fs::File,
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
    /// Registers node `name` and starts serving pods of `namespace` that select it; pods run
    /// `program` with volumes and logs under `root`.
    pub async fn start(
        client: Client,
        name: &str,
        namespace: &str,
        root: &Path,
        program: &Path,
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
            program: program.to_path_buf(),
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
                    if let Some(child) = &mut run.child {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
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
                let bindings: Api<k8s_openapi::api::core::v1::Binding> =
                    Api::namespaced(client.clone(), &ns);
                let b = serde_json::from_value(binding)?;
                if let Err(e) = bindings.create(&PostParams::default(), &b).await {
                    writeln!(state.log, "bind {}: {e}", pod.name_any())?;
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
        if !keep && let Some(child) = &mut run.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        keep
    });
    Ok(())
}

fn start_pod(state: &mut NodeState, pod: &Pod, uid: &str, refs: &Refs) -> Result<()> {
    state.next_ip += 1;
    let ip = format!(
        "127.0.{}.{}",
        1 + state.next_ip / 250,
        1 + state.next_ip % 250
    );
    let root = state.root.join("pods").join(pod.name_any()).join(uid);
    std::fs::create_dir_all(&root)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec.containers.first().cloned().unwrap_or_default();
    let plan = match plan(pod, &ip, &root, &state.program, refs) {
        Ok(p) => p,
        Err(e) => {
            writeln!(state.log, "pod {}: cannot run: {e}", pod.name_any())?;
            return Ok(());
        }
    };
    for d in &plan.dirs {
        std::fs::create_dir_all(d)?;
    }
    for (path, data) in &plan.files {
        std::fs::write(path, data)?;
    }
    writeln!(
        state.log,
        "pod {} on {ip}: {} {}",
        pod.name_any(),
        plan.program.display(),
        plan.args.join(" ")
    )?;
    state.pods.insert(
        uid.to_string(),
        Running {
            name: pod.name_any(),
            ip,
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            log: root.join("container.log"),
            plan,
            child: None,
            started_at: now(),
            restarts: 0,
            restart_at: Some(Instant::now()),
            last_exit: None,
            ready: false,
            restart_always: spec.restart_policy.as_deref().unwrap_or("Always") == "Always",
            terminating_since: None,
            grace: Duration::from_secs(
                spec.termination_grace_period_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(30),
            ),
            reported: None,
        },
    );
    Ok(())
}

fn spawn(run: &mut Running) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.log)?;
    let mut cmd = Command::new(&run.plan.program);
    cmd.args(&run.plan.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(run.plan.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&run.plan.workdir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    run.child = Some(cmd.spawn().context("start the container process")?);
    run.started_at = now();
    Ok(())
}

/// Starts, restarts (with back-off) and probes the pod's process.
fn supervise(run: &mut Running) -> Result<()> {
    if run.child.is_none() {
        if run.restart_at.is_some_and(|t| Instant::now() >= t) {
            run.restart_at = None;
            spawn(run)?;
        }
        return Ok(());
    }
    let exited = run.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
    if let Some(status) = exited {
        run.child = None;
        run.ready = false;
        let code = status.code().unwrap_or(137);
        run.last_exit = Some(code);
        if run.restart_always || code != 0 {
            run.restarts += 1;
            let backoff = Duration::from_secs(u64::from(run.restarts.unsigned_abs()).min(10));
            run.restart_at = Some(Instant::now() + backoff);
        }
        return Ok(());
    }
    run.ready = match &run.plan.readiness {
        Some((port, path)) => http_ok(&run.ip, *port, path),
        None => true,
    };
    Ok(())
}

fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    let Ok(addr) = format!("{ip}:{port}").parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..10] == b"2"
}

/// The termination-log file, or (FallbackToLogsOnError) the log's tail after a failure.
fn termination_message(run: &Running, code: i32) -> String {
    let message = std::fs::read_to_string(&run.plan.termination_log).unwrap_or_default();
    if !message.is_empty() || code == 0 {
        return message.chars().take(4096).collect();
    }
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Patches the pod status when it changed.
async fn report(client: &Client, ns: &str, run: &mut Running) -> Result<()> {
    let running = run.child.is_some();
    let ready = if run.ready { "True" } else { "False" };
    let state = match (running, run.last_exit) {
        (true, _) => json!({"running": {"startedAt": run.started_at}}),
        (false, Some(code)) if run.restart_at.is_none() => json!({"terminated": {
            "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
            "message": termination_message(run, code)}}),
        (false, Some(_)) => json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        (false, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let phase = match (running, run.last_exit, run.restart_at.is_some()) {
        (false, Some(0), false) => "Succeeded",
        (false, Some(_), false) => "Failed",
        _ => "Running",
    };
    let status = json!({"status": {
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": run.ip, "podIPs": [{"ip": run.ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": [{
            "name": run.container, "image": run.image, "imageID": "",
            "ready": run.ready, "restartCount": run.restarts, "started": running,
            "state": state,
        }],
    }});
    if run.reported.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut stamped = status.clone();
    stamped["status"]["startTime"] = json!(run.started_at);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(&run.name, &PatchParams::default(), &Patch::Merge(stamped))
        .await
        .with_context(|| format!("report status of pod {}", run.name))?;
    run.reported = Some(status);
    Ok(())
}

/// SIGTERM, SIGKILL after the grace period, then the kubelet's final delete.
async fn terminate(client: &Client, state: &mut NodeState, pod: &Pod, uid: &str) -> Result<()> {
    let done = match state.pods.get_mut(uid) {
        None => true,
        Some(run) => match &mut run.child {
            None => true,
            Some(child) => {
                let since = *run.terminating_since.get_or_insert_with(|| {
                    let _ = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status();
                    Instant::now()
                });
                if since.elapsed() > run.grace {
                    let _ = child.kill();
                }
                child.try_wait().ok().flatten().is_some()
            }
        },
    };
    if done {
        state.pods.remove(uid);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &state.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = pods.delete(&pod.name_any(), &dp).await {
            writeln!(state.log, "final delete of {}: {e}", pod.name_any())?;
        }
    }
    Ok(())
}

/// kube-proxy: a local address per ClusterIP Service, forwarding to ready pods (running ones
/// too with `publishNotReadyAddresses`).
async fn serve_services(
    state: &mut NodeState,
    services: &[Service],
    pods: &[Pod],
    refs: &mut Refs,
) -> Result<()> {
    for svc in services {
        let name = svc.name_any();
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.cluster_ip.as_deref() == Some("None") {
            continue;
        }
        if !state.proxies.contains_key(&name) {
            state.next_service_ip += 1;
            let ip = format!("127.0.200.{}", state.next_service_ip);
            let targets = Arc::new(Mutex::new(Vec::new()));
            for port in spec.ports.iter().flatten() {
                let target = match &port.target_port {
                    Some(IntOrString::Int(p)) => *p,
                    _ => port.port,
                };
                let listener =
                    tokio::net::TcpListener::bind((ip.as_str(), u16::try_from(port.port)?))
                        .await
                        .with_context(|| format!("service {name}: listen on {ip}:{}", port.port))?;
                let t = targets.clone();
                tokio::spawn(forward(listener, t, u16::try_from(target)?));
            }
            writeln!(state.log, "service {name} on {ip}")?;
            state.proxies.insert(name.clone(), Proxy { ip, targets });
        }
        let proxy = &state.proxies[&name];
        let selector = spec.selector.clone().unwrap_or_default();
        let ready: Vec<String> = pods
            .iter()
            .filter(|p| {
                let labels = p.labels();
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter_map(|p| state.pods.get(&p.uid()?))
            .filter(|r| {
                let running = r.child.is_some() && r.terminating_since.is_none();
                r.ready || (spec.publish_not_ready_addresses == Some(true) && running)
            })
            .map(|r| r.ip.clone())
            .collect();
        *proxy.targets.lock().expect("targets") = ready;
        let ns = &state.namespace;
        refs.services
            .insert(format!("{name}.{ns}.svc.cluster.local"), proxy.ip.clone());
        refs.services
            .insert(format!("{name}.{ns}.svc"), proxy.ip.clone());
    }
    Ok(())
}

async fn forward(listener: tokio::net::TcpListener, targets: Arc<Mutex<Vec<String>>>, port: u16) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = targets.lock().expect("targets").first().cloned();
        tokio::spawn(async move {
            let Some(ip) = target else { return };
            if let Ok(mut outbound) = tokio::net::TcpStream::connect((ip.as_str(), port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_operator::children::{Deploy, Start, children};

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

    #[test]
    fn operator_pods_become_local_processes() {
        let mut p: tidewater_crds::IngestionPipeline =
            serde_yaml::from_str(include_str!("../../operator/tests/fixtures/clicks.yaml"))
                .unwrap();
        p.metadata.namespace = Some("lake".into());
        p.metadata.uid = Some("u-1".into());
        let deploy = Deploy {
            image: "tidewater:e2e".into(),
            start: Start::Savepoint("/state/savepoints/sp-1".into()),
            workers: 2,
            running: true,
        };
        let kids = children(&p, &deploy);
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

        refs.config_maps.clear();
        let err = plan(&pod, "127.0.1.2", root, program, &refs).unwrap_err();
        assert_eq!(err, "volume config: configmap clicks-config not found");
    }

    #[test]
    fn a_maintenance_job_reports_to_a_file_of_its_own() {
        let policy: tidewater_crds::CompactionPolicy =
            serde_yaml::from_str(include_str!("../../examples/compaction.yaml")).unwrap();
        let kids = tidewater_operator::maintenance::children(&policy, &policy.spec, "tw:1");
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
