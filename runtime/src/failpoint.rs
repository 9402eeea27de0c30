//! Fail points for crash tests: `TIDEWATER_FAILPOINTS="name@N,other"` aborts the process
//! (like `kill -9`: no cleanup, no final checkpoint) the Nth time `name` is reached (N = 1
//! when omitted); `name@N:hang` blocks the thread that reaches it forever instead (a worker
//! stuck in I/O while its process stays alive); `name@N:gate=PATH` creates `PATH.reached` and
//! waits until `PATH` exists (a test does something at exactly that moment, then opens the
//! gate). Unset, each check is one relaxed atomic load.

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
    /// One table of a checkpoint has committed, another has not (yet).
    pub const BETWEEN_TABLE_COMMITS: &str = "checkpoint.between-table-commits";
    /// Manifests are written, the catalog pointer is not yet swapped.
    pub const MID_COMMIT: &str = "commit.before-catalog-update";
    /// The table commit landed; consumer-group offsets are not yet written.
    pub const AFTER_COMMIT: &str = "commit.after-catalog-update";
    /// A worker committed a schema update and has not converted the record that asked for it.
    pub const AFTER_SCHEMA_UPDATE: &str = "worker.after-schema-update";
    /// A worker received a barrier and has not closed its files yet.
    pub const WORKER_BARRIER: &str = "worker.barrier";
    /// Compaction has rewritten its groups and is about to validate and commit.
    pub const COMPACT_BEFORE_COMMIT: &str = "compact.before-commit";
}

/// What a fail point does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Hang,
    Gate(String),
}

static ARMED: AtomicBool = AtomicBool::new(true);
static CONFIG: OnceLock<Mutex<HashMap<String, (u64, Action)>>> = OnceLock::new();

fn config() -> &'static Mutex<HashMap<String, (u64, Action)>> {
    CONFIG.get_or_init(|| {
        let spec = std::env::var("TIDEWATER_FAILPOINTS").unwrap_or_default();
        let map = parse(&spec);
        if map.is_empty() {
            ARMED.store(false, Ordering::Relaxed);
        }
        Mutex::new(map)
    })
}

fn parse(spec: &str) -> HashMap<String, (u64, Action)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (s, action) = match (s.strip_suffix(":hang"), s.split_once(":gate=")) {
                (Some(rest), _) => (rest, Action::Hang),
                (None, Some((rest, path))) => (rest, Action::Gate(path.to_string())),
                (None, None) => (s, Action::Abort),
            };
            match s.split_once('@') {
                Some((name, n)) => (name.to_string(), (n.parse().unwrap_or(1), action)),
                None => (s.to_string(), (1, action)),
            }
        })
        .collect()
}

/// Aborts the process if `name` is armed and this is its Nth hit.
pub fn hit(name: &str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let action = {
        let mut map = config().lock().expect("failpoint lock");
        let Some((remaining, action)) = map.get_mut(name) else {
            return;
        };
        *remaining = remaining.saturating_sub(1);
        if *remaining > 0 {
            return;
        }
        let action = action.clone();
        map.remove(name);
        action
    };
    match action {
        Action::Abort => {
            eprintln!("tidewater: fail point {name} reached, aborting");
            std::process::abort();
        }
        Action::Hang => {
            eprintln!("tidewater: fail point {name} reached, hanging this thread");
            loop {
                std::thread::park();
            }
        }
        Action::Gate(path) => {
            eprintln!("tidewater: fail point {name} reached, waiting for {path}");
            let _ = std::fs::write(format!("{path}.reached"), b"");
            while !std::path::Path::new(&path).exists() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_names_and_counts() {
        use super::Action::{Abort, Gate, Hang};
        let m = super::parse("a@3, b ,,c@x,d@2:hang,e:gate=/tmp/g");
        assert_eq!(m.get("a"), Some(&(3, Abort)));
        assert_eq!(m.get("b"), Some(&(1, Abort)));
        assert_eq!(m.get("c"), Some(&(1, Abort)));
        assert_eq!(m.get("d"), Some(&(2, Hang)));
        assert_eq!(m.get("e"), Some(&(1, Gate("/tmp/g".into()))));
        assert_eq!(m.len(), 5);
    }
}
