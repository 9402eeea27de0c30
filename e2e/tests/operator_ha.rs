//! Two operator replicas on a real API server (the one `KUBECONFIG` names), watched the way a
//! user watches them: a real Prometheus scrapes both replicas' `/metrics` and both export
//! OpenTelemetry to a real collector. Only the Lease holder reconciles; killed -9, the other
//! takes the Lease within the lease duration and reconciles the next change; the new leader
//! stopped with SIGTERM hands the Lease to a waiting replica at once. Without `KUBECONFIG` it
//! says SKIPPED with the reason.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tidewater_crds::IngestionPipeline;
use tidewater_e2e::{
    Broker, PipelineSpec, Prometheus, ScrapeTarget,
    cluster::{MANAGER, in_namespace, runtime, skip_reason, wait},
    free_port, operator_bin,
    otel::{Collector, exported_spans},
    signal,
};

/// One operator replica, as the chart runs it (POD_NAME, POD_NAMESPACE), exporting OTLP.
struct Replica {
    name: String,
    child: Child,
}

impl Replica {
    fn start(name: &str, ns: &str, dir: &Path, collector: &Collector, port: u16) -> Result<Self> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(operator_bin())
            .args(["run", "--coordinator-address", "podip"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", ns)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.http_port),
            )
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("OTEL_RESOURCE_ATTRIBUTES", format!("k8s.pod.name={name}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("start tidewater-operator")?;
        Ok(Self {
            name: name.into(),
            child,
        })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_operator_replicas_elect_one_leader_and_hand_over() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!(
            "SKIPPED operator HA e2e: {why} (docs/operator.md, \"Kubernetes end-to-end suite\")"
        );
        return Ok(());
    }
    runtime()?.block_on(in_namespace("ha", |client, ns, dir| async move {
        two_replicas(&client, &ns, &dir).await
    }))
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("tidewater-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// `tidewater_operator_reconciles_total` of one replica, as Prometheus scraped it.
fn reconciles(prom: &Prometheus, pod: &str) -> Result<f64> {
    let result = prom.query(&format!(
        "tidewater_operator_reconciles_total{{pod=\"{pod}\"}}"
    ))?;
    let value = result
        .first()
        .and_then(|r| r["value"][1].as_str())
        .with_context(|| format!("no reconciles series for {pod}: {result:?}"))?;
    Ok(value.parse()?)
}

/// Waits until the pipeline's `Degraded` condition is about `generation`.
async fn degraded_at(api: &Api<IngestionPipeline>, name: &str, generation: i64) -> Result<()> {
    wait(
        &format!("Degraded at generation {generation}"),
        Duration::from_secs(90),
        || async {
            let p = api.get(name).await.ok()?;
            let status = p.status?;
            (status.observed_generation == Some(generation)
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.status == "True"))
            .then_some(())
        },
    )
    .await
}

async fn two_replicas(client: &Client, ns: &str, dir: &Path) -> Result<()> {
    let d = dir.to_path_buf();
    let (broker, collector) = tokio::task::spawn_blocking(move || -> Result<_> {
        let broker = Broker::start()?;
        let collector = Collector::start(&d, &broker)?;
        Ok((broker, collector))
    })
    .await??;
    let ports = [free_port(), free_port()];
    let targets: Vec<ScrapeTarget> = ["op-a", "op-b"]
        .iter()
        .zip(ports)
        .map(|(pod, port)| ScrapeTarget {
            port,
            labels: vec![("pod", (*pod).to_string())],
        })
        .collect();
    let prom = Prometheus::start(dir, &targets, &[])?;
    let mut a = Some(Replica::start("op-a", ns, dir, &collector, ports[0])?);
    let mut b = Some(Replica::start("op-b", ns, dir, &collector, ports[1])?);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    wait("a leader", Duration::from_secs(30), || async {
        holder(&leases).await.map(|_| ())
    })
    .await?;
    let first = holder(&leases).await.context("leader")?;
    ensure!(first == "op-a" || first == "op-b", "holder {first}");
    let follower = if first == "op-a" { "op-b" } else { "op-a" };

    // A pipeline the schema accepts and validation refuses: reconciled to Degraded, no pods.
    let spec = PipelineSpec::clicks(dir, &broker.bootstrap, "clicks");
    let mut doc: serde_json::Value = serde_yaml::from_str(&spec.yaml())?;
    doc["metadata"]["namespace"] = json!(ns);
    doc["spec"]["autoscaler"] = json!({"enabled": true, "minParallelism": 1,
        "maxParallelism": 2, "targetLagSeconds": 1, "stabilizationWindow": "0s"});
    let pipeline: IngestionPipeline = serde_json::from_value(doc)?;
    let api: Api<IngestionPipeline> = Api::namespaced(client.clone(), ns);
    let name = pipeline.name_any();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pipeline),
    )
    .await?;
    degraded_at(&api, &name, 1).await?;
    // Prometheus: the leader reconciled, the follower did not.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reconciles(&prom, &first).unwrap_or(0.0) < 1.0 {
        ensure!(
            Instant::now() < deadline,
            "the leader's reconciles never reached Prometheus: {}",
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The follower's series exists (scraped) and stays at zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    let follower_reconciles = loop {
        match reconciles(&prom, follower) {
            Ok(v) => break v,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    ensure!(follower_reconciles == 0.0, "the follower reconciled");

    // The leader killed -9: the follower takes the Lease once it expires (15 s) and reconciles
    // the next generation.
    let killed = Instant::now();
    let leader = if first == "op-a" { &mut a } else { &mut b };
    drop(leader.take());
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaler": {"stabilizationWindow": "0ms"}}})),
    )
    .await?;
    // A candidate takes a Lease once it has looked unchanged for the lease duration (15 s),
    // checking every retry period (2 s).
    wait(
        "the follower holds the Lease",
        Duration::from_secs(30),
        || async { (holder(&leases).await.as_deref() == Some(follower)).then_some(()) },
    )
    .await?;
    let took_lease = killed.elapsed();
    degraded_at(&api, &name, 2).await?;
    let reconciled = killed.elapsed();
    ensure!(
        took_lease < Duration::from_secs(15 + 2 * 2 + 1),
        "the Lease changed hands {took_lease:?} after the kill"
    );
    eprintln!(
        "operator HA: {follower} held the Lease {took_lease:?} and reconciled the change \
         {reconciled:?} after the leader's kill -9"
    );

    // A replica waits again; the leader stopped with SIGTERM releases the Lease at once.
    let restarted = Replica::start(
        &first,
        ns,
        dir,
        &collector,
        ports[usize::from(first == "op-b")],
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = if follower == "op-a" { &mut a } else { &mut b };
    let stopping = leader.take().context("the new leader")?;
    signal(stopping.child.id(), "TERM")?;
    let released = Instant::now();
    wait("handover after SIGTERM", Duration::from_secs(8), || async {
        (holder(&leases).await.as_deref() == Some(restarted.name.as_str())).then_some(())
    })
    .await?;
    eprintln!(
        "operator HA: SIGTERM handed the Lease to {} in {:?}",
        restarted.name,
        released.elapsed()
    );
    drop(stopping);

    // The dashboard's operator panels, as Grafana would query them.
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        tidewater_e2e::repo_root().join("charts/tidewater/files/grafana-dashboard.json"),
    )?)?;
    for panel in dash["panels"].as_array().context("panels")? {
        if !panel["title"]
            .as_str()
            .unwrap_or("")
            .starts_with("Operator")
        {
            continue;
        }
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"]
                .as_str()
                .context("expr")?
                .replace("$__rate_interval", "1m");
            let result = prom.query(&expr)?;
            // Failures by category have no series while nothing fails.
            if !expr.contains("failures") {
                ensure!(!result.is_empty(), "no data for {expr}");
            }
        }
    }

    // The reconciles reached the collector as spans of the operator's service.
    let spans = tokio::task::spawn_blocking(move || exported_spans(&broker)).await??;
    let reconciles: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "tidewater-operator" && s.name == "reconcile")
        .collect();
    ensure!(
        reconciles
            .iter()
            .any(|s| s.attributes.get("pipeline") == Some(&name)),
        "no reconcile span for {name}: {:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );

    // Deleted while a replica runs, so its finalizer is removed.
    api.delete(&name, &DeleteParams::default()).await?;
    wait("pipeline deleted", Duration::from_secs(60), || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await?;
    drop(restarted);
    drop(collector);
    Ok(())
}
