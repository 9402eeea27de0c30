//! What the brokers know: partitions of the subscribed topics, where a policy starts in a
//! partition, lag, and progress commits to the consumer group (for lag tools only).

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
    error::KafkaError,
};
use tidewater_crds::types::StartingOffsets;

use crate::offsets::{Offsets, TopicPartition};

use super::{KafkaConsumer, META_TIMEOUT};

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
