//! The Kubernetes end-to-end suite, against the API server `KUBECONFIG` points at: install
//! the CRDs (short names checked against the server's discovery), refuse every CEL rule of
//! both CRDs, then run the operator and walk the example pipeline through what users do:
//! create → `kubectl wait --for=condition=Ready` → savepoint upgrade with the operator killed
//! (-9) mid-savepoint → `kubectl scale` → an HPA on the `/scale` subresource → the lag
//! autoscaler → an upgrade that never becomes Ready (rolled back after `upgradeTimeout`) → an
//! API server restart (watches recover) → suspend → resume → a CompactionPolicy run → delete
//! with a final savepoint; then exactly-once in the table with PyIceberg and DuckDB.
//!
//! The warehouse, metadata and state live on S3 (moto) behind the REST catalog, as on a
//! cluster: no path is shared between pods and this machine; S3 keys and the catalog token
//! reach the pods through Secrets (`secretEnv`).
//!
//! Pods run on a local node (`tidewater_e2e::kubelet`): the suite registers a node, runs each
//! pod bound to it as a local process with an address of its own in 127.0.0.0/8 and reports
//! pod status. The operator runs as a local process with `--coordinator-address podip`.
//! Without `KUBECONFIG` the tests say SKIPPED with the reason and pass; the API server restart
//! needs `TIDEWATER_E2E_CONTROL_PLANE` (the directory of `scripts/control-plane.sh start`) and
//! is SKIPPED without it. See docs/operator.md, "Kubernetes end-to-end suite".

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tidewater_crds::{
    CompactionPolicy, IngestionPipeline,
    status::{LifecycleState, OperationKind, SavepointTrigger},
};
use tidewater_e2e::{
    BackgroundProducer, Broker, Moto, PipelineSpec, RestCatalog, S3_KEY_ID, S3_SECRET,
    cluster::{MANAGER, in_namespace, kubectl, runtime, skip_reason, wait},
    free_port,
    kubelet::{LocalNode, Runner},
    operator_bin,
    podman::built_images,
    repo_root, signal, tidewater_bin,
};

const PIPELINE_SHORT: &str = "twp";
const POLICY_SHORT: &str = "twcp";

#[test]
fn pipeline_lifecycle_on_kubernetes() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!(
            "SKIPPED kubernetes e2e: {why} (docs/operator.md, \"Kubernetes end-to-end suite\")"
        );
        return Ok(());
    }
    runtime()?.block_on(in_namespace("walk", |client, ns, dir| async move {
        walk(&client, &ns, &dir).await
    }))
}

#[test]
fn crd_validation_on_kubernetes() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!(
            "SKIPPED kubernetes CEL e2e: {why} (docs/operator.md, \"Kubernetes end-to-end suite\")"
        );
        return Ok(());
    }
    runtime()?.block_on(in_namespace("cel", |client, ns, _dir| async move {
        cel_cases(&client, &ns).await
    }))
}

/// Our short names are served for our kinds and no other resource of this server claims them.
async fn check_short_names() -> Result<()> {
    let table = kubectl(&["api-resources", "--no-headers"]).await?;
    for (short, kind) in [
        (PIPELINE_SHORT, "IngestionPipeline"),
        (POLICY_SHORT, "CompactionPolicy"),
    ] {
        let claimants: Vec<&str> = table
            .lines()
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 5 && cols[1].split(',').any(|s| s == short)
            })
            .collect();
        ensure!(
            claimants.len() == 1 && claimants[0].trim_end().ends_with(kind),
            "short name {short} must name {kind} only: {claimants:?}"
        );
    }
    Ok(())
}

/// Every CEL rule of both CRDs, refused by the API server with the field and message named;
/// the valid objects are accepted (server-side dry run: nothing is stored).
async fn cel_cases(client: &Client, ns: &str) -> Result<()> {
    let pipeline = |ns: &str| -> serde_json::Value {
        let spec = PipelineSpec::clicks(Path::new("/data"), "kafka:9092", "clicks");
        let mut doc: serde_json::Value = serde_yaml::from_str(&spec.yaml()).unwrap();
        doc["metadata"]["namespace"] = json!(ns);
        doc
    };
    let policy = |ns: &str| -> serde_json::Value {
        json!({
            "apiVersion": "tidewater.dev/v1alpha1", "kind": "CompactionPolicy",
            "metadata": {"name": "maintenance", "namespace": ns},
            "spec": {"pipelineRef": "clicks"},
        })
    };
    let format = |v: serde_json::Value| {
        let mut doc = pipeline(ns);
        doc["spec"]["format"] = v;
        doc
    };
    let security = |v: serde_json::Value| {
        let mut doc = pipeline(ns);
        doc["spec"]["source"]["kafka"]["security"] = v;
        doc
    };
    // Sent as written (dynamic objects), the way `kubectl apply` sends a user's YAML.
    let pipelines: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<IngestionPipeline>(&()),
    );
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<CompactionPolicy>(&()),
    );
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let refused: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "autoscaler min > max",
            {
                let mut d = pipeline(ns);
                d["spec"]["autoscaler"] =
                    json!({"enabled": true, "minParallelism": 4, "maxParallelism": 2});
                d
            },
            "spec.autoscaler",
            "minParallelism",
        ),
        (
            "upsert without a primary key",
            {
                let mut d = pipeline(ns);
                d["spec"]["sink"]["mode"] = json!("upsert");
                d
            },
            "spec.sink",
            "primaryKey",
        ),
        (
            "both topics and topicPattern",
            {
                let mut d = pipeline(ns);
                d["spec"]["source"]["kafka"]["topicPattern"] = json!("clicks-.*");
                d
            },
            "spec.source.kafka",
            "topicPattern",
        ),
        (
            "SASL without a password source",
            security(json!({"protocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u"}})),
            "spec.source.kafka.security.sasl",
            "password",
        ),
        (
            "TLS client certificate without its key",
            security(json!({"protocol": "SSL", "tls": {"certFile": "/etc/tls/tls.crt"}})),
            "spec.source.kafka.security.tls",
            "keyFile",
        ),
        (
            "SASL protocol without sasl settings",
            security(json!({"protocol": "SASL_SSL"})),
            "spec.source.kafka.security",
            "sasl",
        ),
        (
            "tls settings with PLAINTEXT",
            security(json!({"protocol": "PLAINTEXT", "tls": {"caFile": "/etc/ca.pem"}})),
            "spec.source.kafka.security",
            "tls",
        ),
        (
            "avro without a registry",
            format(json!({"type": "avro"})),
            "spec.format",
            "registry",
        ),
        (
            "basic registry auth without a password source",
            format(
                json!({"type": "avro", "registry": {"url": "http://registry:8081",
                "auth": {"type": "basic", "username": "u"}}}),
            ),
            "spec.format.registry.auth",
            "passwordFile",
        ),
        (
            "bearer registry auth with two token sources",
            format(
                json!({"type": "avro", "registry": {"url": "http://registry:8081",
                "auth": {"type": "bearer", "tokenFile": "/t", "tokenEnv": "T"}}}),
            ),
            "spec.format.registry.auth",
            "tokenFile",
        ),
        (
            "both sink.table and sink.route",
            {
                let mut d = pipeline(ns);
                d["spec"]["sink"]["route"] = json!({"table": "raw.{topic}"});
                d
            },
            "spec.sink",
            "exactly one",
        ),
        (
            "a route without a default table or a rule",
            {
                let mut d = pipeline(ns);
                let sink = d["spec"]["sink"].as_object_mut().expect("sink");
                sink.remove("table");
                sink.insert("route".into(), json!({}));
                d
            },
            "spec.sink.route",
            "at least one rule",
        ),
    ];
    let mut cases = 0;
    for (what, doc, field, word) in &refused {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).with_context(|| what.to_string())?;
        expect_refused(what, pipelines.create(&dry, &obj).await, field, word)?;
        cases += 1;
    }
    let valid: DynamicObject = serde_json::from_value(pipeline(ns))?;
    pipelines
        .create(&dry, &valid)
        .await
        .context("the valid pipeline is accepted")?;
    // The transition rule (the table is immutable) needs a stored object.
    pipelines.create(&PostParams::default(), &valid).await?;
    let moved = pipelines
        .patch(
            "clicks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sink": {"table": "analytics.other"}}})),
        )
        .await;
    expect_refused("a changed sink.table", moved, "spec.sink", "immutable")?;
    cases += 1;
    // The same rule: a switch from one table to a route.
    let switched = pipelines
        .patch(
            "clicks",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"sink": {"table": null, "route": {"table": "raw.{topic}"}}}}),
            ),
        )
        .await;
    expect_refused(
        "sink.table switched to a route",
        switched,
        "spec.sink",
        "immutable",
    )?;
    // A routed pipeline and an Avro one with complete credentials are accepted.
    let mut routed = pipeline(ns);
    routed["spec"]["sink"]
        .as_object_mut()
        .expect("sink")
        .remove("table");
    routed["spec"]["sink"]["route"] =
        json!({"table": "raw.{topic}", "rules": [{"topic": "a.*", "table": "a.{topic}"}]});
    routed["spec"]["format"] = json!({"type": "avro", "registry": {"url": "https://registry:8081",
        "auth": {"type": "basic", "username": "u", "passwordEnv": "REGISTRY_PASSWORD"}}});
    routed["metadata"]["name"] = json!("routed");
    pipelines
        .create(&dry, &serde_json::from_value(routed)?)
        .await
        .context("a routed Avro pipeline is accepted")?;

    let policy_refused: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "tables and pipelineRef both",
            {
                let mut d = policy(ns);
                d["spec"]["tables"] = json!(["analytics.clicks"]);
                d
            },
            "spec",
            "pipelineRef",
        ),
        (
            "tables without a catalog",
            json!({
                "apiVersion": "tidewater.dev/v1alpha1", "kind": "CompactionPolicy",
                "metadata": {"name": "maintenance", "namespace": ns},
                "spec": {"tables": ["analytics.clicks"]},
            }),
            "spec",
            "catalog",
        ),
    ];
    for (what, doc, field, word) in &policy_refused {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).with_context(|| what.to_string())?;
        expect_refused(what, policies.create(&dry, &obj).await, field, word)?;
        cases += 1;
    }
    let valid: DynamicObject = serde_json::from_value(policy(ns))?;
    policies
        .create(&dry, &valid)
        .await
        .context("the valid policy is accepted")?;
    let served = cel_rule_count()?;
    ensure!(
        cases == served,
        "{cases} CEL cases for {served} rules in crds/*.yaml: one case per rule"
    );
    eprintln!("CEL: {cases} rules refused by the API server, valid objects accepted");
    Ok(())
}

/// The `x-kubernetes-validations` rules in the generated CRDs.
fn cel_rule_count() -> Result<usize> {
    let mut n = 0;
    for file in ["ingestionpipeline.yaml", "compactionpolicy.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("crds").join(file))?;
        n += text
            .lines()
            .filter(|l| {
                l.trim_start().starts_with("rule:") || l.trim_start().starts_with("- rule:")
            })
            .count();
    }
    Ok(n)
}

fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    result: kube::Result<T>,
    field: &str,
    word: &str,
) -> Result<()> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            ensure!(
                s.message.contains(&format!("{field}:")) && s.message.contains(word),
                "{what}: the refusal must name {field} and {word}: {}",
                s.message
            );
            eprintln!("CEL refused ({what}): {}", s.message);
            Ok(())
        }
        other => bail!("{what}: expected a 422 refusal, got {other:?}"),
    }
}

/// The operator as a local process; killed when dropped.
struct Operator(Child);

impl Operator {
    fn start(dir: &Path, image: &str) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("operator.log"))?;
        Ok(Self(
            Command::new(operator_bin())
                .args(["run", "--coordinator-address", "podip"])
                .args(["--default-image", image])
                .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .context("start tidewater-operator (cargo build -p tidewater-operator)")?,
        ))
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The servers a pipeline needs, on this machine: broker, S3 (moto), REST catalog.
struct Servers {
    broker: Broker,
    moto: Moto,
    _rest: RestCatalog,
    spec: PipelineSpec,
}

const TOKEN: &str = "e2e-catalog-token";

fn start_servers(dir: &Path) -> Result<Servers> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let moto = Moto::start("lake", &dir.join("moto.log"))?;
    let rest = RestCatalog::start(dir, "s3://lake/warehouse", &moto.props(), TOKEN, &[])?;
    let spec =
        PipelineSpec::clicks(dir, &broker.bootstrap, "clicks").on_rest_and_s3(dir, &rest, &moto)?;
    Ok(Servers {
        broker,
        moto,
        _rest: rest,
        spec,
    })
}

/// Keys under `prefix` in the moto bucket (S3 ListObjectsV2; moto needs no signature).
fn s3_keys(moto: &Moto, prefix: &str) -> Result<Vec<String>> {
    let mut s = TcpStream::connect(("127.0.0.1", moto.port))?;
    write!(
        s,
        "GET /{}?list-type=2&prefix={prefix} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
        moto.bucket, moto.port
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    ensure!(reply.contains(" 200 "), "list {prefix}: {reply}");
    Ok(reply
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(str::to_string)
        .collect())
}

/// Pods run as podman containers of the runtime image when podman and the image are here (the
/// test command builds it), else as local processes of the runtime binary; `TIDEWATER_E2E_PODS
/// =process` forces the fallback. Returns the runner and the image the operator names.
fn pod_runner() -> (Runner, String) {
    let forced = std::env::var("TIDEWATER_E2E_PODS").is_ok_and(|v| v == "process");
    match built_images() {
        Ok((runtime, _)) if !forced => {
            eprintln!("pods run as podman containers of {runtime}");
            (Runner::Podman, runtime)
        }
        other => {
            let why = match other {
                Err(e) => e,
                Ok(_) => "TIDEWATER_E2E_PODS=process".into(),
            };
            eprintln!("pods run as local processes ({why})");
            (Runner::Processes(tidewater_bin()), "tidewater:e2e".into())
        }
    }
}

async fn walk(client: &Client, ns: &str, dir: &Path) -> Result<()> {
    check_short_names().await?;
    let (runner, image) = pod_runner();
    let node = LocalNode::start(
        client.clone(),
        &format!("{ns}-node"),
        ns,
        &dir.join("node"),
        runner,
    )
    .await?;
    let outcome = lifecycle(client, ns, dir, &node, &image).await;
    node.stop().await?;
    outcome
}

/// Prints a step's time as it ends.
struct Step(&'static str, Instant);

impl Step {
    fn new(what: &'static str) -> Self {
        Self(what, Instant::now())
    }
    fn done(self) {
        eprintln!("step {}: {:.1} s", self.0, self.1.elapsed().as_secs_f64());
    }
}

async fn lifecycle(
    client: &Client,
    ns: &str,
    dir: &Path,
    node: &LocalNode,
    image: &str,
) -> Result<()> {
    // The harness's servers are synchronous (and the broker's admin client brings its own
    // runtime): start them off the async workers.
    let d = dir.to_path_buf();
    let servers = tokio::task::spawn_blocking(move || start_servers(&d)).await??;
    let producer = BackgroundProducer::start(&servers.broker, "clicks", 4, 500)?;
    let mut operator = Operator::start(dir, image)?;

    // Secrets the pods get as environment variables: S3 keys and the catalog token.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in [
        ("lake-s3", json!({"id": S3_KEY_ID, "secret": S3_SECRET})),
        ("catalog", json!({"token": TOKEN})),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns}, "stringData": data,
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
    }

    // The example pipeline, pointed at this machine's broker, REST catalog and S3.
    let spec = servers.spec.clone();
    let mut doc: serde_json::Value = serde_yaml::from_str(&spec.yaml())?;
    doc["metadata"]["namespace"] = json!(ns);
    doc["spec"]["sink"]["catalog"]["auth"] =
        json!({"type": "bearer", "secretEnv": "TW_CATALOG_TOKEN"});
    doc["spec"]["secretEnv"] = json!([
        {"name": "AWS_ACCESS_KEY_ID", "secretName": "lake-s3", "key": "id"},
        {"name": "AWS_SECRET_ACCESS_KEY", "secretName": "lake-s3", "key": "secret"},
        {"name": "TW_CATALOG_TOKEN", "secretName": "catalog", "key": "token"},
    ]);
    doc["spec"]["upgradeMode"] = json!("savepoint");
    doc["spec"]["upgradeTimeout"] = json!("40s");
    doc["spec"]["savepointOnDeletion"] = json!(true);
    doc["spec"]["podTemplate"] = node.pod_template();
    // Limits the podman node applies (cgroup memory and CPU), as a kubelet would.
    doc["spec"]["resources"] = json!({
        "coordinator": {"limits": {"memory": "512Mi", "cpu": "1"}},
        "workers": {"limits": {"memory": "1Gi", "cpu": "1"}},
    });
    doc["spec"]["checkpoint"]["interval"] = json!("2s");
    let pipeline: IngestionPipeline = serde_json::from_value(doc)?;
    let api: Api<IngestionPipeline> = Api::namespaced(client.clone(), ns);
    let name = pipeline.name_any();
    let obj = format!("{PIPELINE_SHORT}/{name}");
    let walk_started = Instant::now();

    let step = Step::new("create → kubectl wait Ready");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pipeline),
    )
    .await
    .context("apply the pipeline")?;
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &obj,
        "--timeout=180s",
    ])
    .await?;
    let listed = kubectl(&["get", PIPELINE_SHORT, "-n", ns, "--no-headers"]).await?;
    ensure!(
        listed.starts_with(&name),
        "kubectl get {PIPELINE_SHORT}: {listed}"
    );
    let ready = ready_at_generation(&api, &name, Duration::from_secs(60)).await?;
    ensure!(worker_pods(client, ns).await? == 2, "2 workers");
    step.done();

    // Upgrade with a savepoint, the operator killed -9 while the savepoint is in flight (S3 is
    // paused meanwhile, so neither the workers' files nor the checkpoint record can land):
    // the restarted operator adopts the savepoint it finds in the status and takes no second.
    let step = Step::new("savepoint upgrade, operator killed -9 mid-savepoint");
    let upgrades_before = upgrade_savepoints(&ready);
    let s3 = Paused::new(servers.moto.pid())?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sink": {"writeProperties": {
            "write.parquet.compression-codec": "snappy"}}}})),
    )
    .await?;
    let in_flight = || async {
        let op = api.get(&name).await.ok()?.status?.operation?;
        (op.kind == OperationKind::SavepointUpgrade)
            .then_some(op.savepoint_id)
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let savepoint_id = loop {
        if let Some(id) = in_flight().await {
            break id;
        }
        ensure!(
            Instant::now() < deadline,
            "no savepoint in flight after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    operator.kill9();
    operator = Operator::start(dir, image)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(
        in_flight().await.as_deref() == Some(savepoint_id.as_str()),
        "the restarted operator keeps waiting for savepoint {savepoint_id}"
    );
    drop(s3);
    let upgraded = ready_at_generation(&api, &name, Duration::from_secs(240)).await?;
    let status = upgraded.status.clone().unwrap_or_default();
    ensure!(
        upgrade_savepoints(&upgraded) == upgrades_before + 1,
        "exactly one upgrade savepoint: {:?}",
        status.savepoints
    );
    ensure!(
        status
            .savepoints
            .iter()
            .all(|s| s.path.starts_with("s3://")),
        "savepoints on S3: {:?}",
        status.savepoints
    );
    let sp_prefix = format!("warehouse/_tidewater/{ns}/{name}/savepoints/");
    let stored = s3_keys(&servers.moto, &sp_prefix)?;
    ensure!(
        stored.len() == status.savepoints.len(),
        "one savepoint object per savepoint in the status: {stored:?} vs {:?}",
        status.savepoints
    );
    step.done();

    // `kubectl scale` goes through the /scale subresource.
    let step = Step::new("kubectl scale 2 → 3");
    kubectl(&["scale", "-n", ns, &obj, "--replicas=3"]).await?;
    wait_workers(&api, client, ns, &name, 3).await?;
    step.done();

    // An HPA (autoscaling/v2) on the scale subresource: below its minReplicas it scales up
    // (no metrics server is needed for that).
    let step = Step::new("HPA minReplicas 4 → 4 workers");
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "clicks", "namespace": ns},
        "spec": {
            "scaleTargetRef": {"apiVersion": "tidewater.dev/v1alpha1", "kind": "IngestionPipeline", "name": name},
            "minReplicas": 4, "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}],
        },
    });
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), ns);
    hpas.create(&PostParams::default(), &serde_json::from_value(hpa)?)
        .await?;
    wait_workers(&api, client, ns, &name, 4).await?;
    hpas.delete("clicks", &DeleteParams::default()).await?;
    step.done();

    // The lag autoscaler: from 1 worker under bursts of events, it raises the parallelism.
    let step = Step::new("autoscaler raises parallelism under lag");
    kubectl(&["scale", "-n", ns, &obj, "--replicas=1"]).await?;
    wait_workers(&api, client, ns, &name, 1).await?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"autoscaler": {"enabled": true, "minParallelism": 1,
            "maxParallelism": 4, "targetLagSeconds": 1, "stabilizationWindow": "1s"}}}),
        ),
    )
    .await?;
    let burst = std::sync::Arc::new(servers.broker.producer()?);
    let mut burst_ids = 10_000_000u64..10_000_000;
    let deadline = Instant::now() + Duration::from_secs(240);
    let scaled_to = loop {
        let p = api.get(&name).await?;
        let n = p.status.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
        if n > 1 {
            break n;
        }
        ensure!(
            Instant::now() < deadline,
            "the autoscaler did not raise the parallelism: {:?}",
            p.status
        );
        let next = burst_ids.end..burst_ids.end + 30_000;
        let b = burst.clone();
        let range = next.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            b.send_events("clicks", 4, range)?;
            b.flush()
        })
        .await??;
        burst_ids.end = next.end;
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let bursts = burst_ids.end - burst_ids.start;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaler": null, "parallelism": 2}})),
    )
    .await?;
    wait_workers(&api, client, ns, &name, 2).await?;
    eprintln!("autoscaler: 1 → {scaled_to} under {bursts} burst events");
    step.done();

    // An upgrade that never becomes Ready (the catalog moved to a closed port) is rolled back
    // to the last stable spec after upgradeTimeout.
    let step = Step::new("upgrade never Ready → rolled back after upgradeTimeout");
    let good_uri = spec.catalog_uri.clone();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sink": {"catalog": {
            "uri": format!("http://127.0.0.1:{}", free_port())}}}})),
    )
    .await?;
    wait("rolled back", Duration::from_secs(300), || async {
        let s = api.get(&name).await.ok()?.status?;
        let degraded = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "UpgradeTimedOut");
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (degraded && ready && s.lifecycle_state == Some(LifecycleState::Running)).then_some(())
    })
    .await?;
    let rendered = kubectl(&[
        "get",
        "configmap",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[*].data}",
    ])
    .await?;
    ensure!(
        rendered.contains(&good_uri),
        "the rolled-back pods run the stable catalog URI"
    );
    // Back to the good spec: a new generation, Ready again.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sink": {"catalog": {"uri": good_uri}}}})),
    )
    .await?;
    ready_at_generation(&api, &name, Duration::from_secs(240)).await?;
    step.done();

    // An API server restart: the operator's watches and the local node recover; the operator
    // then carries out a suspension it learns of after the restart.
    match std::env::var("TIDEWATER_E2E_CONTROL_PLANE") {
        Ok(cp) => {
            let step = Step::new("API server restart");
            let script = repo_root().join("scripts/control-plane.sh");
            let out = tokio::task::spawn_blocking(move || {
                Command::new("bash")
                    .arg(script)
                    .args(["restart-apiserver", &cp])
                    .output()
            })
            .await??;
            ensure!(
                out.status.success(),
                "restart the API server: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ready_at_generation(&api, &name, Duration::from_secs(120)).await?;
            step.done();
        }
        Err(_) => eprintln!(
            "SKIPPED API server restart: TIDEWATER_E2E_CONTROL_PLANE is not set (only a control \
             plane started by scripts/control-plane.sh can be restarted by the test)"
        ),
    }

    // Suspend: savepoint with stop, no pods; then resume from it.
    let step = Step::new("suspend → no pods");
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
    step.done();
    let step = Step::new("resume → Ready");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": "running"}})),
    )
    .await?;
    ready_at_generation(&api, &name, Duration::from_secs(180)).await?;
    step.done();

    // Table maintenance while the pipeline runs: a CompactionPolicy on the pipeline, run once
    // now through its runNonce Job; the operator reads the Job's report into the status.
    let step = Step::new("CompactionPolicy run (Job) → status");
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
            "image": image,
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
    let listed = kubectl(&["get", POLICY_SHORT, "-n", ns, "--no-headers"]).await?;
    ensure!(
        listed.starts_with("clicks-maintenance"),
        "kubectl get {POLICY_SHORT}: {listed}"
    );
    step.done();

    // Everything produced lands exactly once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let produced = tokio::task::spawn_blocking(move || producer.finish()).await??;
    let expected = produced + bursts;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = spec.clone();
        let view = tokio::task::spawn_blocking(move || s.inspect()).await??;
        if view.pyiceberg_rows >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Delete: final savepoint behind the finalizer, then the children go.
    let step = Step::new("delete (final savepoint) → gone");
    let before_delete: BTreeSet<String> = s3_keys(&servers.moto, &sp_prefix)?.into_iter().collect();
    api.delete(&name, &DeleteParams::default()).await?;
    wait("pipeline deleted", Duration::from_secs(180), || async {
        match api.get_opt(&name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await?;
    let after_delete: BTreeSet<String> = s3_keys(&servers.moto, &sp_prefix)?.into_iter().collect();
    ensure!(
        after_delete.difference(&before_delete).count() == 1,
        "one final savepoint at deletion: before {before_delete:?}, after {after_delete:?}"
    );
    step.done();

    let view = tokio::task::spawn_blocking(move || spec.inspect()).await??;
    view.assert_exactly(expected);
    eprintln!(
        "kubernetes e2e: {expected} events exactly once (PyIceberg and DuckDB), {} savepoints on \
         S3, walk {:.1} s",
        after_delete.len(),
        walk_started.elapsed().as_secs_f64()
    );
    drop(operator);
    Ok(())
}

/// A process paused with SIGSTOP until dropped (SIGCONT), by PID.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Result<Self> {
        signal(pid, "STOP")?;
        Ok(Self(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

fn upgrade_savepoints(p: &IngestionPipeline) -> usize {
    p.status.as_ref().map_or(0, |s| {
        s.savepoints
            .iter()
            .filter(|s| s.trigger == SavepointTrigger::Upgrade)
            .count()
    })
}

async fn wait_workers(
    api: &Api<IngestionPipeline>,
    client: &Client,
    ns: &str,
    name: &str,
    n: i32,
) -> Result<()> {
    wait(
        &format!("{n} workers"),
        Duration::from_secs(180),
        || async {
            let p = api.get(name).await.ok()?;
            let running = worker_pods(client, ns).await.ok()?;
            (p.status?.parallelism == Some(n) && running == n as usize).then_some(())
        },
    )
    .await?;
    ready_at_generation(api, name, Duration::from_secs(120)).await?;
    Ok(())
}

/// Waits until the pipeline is Ready and Running for its current generation, with no
/// operation in flight.
async fn ready_at_generation(
    api: &Api<IngestionPipeline>,
    name: &str,
    timeout: Duration,
) -> Result<IngestionPipeline> {
    let deadline = Instant::now() + timeout;
    loop {
        // Errors (an API server restarting) are retried until the deadline.
        if let Ok(p) = api.get(name).await {
            let generation = p.metadata.generation;
            if let Some(s) = &p.status {
                let ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let settled =
                    s.operation.is_none() && s.lifecycle_state == Some(LifecycleState::Running);
                if ready && settled && s.observed_generation == generation {
                    return Ok(p);
                }
                if s.lifecycle_state == Some(LifecycleState::Failed) {
                    bail!("pipeline failed: {:?}", s.conditions);
                }
            }
            if Instant::now() > deadline {
                bail!("not Ready at generation {generation:?}: {:?}", p.status);
            }
        } else if Instant::now() > deadline {
            bail!("the pipeline could not be read for {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn worker_pods(client: &Client, ns: &str) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/component=worker"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count())
}

async fn all_pods(client: &Client, ns: &str) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api.list(&ListParams::default()).await?.items.len())
}
