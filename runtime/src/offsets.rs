//! The base types of the data path: a Kafka partition and the next offset to read per
//! partition. Every stage depends on these; they depend on nothing in the crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Next offset to read, per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// A Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// Sets `offsets[topic][partition] = next`.
pub fn set_offset(offsets: &mut Offsets, topic: &str, partition: i32, next: i64) {
    offsets
        .entry(topic.to_string())
        .or_default()
        .insert(partition, next);
}

/// Looks up `offsets[topic][partition]`.
pub fn get_offset(offsets: &Offsets, topic: &str, partition: i32) -> Option<i64> {
    offsets.get(topic).and_then(|p| p.get(&partition)).copied()
}
