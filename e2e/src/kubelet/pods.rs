//! Running pods: start, supervise (probes, restarts with back-off), report their status to the API
//! server, and terminate them with a grace period.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::json;

use super::{
    NodeState, now,
    plan::{ContainerRun, ProcessPlan, Refs, plan, plan_container},
};
use crate::podman::podman;

pub(super) struct Running {
    pub(super) name: String,
    pub(super) ip: String,
    pub(super) container: String,
    pub(super) image: String,
    pub(super) plan: ProcessPlan,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) started_at: String,
    pub(super) restarts: i32,
    pub(super) restart_at: Option<Instant>,
    pub(super) last_exit: Option<i32>,
    pub(super) ready: bool,
    pub(super) restart_always: bool,
    pub(super) terminating_since: Option<Instant>,
    pub(super) grace: Duration,
    pub(super) reported: Option<serde_json::Value>,
}

pub(super) fn start_pod(state: &mut NodeState, pod: &Pod, uid: &str, refs: &Refs) -> Result<()> {
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
    let planned = match &state.program {
        Some(program) => plan(pod, &ip, &root, program, refs),
        None => plan_container(pod, &ip, &root, refs),
    };
    let plan = match planned {
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
    if plan.container.is_some() {
        // The container runs as its own user: volumes must be open to it (a kubelet would
        // chown them to the pod's fsGroup).
        use std::os::unix::fs::PermissionsExt;
        for d in &plan.dirs {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))?;
        }
        for (path, _) in &plan.files {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        }
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
    let mut cmd = match &run.plan.container {
        None => {
            let mut cmd = Command::new(&run.plan.program);
            cmd.args(&run.plan.args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(run.plan.env.iter().map(|(k, v)| (k, v)));
            cmd
        }
        Some(c) => {
            // A container left by an earlier instance of this pod goes first.
            remove_container(c);
            let mut cmd = podman();
            cmd.args(podman_run_args(c, &run.plan.env, &run.plan.args));
            cmd
        }
    };
    cmd.current_dir(&run.plan.workdir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    run.child = Some(cmd.spawn().context("start the container process")?);
    run.started_at = now();
    Ok(())
}

fn remove_container(c: &ContainerRun) {
    let _ = podman().args(["rm", "-f", &c.name]).output();
}

/// Stops the pod's container or process at once (no grace: the pod is gone or the node stops).
pub(super) fn discard(run: &mut Running) {
    if let Some(c) = &run.plan.container {
        remove_container(c);
    }
    if let Some(child) = &mut run.child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts, restarts (with back-off) and probes the pod's process.
pub(super) fn supervise(run: &mut Running) -> Result<()> {
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
pub(super) async fn report(client: &Client, ns: &str, run: &mut Running) -> Result<()> {
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
pub(super) async fn terminate(
    client: &Client,
    state: &mut NodeState,
    pod: &Pod,
    uid: &str,
) -> Result<()> {
    let done = match state.pods.get_mut(uid) {
        None => true,
        Some(run) => match &mut run.child {
            None => true,
            Some(child) => {
                let container = run.plan.container.as_ref().map(|c| c.name.clone());
                let since = *run.terminating_since.get_or_insert_with(|| {
                    match &container {
                        // The container gets the signal, not the podman client.
                        Some(name) => {
                            let _ = podman().args(["kill", "--signal", "TERM", name]).output();
                        }
                        None => {
                            let _ = Command::new("kill")
                                .args(["-TERM", &child.id().to_string()])
                                .status();
                        }
                    }
                    Instant::now()
                });
                if since.elapsed() > run.grace {
                    match &container {
                        Some(name) => {
                            let _ = podman().args(["kill", name]).output();
                        }
                        None => {
                            let _ = child.kill();
                        }
                    }
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

/// `podman run` for a pod's container: host network (the pod listens on its own 127.x
/// address), the pod spec's user, read-only root, dropped capabilities, memory limit, mounts.
pub(super) fn podman_run_args(
    c: &ContainerRun,
    env: &[(String, String)],
    args: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = ["run", "--rm", "--name", &c.name, "--network", "host"]
        .map(String::from)
        .to_vec();
    out.extend(["--pull".into(), "never".into()]);
    if let Some(u) = c.user {
        out.extend(["--user".into(), u.to_string()]);
    }
    if c.read_only {
        out.push("--read-only".into());
    }
    if c.drop_all {
        out.push("--cap-drop=ALL".into());
    }
    if c.no_new_privileges {
        out.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if let Some(m) = &c.memory {
        out.extend(["--memory".into(), m.clone()]);
    }
    if let Some(cpus) = &c.cpus {
        out.extend(["--cpus".into(), cpus.clone()]);
    }
    for (host, path, ro) in &c.mounts {
        let mode = if *ro { ":ro" } else { "" };
        out.extend(["-v".into(), format!("{}:{path}{mode}", host.display())]);
    }
    for (k, v) in env {
        out.extend(["-e".into(), format!("{k}={v}")]);
    }
    if let Some(w) = &c.workdir {
        out.extend(["--workdir".into(), w.clone()]);
    }
    out.push(c.image.clone());
    out.extend(args.iter().cloned());
    out
}
