//! Leader election on a `coordination.k8s.io` Lease, so several operator replicas can run and
//! only one reconciles. `decide` is pure (the observed Lease → what to write); the I/O writes
//! with the observed resourceVersion, so of two candidates in one round only one wins.
//!
//! Expiry is judged the way client-go does it, by local time: a Lease whose holder and renew
//! time have not changed for `lease_duration` since this candidate first saw them is expired,
//! whatever the clocks of the nodes say. A leader that cannot renew within `renew_deadline`
//! stops (the process exits and restarts as a candidate), and a leader shutting down releases
//! the Lease so the next one takes over at once.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::time::Instant;

/// How long a Lease is valid without renewal, and how often candidates and the leader act.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Written into the Lease: others may take it this long after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long gives up (less than `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s / 10 s / 2 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one round decides to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create(LeaseSpec),
    /// Write this spec over the observed Lease (renew ours, or take an expired or released one).
    Write(LeaseSpec),
    /// Someone else holds a live Lease.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// The pure decision of one round: `observed` is the Lease's spec (none: no Lease),
/// `unchanged_for` how long its holder and renew time have looked the same to us.
pub fn decide(
    observed: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    timing: Timing,
    now: MicroTime,
) -> Step {
    let duration = i32::try_from(timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let mine = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(duration),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now.clone()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(spec) = observed else {
        return Step::Create(mine(None, 0));
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == me {
        return Step::Write(mine(spec.acquire_time.clone(), transitions));
    }
    let their_duration = spec
        .lease_duration_seconds
        .map_or(timing.lease_duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    if holder.is_empty() || unchanged_for >= their_duration {
        return Step::Write(mine(None, transitions + 1));
    }
    Step::Wait { holder }
}

/// Why a round did not make us the leader, or why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {name}: {source}")]
    Api {
        /// The Lease.
        name: String,
        /// What the client said.
        source: kube::Error,
    },
    /// The leader could not renew within the renew deadline.
    #[error("lease {name}: not renewed for {elapsed:?} (deadline {deadline:?}): leadership lost")]
    Lost {
        /// The Lease.
        name: String,
        /// Since the last successful renewal.
        elapsed: Duration,
        /// `Timing::renew_deadline`.
        deadline: Duration,
    },
}

/// One candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// (holder, renew time) as last observed, and when it was first observed so.
    seen: Option<(String, Option<MicroTime>, Instant)>,
}

impl Elector {
    /// A candidate called `identity` for Lease `name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            seen: None,
        }
    }

    /// Who this candidate is.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            name: self.name.clone(),
            source,
        }
    }

    /// One round: observe, decide, write. `Ok(None)` when we hold the Lease afterwards,
    /// `Ok(Some(holder))` when someone else does (or won this round).
    pub async fn try_acquire_or_renew(&mut self) -> Result<Option<String>, LeaderError> {
        let observed = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?;
        let spec = observed.as_ref().and_then(|l| l.spec.clone());
        let key = spec.as_ref().map(|s| {
            (
                s.holder_identity.clone().unwrap_or_default(),
                s.renew_time.clone(),
            )
        });
        let unchanged_for = match (&self.seen, &key) {
            (Some((h, r, since)), Some((h2, r2))) if h == h2 && r == r2 => since.elapsed(),
            _ => {
                self.seen = key.map(|(h, r)| (h, r, Instant::now()));
                Duration::ZERO
            }
        };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let step = decide(
            spec.as_ref(),
            &self.identity,
            unchanged_for,
            self.timing,
            now,
        );
        let written = match step {
            Step::Wait { holder } => return Ok(Some(holder)),
            Step::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Write(spec) => {
                let mut lease = observed.unwrap_or_default();
                lease.spec = Some(spec);
                // `replace` sends the observed resourceVersion: a concurrent write is a 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                self.seen = Some((
                    spec.holder_identity.unwrap_or_default(),
                    spec.renew_time,
                    Instant::now(),
                ));
                Ok(None)
            }
            // Another candidate wrote first (created it, or changed it since we read it).
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some("another candidate".into())),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(None) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Some(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, %holder, "waiting for the leader's lease");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews every retry period while leading; returns when a renewal has not succeeded
    /// within the renew deadline (or another candidate took the Lease).
    pub async fn keep(&mut self) -> LeaderError {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(None) => renewed = Instant::now(),
                Ok(Some(holder)) => tracing::warn!(%holder, "lease renewal lost a race"),
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
            if renewed.elapsed() >= self.timing.renew_deadline {
                return LeaderError::Lost {
                    name: self.name.clone(),
                    elapsed: renewed.elapsed(),
                    deadline: self.timing.renew_deadline,
                };
            }
        }
    }

    /// Gives the Lease up (holder cleared) if we still hold it, so the next candidate takes
    /// over at its next retry instead of after the lease duration.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.name, "released");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn held(by: &str, renew: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(at(0)),
            renew_time: Some(at(renew)),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_is_created_held_by_us() {
        let Step::Create(spec) = decide(None, "a", Duration::ZERO, Timing::default(), at(5)) else {
            panic!("create");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(
            (spec.acquire_time, spec.renew_time),
            (Some(at(5)), Some(at(5)))
        );
    }

    #[test]
    fn our_lease_is_renewed_keeping_its_acquire_time() {
        let step = decide(
            Some(&held("a", 3)),
            "a",
            Duration::from_secs(60),
            Timing::default(),
            at(9),
        );
        let Step::Write(spec) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (spec.acquire_time, spec.renew_time),
            (Some(at(0)), Some(at(9)))
        );
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for_by_local_time_not_its_clock() {
        // Its renew time is far in the past by our clock (skew), but we saw it change 5 s ago.
        let step = decide(
            Some(&held("b", -3600)),
            "a",
            Duration::from_secs(5),
            Timing::default(),
            at(9),
        );
        assert_eq!(step, Step::Wait { holder: "b".into() });
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_with_a_transition() {
        for (spec, unchanged) in [
            (held("b", 3), Duration::from_secs(15)),
            (
                LeaseSpec {
                    holder_identity: None,
                    ..held("b", 3)
                },
                Duration::ZERO,
            ),
        ] {
            let step = decide(Some(&spec), "a", unchanged, Timing::default(), at(30));
            let Step::Write(mine) = step else {
                panic!("{step:?}")
            };
            assert_eq!(mine.holder_identity.as_deref(), Some("a"));
            assert_eq!(mine.lease_transitions, Some(4));
            assert_eq!(mine.acquire_time, Some(at(30)));
        }
    }
}
