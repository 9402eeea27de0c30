//! Kafka clients from the spec: librdkafka properties (bootstrap, TLS, SASL with the password
//! from its file or variable), and the consumer whose context remembers the last error.

use std::{sync::Mutex, time::Duration};

use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
};
use tidewater_crds::pipeline::KafkaSecuritySpec;

use crate::{config::PipelineConfig, secret::SecretRef};

/// A Kafka client could not be configured or created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A TLS / SASL setting could not be resolved (names the field).
    #[error("spec.source.kafka.security.{0}")]
    Security(String),
    /// librdkafka refused the configuration.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// librdkafka properties for `security`, with the SASL password read from its file or
/// variable.
pub fn security_properties(
    security: &KafkaSecuritySpec,
) -> Result<Vec<(&'static str, String)>, ClientError> {
    let mut props = vec![("security.protocol", security.protocol.as_str().to_string())];
    if let Some(tls) = &security.tls {
        let files = [
            ("ssl.ca.location", &tls.ca_file),
            ("ssl.certificate.location", &tls.cert_file),
            ("ssl.key.location", &tls.key_file),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                props.push((key, path.clone()));
            }
        }
    }
    if let Some(sasl) = &security.sasl {
        let password = SecretRef {
            file: sasl.password_file.as_deref(),
            file_field: "sasl.passwordFile",
            env: sasl.password_env.as_deref(),
            env_field: "sasl.passwordEnv",
        }
        .read()
        .map_err(|e| ClientError::Security(e.to_string()))?
        .ok_or_else(|| ClientError::Security("sasl: no passwordFile or passwordEnv".into()))?;
        props.push(("sasl.mechanism", sasl.mechanism.as_str().to_string()));
        props.push(("sasl.username", sasl.username.clone()));
        props.push(("sasl.password", password));
    }
    Ok(props)
}

pub(super) fn apply_security(
    c: &mut ClientConfig,
    security: Option<&KafkaSecuritySpec>,
) -> Result<(), ClientError> {
    if let Some(security) = security {
        for (key, value) in security_properties(security)? {
            c.set(key, value);
        }
    }
    Ok(())
}

/// Base consumer configuration: manual assignment, no auto commit, offsets from checkpoints.
fn consumer_config(config: &PipelineConfig) -> Result<ClientConfig, ClientError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.consumer_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "100")
        // librdkafka 2.x backs the fetcher off for 1 s (default) whenever the local queue is
        // above its thresholds; when conversion is slower than the network that idles the
        // worker most of the time (measured: 2M records took 10.1 s wall for 3.0 CPU-s;
        // with 100 ms, 2.65 s wall for 2.9 CPU-s). See docs/benchmarks.md.
        .set("fetch.queue.backoff.ms", "100")
        .set("client.id", format!("tidewater-{}", config.name));
    for (k, v) in &config.consumer_properties {
        c.set(k, v);
    }
    apply_security(&mut c, config.kafka_security.as_ref())?;
    Ok(c)
}

/// Client context that keeps the last error librdkafka reported (an authentication or TLS
/// failure), so a later timeout can name its cause.
#[derive(Default)]
pub struct Remembering {
    last: Mutex<Option<String>>,
}

impl Remembering {
    /// The last reported client error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Remembering {
    fn remember(&self, reason: &str) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(reason.to_string());
        }
    }
}

impl ClientContext for Remembering {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {message}");
                self.remember(message);
            }
            L::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
            L::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", %error, "{reason}");
        self.remember(reason);
    }
}

impl ConsumerContext for Remembering {}

/// The consumer type used by coordinator and workers.
pub type KafkaConsumer = BaseConsumer<Remembering>;

/// `error` with the client's last reported error appended, when there is one.
pub fn with_cause(consumer: &KafkaConsumer, error: impl std::fmt::Display) -> String {
    // Errors and logs reach the context only when the client is served.
    for _ in 0..16 {
        match consumer.poll(Duration::ZERO) {
            Some(Err(e)) => consumer.context().remember(&e.to_string()),
            Some(Ok(_)) => {}
            None => break,
        }
    }
    match consumer.context().last_error() {
        Some(cause) => format!("{error} (last client error: {cause})"),
        None => error.to_string(),
    }
}

/// A consumer with the pipeline's configuration (workers assign it; the coordinator uses one
/// for metadata, watermarks and group commits).
pub fn consumer(config: &PipelineConfig) -> Result<KafkaConsumer, ClientError> {
    Ok(consumer_config(config)?.create_with_context(Remembering::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(yaml: &str) -> KafkaSecuritySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn security_properties_read_the_password_and_name_missing_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let spec = security(&format!(
            "protocol: SASL_SSL\n\
             tls: {{caFile: /ca.crt, certFile: /c.crt, keyFile: /c.key}}\n\
             sasl: {{mechanism: SCRAM-SHA-512, username: tw, passwordFile: {}}}\n",
            file.display()
        ));
        let props = security_properties(&spec).unwrap();
        let expected: Vec<(&str, String)> = vec![
            ("security.protocol", "SASL_SSL".into()),
            ("ssl.ca.location", "/ca.crt".into()),
            ("ssl.certificate.location", "/c.crt".into()),
            ("ssl.key.location", "/c.key".into()),
            ("sasl.mechanism", "SCRAM-SHA-512".into()),
            ("sasl.username", "tw".into()),
            ("sasl.password", "s3cret".into()),
        ];
        assert_eq!(props, expected);

        let missing = security(
            "protocol: SASL_PLAINTEXT\n\
             sasl: {mechanism: PLAIN, username: tw, passwordEnv: TIDEWATER_TEST_UNSET_PASSWORD}\n",
        );
        let err = security_properties(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.source.kafka.security.sasl.passwordEnv: environment variable \
             TIDEWATER_TEST_UNSET_PASSWORD is not set"
        );
    }
}
