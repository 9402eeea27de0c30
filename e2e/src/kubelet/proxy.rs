//! kube-proxy in miniature: each ClusterIP Service answers on a local address and forwards to its
//! ready pods.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::ResourceExt;

use super::NodeState;
use super::Refs;

pub(super) struct Proxy {
    pub(super) ip: String,
    pub(super) targets: Arc<Mutex<Vec<String>>>,
}

/// kube-proxy: a local address per ClusterIP Service, forwarding to ready pods (running ones
/// too with `publishNotReadyAddresses`).
pub(super) async fn serve_services(
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
