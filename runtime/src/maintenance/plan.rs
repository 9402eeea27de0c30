//! Which files to rewrite: bin-pack groups per cold partition, hot partitions left alone,
//! bounded by a byte budget. Pure: no I/O, no clock.

use std::collections::BTreeMap;

/// A value of a partition tuple, ordered so that "newest partition values" means the
/// largest ones (days, hours, identity values …).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    /// A null partition value (sorts first).
    Null,
    /// Integer-like values (int, long, date, timestamp, transform results).
    Int(i128),
    /// Everything else, by its text.
    Text(String),
}

/// One live data file as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFile {
    /// File path (unique in the table).
    pub path: String,
    /// Partition identity (equal for files of one partition).
    pub partition: String,
    /// Partition tuple for ordering.
    pub sort: Vec<SortValue>,
    /// Partition spec the file was written with.
    pub spec_id: i32,
    /// Size in bytes.
    pub size: u64,
    /// When the snapshot that added it was committed (ms since the epoch; 0 if unknown).
    pub added_at_ms: i64,
    /// Delete files that apply to it.
    pub deletes: usize,
}

/// The policy's knobs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// Output file size.
    pub target_bytes: u64,
    /// Files below this are small.
    pub small_bytes: u64,
    /// Rewrite a partition with at least this many small files.
    pub min_small_files: usize,
    /// Also rewrite when the average file size is below this.
    pub min_average_bytes: Option<u64>,
    /// Also rewrite when delete files per data file exceed this.
    pub max_delete_ratio: Option<f64>,
    /// A partition written to within this many ms is hot.
    pub hot_min_age_ms: i64,
    /// The newest this many partition values are hot too.
    pub hot_newest: usize,
    /// Rewrite at most this many input bytes.
    pub max_bytes: Option<u64>,
}

/// Files of one partition rewritten together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Partition identity.
    pub partition: String,
    /// Input file paths.
    pub files: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Groups to rewrite, coldest partition first.
    pub groups: Vec<Group>,
    /// Partitions skipped because they are hot.
    pub hot_partitions: Vec<String>,
    /// Partitions that needed nothing.
    pub healthy_partitions: usize,
}

/// Plans a bin-pack rewrite of `files` at `now_ms`; only files of partition spec `spec_id`
/// (the table's current one) are rewritten, files of older specs stay.
pub fn plan(files: &[LiveFile], settings: &PlanSettings, spec_id: i32, now_ms: i64) -> Plan {
    let mut partitions: BTreeMap<&str, Vec<&LiveFile>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.spec_id == spec_id) {
        partitions.entry(f.partition.as_str()).or_default().push(f);
    }
    let mut newest: Vec<(&Vec<SortValue>, &str)> =
        partitions.iter().map(|(k, fs)| (&fs[0].sort, *k)).collect();
    newest.sort();
    let newest: Vec<&str> = newest
        .iter()
        .rev()
        .take(settings.hot_newest)
        .map(|(_, k)| *k)
        .collect();

    let mut out = Plan::default();
    let mut due: Vec<(i64, Group)> = Vec::new();
    for (partition, fs) in &partitions {
        let last_write = fs.iter().map(|f| f.added_at_ms).max().unwrap_or(0);
        if now_ms - last_write < settings.hot_min_age_ms || newest.contains(partition) {
            out.hot_partitions.push(partition.to_string());
            continue;
        }
        let small: Vec<&&LiveFile> = fs
            .iter()
            .filter(|f| f.size < settings.small_bytes)
            .collect();
        let total: u64 = fs.iter().map(|f| f.size).sum();
        let average = total / fs.len() as u64;
        let with_deletes = fs.iter().filter(|f| f.deletes > 0).count();
        let delete_ratio = fs.iter().map(|f| f.deletes).sum::<usize>() as f64 / fs.len() as f64;
        let needs = small.len() >= settings.min_small_files
            || settings
                .min_average_bytes
                .is_some_and(|m| average < m && fs.len() > 1)
            || settings
                .max_delete_ratio
                .is_some_and(|r| with_deletes > 0 && delete_ratio > r);
        if !needs {
            out.healthy_partitions += 1;
            continue;
        }
        let mut inputs: Vec<&LiveFile> = fs
            .iter()
            .copied()
            .filter(|f| f.size < settings.small_bytes || f.deletes > 0)
            .collect();
        if inputs.len() < 2 && inputs.iter().all(|f| f.deletes == 0) {
            out.healthy_partitions += 1;
            continue;
        }
        inputs.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.path.cmp(&b.path)));
        due.push((
            last_write,
            Group {
                partition: partition.to_string(),
                bytes: inputs.iter().map(|f| f.size).sum(),
                files: inputs.iter().map(|f| f.path.clone()).collect(),
            },
        ));
    }
    due.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.partition.cmp(&b.1.partition))
    });
    let mut budget = settings.max_bytes.unwrap_or(u64::MAX);
    for (_, mut group) in due {
        if group.bytes > budget {
            // Take the smallest files that fit; a group needs two files to be worth it.
            let sizes: BTreeMap<&str, u64> =
                files.iter().map(|f| (f.path.as_str(), f.size)).collect();
            let mut kept = Vec::new();
            let mut bytes = 0;
            for path in &group.files {
                let size = sizes[path.as_str()];
                if bytes + size > budget {
                    break;
                }
                bytes += size;
                kept.push(path.clone());
            }
            if kept.len() < 2 {
                break;
            }
            group.files = kept;
            group.bytes = bytes;
        }
        budget -= group.bytes;
        out.groups.push(group);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;
    const MIN: i64 = 60_000;

    fn file(path: &str, day: i128, size: u64, added_at_ms: i64) -> LiveFile {
        LiveFile {
            path: path.into(),
            partition: format!("day={day}"),
            sort: vec![SortValue::Int(day)],
            spec_id: 0,
            size,
            added_at_ms,
            deletes: 0,
        }
    }

    fn settings() -> PlanSettings {
        PlanSettings {
            target_bytes: 128 * MB,
            small_bytes: 96 * MB,
            min_small_files: 2,
            min_average_bytes: None,
            max_delete_ratio: None,
            hot_min_age_ms: 10 * MIN,
            hot_newest: 0,
            max_bytes: None,
        }
    }

    #[test]
    fn cold_partitions_are_packed_and_the_hot_one_is_left_alone() {
        let now = 1_000 * MIN;
        let files = vec![
            file("a1", 1, MB, now - 100 * MIN),
            file("a2", 1, 2 * MB, now - 90 * MIN),
            file("a3", 1, 200 * MB, now - 300 * MIN),
            file("b1", 2, MB, now - 50 * MIN),
            file("b2", 2, MB, now - 40 * MIN),
            file("c1", 3, MB, now - 2 * MIN),
            file("c2", 3, MB, now - MIN),
            file("d1", 4, MB, now - 500 * MIN),
        ];
        let p = plan(&files, &settings(), 0, now);
        assert_eq!(
            p.groups,
            vec![
                Group {
                    partition: "day=1".into(),
                    files: vec!["a1".into(), "a2".into()],
                    bytes: 3 * MB
                },
                Group {
                    partition: "day=2".into(),
                    files: vec!["b1".into(), "b2".into()],
                    bytes: 2 * MB
                },
            ],
            "coldest first; big files stay"
        );
        assert_eq!(p.hot_partitions, vec!["day=3"]);
        assert_eq!(p.healthy_partitions, 1, "one small file is nothing to do");
    }

    #[test]
    fn newest_values_budget_deletes_and_old_specs() {
        let now = 1_000 * MIN;
        let mut files = vec![
            file("a1", 1, MB, 0),
            file("a2", 1, MB, 0),
            file("a3", 1, MB, 0),
            file("b1", 2, MB, 0),
            file("b2", 2, MB, 0),
            file("z1", 9, MB, 0),
            file("z2", 9, MB, 0),
        ];
        let mut s = settings();
        s.hot_newest = 1;
        s.max_bytes = Some(2 * MB + MB / 2);
        let p = plan(&files, &s, 0, now);
        assert_eq!(p.hot_partitions, vec!["day=9"], "the newest value is hot");
        assert_eq!(p.groups.len(), 1, "the budget allows one group");
        assert_eq!(
            p.groups[0].files.len(),
            2,
            "partially, smallest files first"
        );

        // A single big file with deletes is rewritten to apply them; an old spec is not.
        files = vec![
            file("x", 5, 200 * MB, 0),
            file("y", 6, MB, 0),
            file("y2", 6, MB, 0),
        ];
        files[0].deletes = 3;
        files[2].spec_id = 1;
        let mut s = settings();
        s.max_delete_ratio = Some(0.5);
        let p = plan(&files, &s, 0, now);
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].files, vec!["x"]);
        assert_eq!(p.healthy_partitions, 1);
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        let now = 1_000 * MIN;
        let files = vec![file("a", 1, 120 * MB, 0), file("b", 2, 130 * MB, 0)];
        assert!(plan(&files, &settings(), 0, now).groups.is_empty());
        assert!(plan(&[], &settings(), 0, now).groups.is_empty());
    }
}
