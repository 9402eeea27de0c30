//! `tidewater run` with data, metadata and state on S3 (moto) behind a REST catalog reached
//! over https (a CA made for the test) with OAuth2 client credentials from the environment,
//! while the catalog answers every second commit with HTTP 500 although it landed ("commit
//! state unknown"). Exactly once, checked by PyIceberg and DuckDB through the same catalog.

use std::time::Duration;

use anyhow::{Context, Result};
use tidewater_e2e::{
    BackgroundProducer, Broker, Moto, PipelineSpec, RestCatalog, Tidewater, wait_for_rows,
};

#[test]
fn https_oauth2_rest_catalog_with_unknown_commit_states() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 4)?;
    let moto = Moto::start("lake", &dir.path().join("moto.log"))?;
    let rest = RestCatalog::start_tls_oauth(
        dir.path(),
        "s3://lake/warehouse",
        &moto.props(),
        &["--fail-after-commit", "2"],
    )?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks").on_rest_and_s3(
        dir.path(),
        &rest,
        &moto,
    )?;
    assert!(spec.yaml().contains("type: oauth2") && spec.yaml().contains("caFile:"));
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = BackgroundProducer::start(&broker, "clicks", 4, 1000)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(60))
        .with_context(|| tw.log_text())?;
    std::thread::sleep(Duration::from_secs(8));
    let produced = producer.finish()?;
    wait_for_rows(&spec, produced, Duration::from_secs(90))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );

    let view = spec.inspect()?;
    assert_eq!(view.pyiceberg_rows, produced, "PyIceberg rows: {view:?}");
    assert_eq!(view.pyiceberg_distinct, produced, "PyIceberg distinct ids");
    assert_eq!(view.duckdb_rows, produced, "DuckDB rows");
    assert_eq!(view.duckdb_distinct, produced, "DuckDB distinct ids");
    let injected = RestCatalog::log_text(dir.path())
        .matches("injected failure")
        .count();
    assert!(
        injected >= 2,
        "the catalog should have failed some commits: {injected}"
    );
    assert!(
        tw.log_text().contains("commit failed; retrying"),
        "{}",
        tw.log_text()
    );
    eprintln!("{injected} commits answered 500 after landing; {produced} rows exactly once");
    Ok(())
}

#[test]
fn a_wrong_oauth2_secret_is_reported_clearly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("clicks", 1)?;
    let moto = Moto::start("lake", &dir.path().join("moto.log"))?;
    let rest = RestCatalog::start_tls_oauth(dir.path(), "s3://lake/warehouse", &moto.props(), &[])?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks").on_rest_and_s3(
        dir.path(),
        &rest,
        &moto,
    )?;
    // The same pipeline, but its secret comes from a file holding a wrong one.
    let secret = dir.path().join("wrong-credential");
    std::fs::write(&secret, "tidewater:not-the-secret\n")?;
    let yaml = spec.yaml().replace(
        "secretEnv: TW_TEST_CATALOG_CREDENTIAL",
        &format!("secretFile: {}", secret.display()),
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    let exit = tw
        .wait_timeout(Duration::from_secs(60))
        .context("tidewater should stop on a refused credential")?;
    assert!(!exit.success());
    let log = tw.log_text();
    assert!(
        log.contains("invalid_client") || log.contains("401"),
        "{log}"
    );
    Ok(())
}
