//! Helpers for suites that run against a real Kubernetes API server (the one `KUBECONFIG`
//! names): why a suite must skip, a namespace per test (deleted afterwards, its objects and
//! Events kept when the test fails), the CRDs installed, `kubectl`, and polling.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tidewater_crds::IngestionPipeline;

use crate::{install_crypto_provider, repo_root};

/// Field manager of the suites' own writes.
pub const MANAGER: &str = "tidewater-e2e";

/// Why a suite cannot run here (no `KUBECONFIG`, no `kubectl`), if it cannot.
pub fn skip_reason() -> Option<String> {
    if std::env::var_os("KUBECONFIG").is_none() {
        return Some(
            "KUBECONFIG is not set, so there is no API server to test against".to_string(),
        );
    }
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if !kubectl.is_ok_and(|o| o.status.success()) {
        return Some("kubectl is not on PATH".to_string());
    }
    None
}

/// A runtime for a suite's async body (installs the TLS provider first).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    install_crypto_provider();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?)
}

/// Runs `body` in a fresh namespace (deleted afterwards) with a scratch directory, kept when
/// the body fails.
pub async fn in_namespace<F, Fut>(what: &str, body: F) -> Result<()>
where
    F: FnOnce(Client, String, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let client = Client::try_default()
        .await
        .context("connect to KUBECONFIG's API server")?;
    install_crds(&client).await?;
    let dir = tempfile::tempdir()?;
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    let ns = format!("tidewater-e2e-{what}-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let result = body(client.clone(), ns.clone(), dir.path().to_path_buf()).await;
    if result.is_err() {
        // The operator is gone: release its finalizers, or the namespace never goes.
        let pipelines: Api<IngestionPipeline> = Api::namespaced(client.clone(), &ns);
        for p in pipelines
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = pipelines
                .patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        // What a user would look at: the objects and the namespace's Events.
        for (file, args) in [
            (
                "objects.yaml",
                vec![
                    "get",
                    "twp,twcp,pods,jobs,statefulsets,deployments",
                    "-o",
                    "yaml",
                ],
            ),
            (
                "events.txt",
                vec!["get", "events", "--sort-by=.lastTimestamp"],
            ),
        ] {
            let mut args = args.clone();
            args.extend(["-n", ns.as_str()]);
            let text = kubectl(&args).await.unwrap_or_else(|e| format!("{e:#}"));
            if file == "events.txt" {
                eprintln!("events in {ns}:\n{text}");
            }
            let _ = std::fs::write(dir.path().join(file), text);
        }
        eprintln!(
            "kubernetes e2e failed; files kept in {}",
            dir.path().display()
        );
        std::mem::forget(dir);
    }
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result
}

pub async fn install_crds(client: &Client) -> Result<()> {
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

/// `kubectl` with the test's KUBECONFIG; returns stdout, fails with stderr.
pub async fn kubectl(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("kubectl").args(&args).output()?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await?
}

/// Polls `f` every 500 ms until it returns `Some` or `timeout` passes.
pub async fn wait<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
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
