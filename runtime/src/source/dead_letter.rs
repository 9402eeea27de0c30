//! The dead-letter producer: records that cannot be decoded go, unchanged, to the
//! dead-letter topic with headers that say why and where they came from.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext, Message,
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};

use super::client::{ClientError, apply_security};
use crate::config::DeadLetter;

/// Dead letters that did not reach their topic: the checkpoint must not complete.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The producer could not flush within the timeout.
    #[error("dead-letter flush: {0}")]
    Flush(#[source] KafkaError),
    /// Deliveries failed since the last flush.
    #[error("{failed} dead-letter record(s) could not be delivered to {topic}: {last_error}")]
    Undelivered {
        /// How many.
        failed: u64,
        /// The dead-letter topic.
        topic: String,
        /// The last delivery error librdkafka reported.
        last_error: String,
    },
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
    pub fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError> {
        self.producer
            .flush(timeout)
            .map_err(DeadLetterError::Flush)?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = self
                .producer
                .context()
                .last_error
                .lock()
                .expect("lock")
                .clone();
            return Err(DeadLetterError::Undelivered {
                failed,
                topic: self.topic.clone(),
                last_error: last.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Serves delivery callbacks without blocking.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }
}
