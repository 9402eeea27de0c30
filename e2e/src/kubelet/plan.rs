//! Pure: how a pod of the operator becomes a local process (command, environment, files from
//! ConfigMaps and Secrets, address, probes), and which pods select this node.

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
}
