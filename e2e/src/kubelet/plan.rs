//! Pure: how a pod of the operator becomes a local process (command, environment, files from
//! ConfigMaps and Secrets, address, probes) or a podman container of its image (the same, plus
//! mounts, user, read-only root, dropped capabilities, memory limit), and which pods select
//! this node.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use anyhow::Result;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::util::intstr::IntOrString};
use kube::ResourceExt;

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
    /// Set when the pod runs as a podman container (`program` is then `podman`).
    pub container: Option<ContainerRun>,
}

/// How a pod's container runs under podman, from its pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// The container's name (unique per pod instance).
    pub name: String,
    /// The pod's image.
    pub image: String,
    /// (directory or file on this machine, path in the container, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// `runAsUser` (container, else pod).
    pub user: Option<i64>,
    /// `readOnlyRootFilesystem`.
    pub read_only: bool,
    /// `capabilities.drop` includes ALL.
    pub drop_all: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `resources.limits.memory` in podman's units.
    pub memory: Option<String>,
    /// `resources.limits.cpu` in cores (`--cpus`).
    pub cpus: Option<String>,
    /// `workingDir`.
    pub workdir: Option<String>,
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
    plan_with(pod, ip, root, Some(program), refs)
}

/// Turns `pod` into a podman container of its image, sharing this machine's network (the
/// servers the pods talk to listen on 127.0.0.1 only) and listening on its own address `ip`;
/// volumes are directories under `root`, mounted where the pod spec mounts them.
pub fn plan_container(
    pod: &Pod,
    ip: &str,
    root: &Path,
    refs: &Refs,
) -> Result<ProcessPlan, String> {
    plan_with(pod, ip, root, None, refs)
}

fn plan_with(
    pod: &Pod,
    ip: &str,
    root: &Path,
    program: Option<&Path>,
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
    let mut container_mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", m.name))?;
        mounts.push((m.mount_path.trim_end_matches('/').to_string(), dir.clone()));
        container_mounts.push((
            dir.clone(),
            m.mount_path.clone(),
            m.read_only.unwrap_or(false),
        ));
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
    if program.is_none() {
        // A container sees its mounts where the spec puts them: no path is rewritten, and the
        // termination-message file exists before it is mounted.
        let (path, file) = mounts.pop().expect("the termination log was pushed");
        container_mounts.push((file.clone(), path, false));
        files.push((file, Vec::new()));
        mounts.clear();
    }
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
            (Some(v), _) => expand_refs(&rewrite(v), &env),
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
    let workdir = match program {
        Some(_) => container
            .working_dir
            .as_deref()
            .map(|w| PathBuf::from(rewrite(w)))
            .unwrap_or_else(|| root.to_path_buf()),
        None => root.to_path_buf(),
    };
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
    let run = match program {
        Some(_) => None,
        None => Some(container_run(pod, container, container_mounts)?),
    };
    Ok(ProcessPlan {
        program: program.map_or_else(|| PathBuf::from("podman"), Path::to_path_buf),
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
        container: run,
    })
}

fn container_run(
    pod: &Pod,
    container: &k8s_openapi::api::core::v1::Container,
    mounts: Vec<(PathBuf, String, bool)>,
) -> Result<ContainerRun, String> {
    let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let security = container.security_context.as_ref();
    let limit = |name: &str| {
        container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .map(|q| q.0.clone())
    };
    let memory = limit("memory").map(|q| podman_memory(&q)).transpose()?;
    let cpus = limit("cpu").map(|q| podman_cpus(&q)).transpose()?;
    Ok(ContainerRun {
        name: format!(
            "tw-{}-{}",
            pod.name_any(),
            pod.uid().unwrap_or_default().get(..8).unwrap_or("")
        ),
        image: container
            .image
            .clone()
            .ok_or("the container names no image")?,
        mounts,
        user: security
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_security.and_then(|s| s.run_as_user)),
        read_only: security
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        drop_all: security
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL")),
        no_new_privileges: security.and_then(|s| s.allow_privilege_escalation) == Some(false),
        memory,
        cpus,
        workdir: container.working_dir.clone(),
    })
}

/// A Kubernetes CPU quantity in cores (`500m` → `0.5`, `2` → `2`).
fn podman_cpus(q: &str) -> Result<String, String> {
    let bad = || format!("cpu limit {q} is not a quantity this node understands");
    let cores = match q.strip_suffix('m') {
        Some(milli) => f64::from(milli.parse::<u32>().map_err(|_| bad())?) / 1000.0,
        None => q.parse::<f64>().map_err(|_| bad())?,
    };
    if !(cores > 0.0 && cores.is_finite()) {
        return Err(format!("cpu limit {q} must be positive"));
    }
    Ok(format!("{cores}"))
}

/// A Kubernetes memory quantity in podman's units (`512Mi` → `512m`, `1Gi` → `1g`, bytes as
/// they are).
fn podman_memory(q: &str) -> Result<String, String> {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &q[digits.len()..];
    let suffix = match unit {
        "" => "",
        "Ki" | "k" => "k",
        "Mi" | "M" => "m",
        "Gi" | "G" => "g",
        _ => {
            return Err(format!(
                "memory limit {q}: unit {unit} is not supported here"
            ));
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("memory limit {q} is not a whole number"));
    }
    Ok(format!("{digits}{suffix}"))
}

/// Whether a pod selects the node with these labels (and tolerates its taint).
pub fn selects(pod: &Pod, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let selector = spec.node_selector.clone().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kubernetes' `$(VAR)` expansion in an env value: a variable defined earlier in the same
/// container is substituted, `$$` is a literal `$`, anything else stays as written.
fn expand_refs(value: &str, earlier: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..=close];
            match earlier.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + close + 3]),
            }
            rest = &after[close + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand_refs;

    #[test]
    fn dollar_references_expand_like_the_kubelets() {
        let env = vec![("POD".to_string(), "w-1".to_string())];
        assert_eq!(expand_refs("a=$(POD),b", &env), "a=w-1,b");
        assert_eq!(
            expand_refs("$(MISSING) $$(POD) $", &env),
            "$(MISSING) $(POD) $"
        );
        assert_eq!(expand_refs("$(unclosed", &env), "$(unclosed");
    }

    #[test]
    fn memory_limits_in_podman_units() {
        assert_eq!(super::podman_memory("512Mi").as_deref(), Ok("512m"));
        assert_eq!(super::podman_memory("2Gi").as_deref(), Ok("2g"));
        assert_eq!(super::podman_memory("1048576").as_deref(), Ok("1048576"));
        assert!(super::podman_memory("1.5Gi").is_err());
        assert_eq!(super::podman_cpus("500m").as_deref(), Ok("0.5"));
        assert_eq!(super::podman_cpus("2").as_deref(), Ok("2"));
        assert_eq!(super::podman_cpus("1.5").as_deref(), Ok("1.5"));
        assert!(super::podman_cpus("lots").is_err());
    }
}
