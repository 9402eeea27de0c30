//! Status conditions both controllers write, built purely from the observed time.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `now` as a Kubernetes timestamp.
pub fn time(now: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(now.timestamp_millis())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The `Degraded` condition of a spec that schema and CEL rules let through but that cannot
/// run as written.
pub fn invalid_spec(message: &str, generation: Option<i64>, now: DateTime<Utc>) -> Condition {
    Condition {
        type_: "Degraded".into(),
        status: "True".into(),
        reason: "InvalidSpec".into(),
        message: message.into(),
        last_transition_time: time(now),
        observed_generation: generation,
    }
}
