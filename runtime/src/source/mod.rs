//! The source stage: Kafka on rdkafka. `client` builds consumers from the spec, `admin` asks
//! the brokers (partitions, start offsets, lag, group progress), `dead_letter` sends what
//! cannot be decoded. Those calls block; callers run them off the async executor. `registry`
//! (async) fetches Avro writer schemas.

use std::time::Duration;

mod admin;
mod client;
mod dead_letter;
pub mod registry;

pub use admin::{commit_group_offsets, discover_partitions, lag, resolve_start};
pub use client::{
    ClientError, KafkaConsumer, Remembering, consumer, security_properties, with_cause,
};
pub use dead_letter::{DeadLetterError, DeadLetterProducer, DeliveryTracker, headers};

/// How long a metadata, watermark or offset query may take.
const META_TIMEOUT: Duration = Duration::from_secs(10);
