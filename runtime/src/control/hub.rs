//! The coordinator's links to its workers: in-process channels for local workers,
//! sequence-numbered outboxes drained by HTTP long polls for remote ones, and liveness by
//! last contact. Everything that happens to a link arrives in one ordered event stream.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use tokio::sync::{
    Notify,
    mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
};

use crate::control::protocol::{Sequenced, ToCoordinator, ToWorker, WorkerId};

/// Everything the coordinator reacts to, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message from a worker.
    Worker(ToCoordinator),
    /// A remote worker registered.
    Joined {
        /// Its id.
        id: WorkerId,
        /// Its name.
        name: String,
        /// Its `/metrics` address, as it reported it.
        metrics_addr: Option<String>,
    },
    /// A worker stopped answering (or its thread ended).
    Lost {
        /// Its id.
        id: WorkerId,
        /// Why it is considered gone.
        reason: String,
    },
    /// A worker asked to leave (its process is shutting down).
    Leaving {
        /// Its id.
        id: WorkerId,
    },
    /// `POST /v1/savepoints`.
    Savepoint {
        /// Savepoint id.
        id: String,
        /// Stop the job after it.
        stop: bool,
    },
    /// `POST /v1/parallelism`.
    Parallelism {
        /// Target number of workers.
        workers: usize,
    },
}

/// The link no longer exists: the worker was declared lost or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {0} is not a member of this coordinator run")]
pub struct Gone(pub WorkerId);

enum Link {
    Local {
        commands: mpsc::Sender<ToWorker>,
    },
    Remote {
        outbox: VecDeque<Sequenced<ToWorker>>,
        next_seq: u64,
        handed_out: u64,
        received_events: u64,
        last_seen: Instant,
        notify: Arc<Notify>,
    },
}

struct Inner {
    next_id: WorkerId,
    links: BTreeMap<WorkerId, Link>,
}

/// Shared handle to the links; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    events: UnboundedSender<Event>,
}

impl Hub {
    /// A hub and the coordinator's end of its event stream.
    pub fn new() -> (Self, UnboundedReceiver<Event>) {
        let (events, rx) = unbounded_channel();
        let hub = Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                links: BTreeMap::new(),
            })),
            events,
        };
        (hub, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delivers an event to the coordinator (API requests use this).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Adds an in-process worker; its messages must be forwarded with [`Hub::emit`].
    pub fn add_local(&self, commands: mpsc::Sender<ToWorker>) -> WorkerId {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.links.insert(id, Link::Local { commands });
        id
    }

    /// Registers a remote worker and announces it to the coordinator.
    pub fn register_remote(&self, name: &str, metrics_addr: Option<String>) -> WorkerId {
        let id = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            inner.links.insert(
                id,
                Link::Remote {
                    outbox: VecDeque::new(),
                    next_seq: 1,
                    handed_out: 0,
                    received_events: 0,
                    last_seen: Instant::now(),
                    notify: Arc::new(Notify::new()),
                },
            );
            id
        };
        self.emit(Event::Joined {
            id,
            name: name.to_string(),
            metrics_addr,
        });
        id
    }

    /// Queues a command; fails when the link is gone.
    pub fn send(&self, id: WorkerId, command: ToWorker) -> Result<(), Gone> {
        let mut inner = self.lock();
        match inner.links.get_mut(&id) {
            Some(Link::Local { commands }) => commands.send(command).map_err(|_| Gone(id)),
            Some(Link::Remote {
                outbox,
                next_seq,
                notify,
                ..
            }) => {
                outbox.push_back(Sequenced {
                    seq: *next_seq,
                    message: command,
                });
                *next_seq += 1;
                notify.notify_one();
                Ok(())
            }
            None => Err(Gone(id)),
        }
    }

    /// Forgets a link: a remote worker's next request is answered "gone".
    pub fn remove(&self, id: WorkerId) {
        if let Some(Link::Remote { notify, .. }) = self.lock().links.remove(&id) {
            notify.notify_one();
        }
    }

    /// A remote worker's events: takes those not seen before and returns the highest
    /// sequence number taken.
    pub fn take_events(
        &self,
        id: WorkerId,
        events: Vec<Sequenced<ToCoordinator>>,
    ) -> Result<u64, Gone> {
        let mut inner = self.lock();
        let Some(Link::Remote {
            received_events,
            last_seen,
            ..
        }) = inner.links.get_mut(&id)
        else {
            return Err(Gone(id));
        };
        *last_seen = Instant::now();
        for e in events {
            if e.seq == *received_events + 1 {
                *received_events = e.seq;
                let _ = self.events.send(Event::Worker(e.message));
            }
        }
        Ok(*received_events)
    }

    /// A remote worker's command poll: drops the commands it confirmed and returns the rest,
    /// plus the notifier to wait on when there are none.
    pub fn pending_commands(
        &self,
        id: WorkerId,
        received: u64,
    ) -> Result<(Vec<Sequenced<ToWorker>>, Arc<Notify>), Gone> {
        let mut inner = self.lock();
        let Some(Link::Remote {
            outbox,
            last_seen,
            notify,
            handed_out,
            ..
        }) = inner.links.get_mut(&id)
        else {
            return Err(Gone(id));
        };
        *last_seen = Instant::now();
        while outbox.front().is_some_and(|c| c.seq <= received) {
            outbox.pop_front();
        }
        if let Some(last) = outbox.back() {
            *handed_out = last.seq;
        }
        Ok((outbox.iter().cloned().collect(), notify.clone()))
    }

    /// Whether every command queued for a remote worker has been handed to it at least once.
    pub fn all_delivered(&self) -> bool {
        self.lock().links.values().all(|link| match link {
            Link::Remote {
                next_seq,
                handed_out,
                ..
            } => *handed_out + 1 >= *next_seq,
            Link::Local { .. } => true,
        })
    }

    /// Remote workers not heard from within `timeout`.
    pub fn silent_for(&self, timeout: Duration) -> Vec<WorkerId> {
        self.lock()
            .links
            .iter()
            .filter_map(|(id, link)| match link {
                Link::Remote { last_seen, .. } if last_seen.elapsed() > timeout => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Seconds since each remote worker was last heard from.
    pub fn last_seen(&self) -> BTreeMap<WorkerId, f64> {
        self.lock()
            .links
            .iter()
            .filter_map(|(id, link)| match link {
                Link::Remote { last_seen, .. } => Some((*id, last_seen.elapsed().as_secs_f64())),
                Link::Local { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_commands_are_resent_until_confirmed_and_events_taken_once() {
        let (hub, mut events) = Hub::new();
        let id = hub.register_remote("w-0", None);
        assert!(matches!(events.try_recv(), Ok(Event::Joined { .. })));
        hub.send(id, ToWorker::Stop).unwrap();
        hub.send(
            id,
            ToWorker::Barrier {
                checkpoint_id: 1,
                release: vec![],
                traceparent: None,
            },
        )
        .unwrap();
        let (cmds, _) = hub.pending_commands(id, 0).unwrap();
        assert_eq!(cmds.len(), 2);
        // The response was lost: the same commands come again until confirmed.
        let (cmds, _) = hub.pending_commands(id, 0).unwrap();
        assert_eq!(cmds.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2]);
        let (cmds, _) = hub.pending_commands(id, 1).unwrap();
        assert_eq!(cmds.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2]);

        let failed = |seq| Sequenced {
            seq,
            message: ToCoordinator::Failed {
                worker: id,
                reason: format!("e{seq}"),
            },
        };
        assert_eq!(hub.take_events(id, vec![failed(1), failed(2)]).unwrap(), 2);
        // A retry of an answered request delivers nothing twice.
        assert_eq!(hub.take_events(id, vec![failed(2), failed(3)]).unwrap(), 3);
        let mut got = vec![];
        while let Ok(Event::Worker(ToCoordinator::Failed { reason, .. })) = events.try_recv() {
            got.push(reason);
        }
        assert_eq!(got, vec!["e1", "e2", "e3"]);

        hub.remove(id);
        assert_eq!(hub.pending_commands(id, 2).unwrap_err(), Gone(id));
        assert_eq!(hub.send(id, ToWorker::Stop), Err(Gone(id)));
    }

    #[test]
    fn silent_workers_are_found() {
        let (hub, _events) = Hub::new();
        let id = hub.register_remote("w", None);
        assert!(hub.silent_for(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(hub.silent_for(Duration::from_millis(10)), vec![id]);
    }
}
