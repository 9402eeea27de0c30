//! Kafka over TLS and SASL: `spec.source.kafka.security` with SCRAM-SHA-512 over TLS (CA
//! verified, password from a file, dead-letter producer on the same secured cluster), mutual
//! TLS with a client certificate, and a wrong password that stops the pipeline with a clear
//! error instead of retrying forever. The broker is reached only through the TLS/SASL gateway
//! (e2e/servers/kafka_gateway.py); exactly once is checked with PyIceberg and DuckDB.

use std::time::Duration;

use anyhow::{Context, Result};
use tidewater_e2e::{
    BackgroundProducer, Broker, KafkaSecurity, PipelineSpec, Tidewater, wait_for_rows,
};

const USER: &str = "tidewater";
const PASSWORD: &str = "scram-s3cret";

fn client(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn scram_over_tls_with_dead_letters_is_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("kafka-certs");
    let security = KafkaSecurity {
        tls: true,
        client_certificate: false,
        users: vec![(USER.into(), PASSWORD.into())],
    };
    let ca = certs.join("ca.pem").display().to_string();
    let (broker, files) = Broker::start_secured(
        dir.path(),
        &security,
        client(&[
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", &ca),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", USER),
            ("sasl.password", PASSWORD),
        ]),
    )?;
    broker.create_topic("clicks", 3)?;
    broker.create_topic("clicks-dlq", 1)?;
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.dead_letter = Some("clicks-dlq".into());
    spec.kafka_security = Some(format!(
        "        protocol: SASL_SSL\n        tls:\n          caFile: {}\n        sasl:\n          \
         mechanism: SCRAM-SHA-512\n          username: {USER}\n          passwordFile: {}\n",
        files.ca_file.display(),
        password_file.display()
    ));
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    assert!(!spec.yaml().contains(PASSWORD), "the spec holds no secret");

    let producer = BackgroundProducer::start(&broker, "clicks", 3, 2000)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    tw.wait_healthy(Duration::from_secs(60))
        .with_context(|| tw.log_text())?;
    std::thread::sleep(Duration::from_secs(4));
    let bad = broker.producer()?;
    bad.send("clicks", 0, br#"{"id": "not a number"}"#)?;
    bad.flush()?;
    std::thread::sleep(Duration::from_secs(3));
    let produced = producer.finish()?;
    wait_for_rows(&spec, produced, Duration::from_secs(90))?;
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );

    let view = spec.inspect()?;
    view.assert_exactly(produced);
    let dead = broker.consume_all("clicks-dlq", 1, Duration::from_secs(30))?;
    assert_eq!(
        dead.len(),
        1,
        "the bad record is dead-lettered over SASL_SSL"
    );
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(&br#"{"id": "not a number"}"#[..])
    );
    let gateway = std::fs::read_to_string(dir.path().join("kafka-gateway.log"))?;
    assert!(!gateway.contains("refused"), "{gateway}");
    eprintln!("SASL_SSL SCRAM-SHA-512: {produced} events, 1 dead-lettered, exactly once");
    Ok(())
}

#[test]
fn mutual_tls_with_a_client_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("kafka-certs");
    let security = KafkaSecurity {
        tls: true,
        client_certificate: true,
        users: Vec::new(),
    };
    let path = |f: &str| certs.join(f).display().to_string();
    let (broker, files) = Broker::start_secured(
        dir.path(),
        &security,
        client(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", &path("ca.pem")),
            ("ssl.certificate.location", &path("server.pem")),
            ("ssl.key.location", &path("server.key")),
        ]),
    )?;
    broker.create_topic("clicks", 2)?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.kafka_security = Some(format!(
        "        protocol: SSL\n        tls:\n          caFile: {}\n          certFile: {}\n          \
         keyFile: {}\n",
        files.ca_file.display(),
        files.cert_file.display(),
        files.key_file.display()
    ));
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 2, 0..5000)?;
    producer.flush()?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    wait_for_rows(&spec, 5000, Duration::from_secs(90)).with_context(|| tw.log_text())?;
    assert!(tw.stop(Duration::from_secs(60))?.success());
    let view = spec.inspect()?;
    assert_eq!((view.pyiceberg_rows, view.pyiceberg_distinct), (5000, 5000));
    assert_eq!((view.duckdb_rows, view.duckdb_distinct), (5000, 5000));
    Ok(())
}

#[test]
fn a_wrong_password_stops_with_an_authentication_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let security = KafkaSecurity {
        tls: false,
        client_certificate: false,
        users: vec![(USER.into(), PASSWORD.into())],
    };
    let (broker, _) = Broker::start_secured(
        dir.path(),
        &security,
        client(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", USER),
            ("sasl.password", PASSWORD),
        ]),
    )?;
    broker.create_topic("clicks", 1)?;
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, "wrong")?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.kafka_security = Some(format!(
        "        protocol: SASL_PLAINTEXT\n        sasl:\n          mechanism: SCRAM-SHA-256\n          \
         username: {USER}\n          passwordFile: {}\n",
        password_file.display()
    ));
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    let status = tw
        .wait_timeout(Duration::from_secs(60))
        .with_context(|| format!("still running: {}", tw.log_text()))?;
    assert!(!status.success());
    let log = tw.log_text();
    assert!(
        log.contains("authentication failed for user tidewater"),
        "the error names the cause: {log}"
    );
    let fatal = log
        .lines()
        .find(|l| l.starts_with("tidewater: "))
        .unwrap_or_default();
    assert!(
        fatal.contains("authentication failed for user tidewater"),
        "the final error names the cause: {fatal}"
    );
    eprintln!("wrong password: {status}; {fatal}");
    Ok(())
}
