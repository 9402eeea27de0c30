//! The Kubernetes end-to-end suite: against the API server `KUBECONFIG` points at, install
//! the CRDs, run the operator, apply the example pipeline and walk create → Ready → upgrade
//! (savepoint) → scale (`/scale` subresource) → suspend → resume → a CompactionPolicy run
//! (its Job's report read back into the status) → delete, then check exactly-once in the
//! table with PyIceberg and DuckDB.
//!
//! Pods run on a local node (`tidewater_e2e::kubelet`): the suite registers a node, binds the
//! pipeline's pods to it (or lets the cluster's scheduler do so), runs each pod's container as
//! a local process with an address of its own in 127.0.0.0/8 and reports pod status, so the
//! broker, catalog and warehouse of this machine are reachable from the pods. The operator
//! runs as a local process with `--coordinator-address podip`. Without `KUBECONFIG` the test
//! says SKIPPED with the reason and passes; see docs/operator.md for how to run it.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tidewater_crds::{CompactionPolicy, IngestionPipeline, status::LifecycleState};
use tidewater_e2e::{
    BackgroundProducer, Broker, PipelineSpec, free_port, inspect_table, kubelet::LocalNode,
    operator_bin, repo_root, tidewater_bin,
};

const MANAGER: &str = "tidewater-e2e";

#[test]
fn pipeline_lifecycle_on_kubernetes() -> Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "SKIPPED kubernetes e2e: KUBECONFIG is not set, so there is no API server to test \
             against (docs/operator.md, \"Kubernetes end-to-end suite\")"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(walk())
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn walk() -> Result<()> {
    let client = Client::try_default()
        .await
        .context("connect to KUBECONFIG's API server")?;
    let dir = tempfile::tempdir()?;
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    let ns = format!("tidewater-e2e-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let result = walk_in(&client, &ns, dir.path()).await;
    if result.is_err() {
        eprintln!(
            "kubernetes e2e failed; files kept in {}",
            dir.path().display()
        );
        std::mem::forget(dir);
    }
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result
}

async fn walk_in(client: &Client, ns: &str, dir: &Path) -> Result<()> {
    install_crds(client).await?;
    let node = LocalNode::start(
        client.clone(),
        &format!("{ns}-node"),
        ns,
        &dir.join("node"),
        &tidewater_bin(),
    )
    .await?;
    let outcome = lifecycle(client, ns, dir, &node).await;
    node.stop().await?;
    outcome
}

async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["ingestionpipeline.yaml", "compactionpolicy.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("crds").join(file))?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("install the CRD {file}"))?;
        wait("CRD established", Duration::from_secs(60), || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await?;
    }
    Ok(())
}

async fn lifecycle(client: &Client, ns: &str, dir: &Path, node: &LocalNode) -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let producer = BackgroundProducer::start(&broker, "clicks", 4, 500)?;
    let log = std::fs::File::create(dir.join("operator.log"))?;
    let _operator = Operator(
        Command::new(operator_bin())
            .args(["run", "--coordinator-address", "podip"])
            .args(["--default-image", "tidewater:e2e"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("start tidewater-operator (cargo build -p tidewater-operator)")?,
    );

    // The example pipeline, pointed at this machine's broker, catalog and warehouse.
    let spec = PipelineSpec::clicks(dir, &broker.bootstrap, "clicks");
    let mut doc: serde_json::Value = serde_yaml::from_str(&spec.yaml())?;
    doc["metadata"]["namespace"] = json!(ns);
    doc["spec"]["upgradeMode"] = json!("savepoint");
    doc["spec"]["savepointOnDeletion"] = json!(true);
    doc["spec"]["podTemplate"] = node.pod_template();
    doc["spec"]["checkpoint"]["interval"] = json!("2s");
    let pipeline: IngestionPipeline = serde_json::from_value(doc)?;
    let api: Api<IngestionPipeline> = Api::namespaced(client.clone(), ns);
    let name = pipeline.name_any();
    let started = Instant::now();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pipeline),
    )
    .await
    .context("apply the pipeline")?;

    let ready = ready_at_generation(&api, &name, Duration::from_secs(180)).await?;
    eprintln!("create → Ready: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(worker_pods(client, ns).await?, 2);

    // Upgrade with a savepoint: a writer property changes.
    let t = Instant::now();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sink": {"writeProperties": {
            "write.parquet.compression-codec": "snappy"}}}})),
    )
    .await?;
    let upgraded = ready_at_generation(&api, &name, Duration::from_secs(240)).await?;
    let status = upgraded.status.clone().unwrap_or_default();
    assert!(
        status.savepoints.len() > ready.status.unwrap_or_default().savepoints.len(),
        "the upgrade took a savepoint: {:?}",
        status.savepoints
    );
    eprintln!(
        "upgrade (savepoint) → Ready: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Scale through the /scale subresource (what `kubectl scale ip/clicks --replicas=3` does).
    let t = Instant::now();
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .context("scale subresource")?;
    wait("3 workers", Duration::from_secs(180), || async {
        let p = api.get(&name).await.ok()?;
        let running = worker_pods(client, ns).await.ok()?;
        (p.status?.parallelism == Some(3) && running == 3).then_some(())
    })
    .await?;
    ready_at_generation(&api, &name, Duration::from_secs(120)).await?;
    eprintln!("scale 2 → 3 → Ready: {:.1} s", t.elapsed().as_secs_f64());

    // Suspend: savepoint with stop, no pods; then resume from it.
    let t = Instant::now();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": "suspended"}})),
    )
    .await?;
    wait(
        "suspended with no pods",
        Duration::from_secs(180),
        || async {
            let p = api.get(&name).await.ok()?;
            let s = p.status?;
            let stopped = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Stopped" && c.status == "True");
            let pods = all_pods(client, ns).await.ok()?;
            (stopped && s.lifecycle_state == Some(LifecycleState::Suspended) && pods == 0)
                .then_some(())
        },
    )
    .await?;
    eprintln!("suspend → no pods: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": "running"}})),
    )
    .await?;
    ready_at_generation(&api, &name, Duration::from_secs(180)).await?;
    eprintln!("resume → Ready: {:.1} s", t.elapsed().as_secs_f64());

    // Table maintenance while the pipeline runs: a CompactionPolicy on the pipeline, run once
    // now through its runNonce Job; the operator reads the Job's report into the status.
    let t = Instant::now();
    let policies: Api<CompactionPolicy> = Api::namespaced(client.clone(), ns);
    let policy: CompactionPolicy = serde_json::from_value(json!({
        "apiVersion": "tidewater.dev/v1alpha1", "kind": "CompactionPolicy",
        "metadata": {"name": "clicks-maintenance", "namespace": ns},
        "spec": {
            "pipelineRef": name,
            "targetFileSizeBytes": 134217728,
            "hotPartitionGuard": {"minAge": "0s"},
            "expireSnapshots": {"olderThan": "1m", "retainLast": 5},
            "runNonce": 1,
            "image": "tidewater:e2e",
            "podTemplate": node.pod_template(),
        },
    }))?;
    policies
        .patch(
            "clicks-maintenance",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .context("apply the CompactionPolicy")?;
    wait(
        "a maintenance run reported",
        Duration::from_secs(180),
        || async {
            let p = policies.get("clicks-maintenance").await.ok()?;
            let s = p.status?;
            let run = s.last_run?;
            (run.result != "Failed" && s.tables.iter().all(|t| t.error.is_none())).then_some(())
        },
    )
    .await?;
    eprintln!(
        "compaction run (Job) → status: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Everything produced lands exactly once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let produced = tokio::task::spawn_blocking(move || producer.finish()).await??;
    let (catalog, warehouse, table) = (
        spec.catalog_uri.clone(),
        spec.warehouse.clone(),
        spec.table.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (c, w, t) = (catalog.clone(), warehouse.clone(), table.clone());
        let view = tokio::task::spawn_blocking(move || inspect_table(&c, &w, &t)).await??;
        if view.pyiceberg_rows >= produced || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Delete: final savepoint behind the finalizer, then the children go.
    let t = Instant::now();
    api.delete(&name, &DeleteParams::default()).await?;
    wait("pipeline deleted", Duration::from_secs(180), || async {
        match api.get_opt(&name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await?;
    eprintln!(
        "delete (final savepoint) → gone: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let view =
        tokio::task::spawn_blocking(move || inspect_table(&catalog, &warehouse, &table)).await??;
    view.assert_exactly(produced);
    // Savepoints: the upgrade's, the suspension's and the final one before deletion.
    let savepoint_dir = dir
        .join("warehouse/_tidewater")
        .join(ns)
        .join(&name)
        .join("savepoints");
    let savepoints = std::fs::read_dir(&savepoint_dir)
        .with_context(|| savepoint_dir.display().to_string())?
        .count();
    assert!(
        savepoints >= 3,
        "{savepoints} savepoints in {}",
        savepoint_dir.display()
    );
    eprintln!(
        "kubernetes e2e: {produced} events, exactly once after upgrade, scale, suspend, resume, delete"
    );
    Ok(())
}

/// Waits until the pipeline is Ready for its current generation.
async fn ready_at_generation(
    api: &Api<IngestionPipeline>,
    name: &str,
    timeout: Duration,
) -> Result<IngestionPipeline> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = api.get(name).await?;
        let generation = p.metadata.generation;
        if let Some(s) = &p.status {
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && s.observed_generation == generation {
                return Ok(p);
            }
            if s.lifecycle_state == Some(LifecycleState::Failed) {
                bail!("pipeline failed: {:?}", s.conditions);
            }
        }
        if Instant::now() > deadline {
            bail!("not Ready at generation {generation:?}: {:?}", p.status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pods(client: &Client, ns: &str, labels: &str) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(labels)).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count())
}

async fn worker_pods(client: &Client, ns: &str) -> Result<usize> {
    pods(client, ns, "app.kubernetes.io/component=worker").await
}

async fn all_pods(client: &Client, ns: &str) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api.list(&ListParams::default()).await?.items.len())
}

async fn wait<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
