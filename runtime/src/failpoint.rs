//! Fail points for crash tests: `TIDEWATER_FAILPOINTS="name@N,other"` aborts the process
//! (like `kill -9`: no cleanup, no final checkpoint) the Nth time `name` is reached (N = 1
//! when omitted). Unset, each check is one relaxed atomic load.

use std::{
    collections::HashMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

/// Points the runtime can stop at.
pub mod points {
    /// A worker has written part of a checkpoint's files.
    pub const WORKER_MID_WRITE: &str = "worker.mid-write";
    /// The checkpoint record is durable; no table commit has started.
    pub const AFTER_RECORD: &str = "checkpoint.after-record";
    /// Manifests are written, the catalog pointer is not yet swapped.
    pub const MID_COMMIT: &str = "commit.before-catalog-update";
    /// The table commit landed; consumer-group offsets are not yet written.
    pub const AFTER_COMMIT: &str = "commit.after-catalog-update";
}

static ARMED: AtomicBool = AtomicBool::new(true);
static CONFIG: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();

fn config() -> &'static Mutex<HashMap<String, u64>> {
    CONFIG.get_or_init(|| {
        let spec = std::env::var("TIDEWATER_FAILPOINTS").unwrap_or_default();
        let map = parse(&spec);
        if map.is_empty() {
            ARMED.store(false, Ordering::Relaxed);
        }
        Mutex::new(map)
    })
}

fn parse(spec: &str) -> HashMap<String, u64> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (s.to_string(), 1),
        })
        .collect()
}

/// Aborts the process if `name` is armed and this is its Nth hit.
pub fn hit(name: &str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let mut map = config().lock().expect("failpoint lock");
    if let Some(remaining) = map.get_mut(name) {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            eprintln!("tidewater: fail point {name} reached, aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_names_and_counts() {
        let m = super::parse("a@3, b ,,c@x");
        assert_eq!(m.get("a"), Some(&3));
        assert_eq!(m.get("b"), Some(&1));
        assert_eq!(m.get("c"), Some(&1));
        assert_eq!(m.len(), 3);
    }
}
