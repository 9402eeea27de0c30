//! Kafka I/O helpers on rdkafka: client configuration, partition discovery, start-offset
//! resolution, lag, progress commits to the consumer group, and the dead-letter producer.
//! All calls here block; callers run them off the async executor.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};
use tidewater_crds::{pipeline::KafkaSecuritySpec, types::StartingOffsets};

use crate::{
    config::{DeadLetter, PipelineConfig},
    offsets::{Offsets, TopicPartition},
};

const META_TIMEOUT: Duration = Duration::from_secs(10);

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
        let password = match (&sasl.password_file, &sasl.password_env) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| {
                    ClientError::Security(format!("sasl.passwordFile: cannot read {f}: {e}"))
                })?,
            (None, Some(v)) => std::env::var(v).map_err(|_| {
                ClientError::Security(format!(
                    "sasl.passwordEnv: environment variable {v} is not set"
                ))
            })?,
            (None, None) => {
                return Err(ClientError::Security(
                    "sasl: no passwordFile or passwordEnv".into(),
                ));
            }
        };
        props.push(("sasl.mechanism", sasl.mechanism.as_str().to_string()));
        props.push(("sasl.username", sasl.username.clone()));
        props.push(("sasl.password", password));
    }
    Ok(props)
}

fn apply_security(
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

/// All partitions of the subscribed topics that exist now (missing topics are skipped); with
/// a pattern, of every topic `reads` accepts.
pub fn discover_partitions(
    consumer: &KafkaConsumer,
    topics: &[String],
    reads: impl Fn(&str) -> bool,
) -> Result<Vec<TopicPartition>, KafkaError> {
    let mut out = Vec::new();
    let queries: Vec<Option<&str>> = if topics.is_empty() {
        vec![None]
    } else {
        topics.iter().map(|t| Some(t.as_str())).collect()
    };
    for topic in queries {
        let metadata = consumer.fetch_metadata(topic, META_TIMEOUT)?;
        for t in metadata.topics().iter().filter(|t| reads(t.name())) {
            let topic = t.name();
            if t.error().is_some() {
                tracing::debug!(topic, error = ?t.error(), "topic not available yet");
                continue;
            }
            for p in t.partitions() {
                out.push(TopicPartition {
                    topic: t.name().to_string(),
                    partition: p.id(),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The concrete offset where `policy` starts in a partition.
pub fn resolve_start(
    consumer: &KafkaConsumer,
    tp: &TopicPartition,
    policy: StartingOffsets,
) -> Result<i64, KafkaError> {
    let (low, high) = consumer.fetch_watermarks(&tp.topic, tp.partition, META_TIMEOUT)?;
    match policy {
        StartingOffsets::Earliest => Ok(low),
        StartingOffsets::Latest => Ok(high),
        StartingOffsets::Timestamp(t) => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &tp.topic,
                tp.partition,
                Offset::Offset(t.timestamp_millis()),
            )?;
            let found = consumer.offsets_for_times(tpl, META_TIMEOUT)?;
            let offset = found
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset());
            Ok(match offset {
                Some(Offset::Offset(o)) => o,
                _ => high,
            })
        }
    }
}

/// High watermark minus next offset for every partition in `offsets`.
pub fn lag(consumer: &KafkaConsumer, offsets: &Offsets) -> Vec<(TopicPartition, i64)> {
    let mut out = Vec::new();
    for (topic, parts) in offsets {
        for (&partition, &next) in parts {
            if let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, META_TIMEOUT) {
                out.push((
                    TopicPartition {
                        topic: topic.clone(),
                        partition,
                    },
                    (high - next).max(0),
                ));
            }
        }
    }
    out
}

/// Writes committed offsets to the consumer group so lag tools can see progress. Never read
/// back by Tidewater.
pub fn commit_group_offsets(consumer: &KafkaConsumer, offsets: &Offsets) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in offsets {
        for (&partition, &next) in parts {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// Counts failed dead-letter deliveries.
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().expect("lock") = Some(e.to_string());
        }
    }
}

/// Sends records that cannot be converted to the dead-letter topic, unchanged, with headers
/// that say why and where they came from.
pub struct DeadLetterProducer {
    producer: BaseProducer<DeliveryTracker>,
    topic: String,
    pipeline: String,
}

/// Header names on dead-lettered records.
pub mod headers {
    /// Human-readable reason.
    pub const ERROR: &str = "tidewater.error";
    /// Stable reason kind (`wrong-type`, `invalid-json`, …).
    pub const ERROR_KIND: &str = "tidewater.error.kind";
    /// Source topic.
    pub const TOPIC: &str = "tidewater.source.topic";
    /// Source partition.
    pub const PARTITION: &str = "tidewater.source.partition";
    /// Source offset.
    pub const OFFSET: &str = "tidewater.source.offset";
    /// Pipeline name.
    pub const PIPELINE: &str = "tidewater.pipeline";
}

impl DeadLetterProducer {
    /// A producer for the pipeline's dead-letter topic.
    pub fn new(dl: &DeadLetter, pipeline: &str) -> Result<Self, ClientError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &dl.bootstrap_servers)
            .set("message.max.bytes", "104857600")
            .set("linger.ms", "5")
            .set("acks", "all");
        apply_security(&mut config, dl.security.as_ref())?;
        let producer = config.create_with_context(DeliveryTracker::default())?;
        Ok(Self {
            producer,
            topic: dl.topic.clone(),
            pipeline: pipeline.to_string(),
        })
    }

    /// Queues `message` with its reason. Blocks while the local queue is full.
    pub fn send(
        &self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
    ) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut h = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                h = h.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let h = h
            .insert(Header {
                key: headers::ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::ERROR_KIND,
                value: Some(kind),
            })
            .insert(Header {
                key: headers::TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: headers::PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: headers::OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: headers::PIPELINE,
                value: Some(&self.pipeline),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(h);
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        if let Some(p) = message.payload() {
            record = record.payload(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until every queued record is acknowledged; fails if any delivery failed since
    /// the last flush.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        self.producer
            .flush(timeout)
            .map_err(|e| format!("dead-letter flush: {e}"))?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = self
                .producer
                .context()
                .last_error
                .lock()
                .expect("lock")
                .clone();
            return Err(format!(
                "{failed} dead-letter record(s) could not be delivered to {}: {}",
                self.topic,
                last.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Serves delivery callbacks without blocking.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }
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
