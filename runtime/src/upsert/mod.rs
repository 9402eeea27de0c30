//! Upsert mode's state: the primary-key index (key → the data file and row holding the key's
//! current row) and the pure decision that turns a batch of changes into the rows to write and
//! the position deletes of the rows they replace. `key` encodes key columns into comparable
//! bytes; `rebuild` fills the index from a table's files; `position_map` says where a
//! compaction moved rows.

pub mod key;
pub mod position_map;
pub mod rebuild;

use std::{collections::HashMap, sync::Arc};

/// The Kafka partition of keys whose partition is not known (read back from the table).
pub const UNKNOWN_PARTITION: i32 = -1;

/// Where a key's current row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Index into the interned file paths.
    file: u32,
    /// Row position in the file.
    pos: u32,
    /// The Kafka partition its last change came from.
    partition: i32,
}

/// One change of a batch, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Row `row` of the batch's rows is the key's new row.
    Row {
        /// Row index in the rows batch.
        row: u32,
        /// Kafka partition.
        partition: i32,
    },
    /// The key is deleted.
    Delete {
        /// The key's bytes.
        key: Box<[u8]>,
        /// Kafka partition.
        partition: i32,
    },
}

/// What a batch of changes does, decided against the index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchPlan {
    /// Rows to write, in row order, with their keys and Kafka partitions.
    pub write: Vec<(u32, Box<[u8]>, i32)>,
    /// Keys whose last change in the batch is a delete.
    pub gone: Vec<Box<[u8]>>,
    /// Rows of earlier writes that the batch replaces or deletes: `(file, position)`.
    pub deletes: Vec<(Arc<str>, u64)>,
    /// Keys whose previous change came from another Kafka partition (the order of their
    /// changes is not defined; the latest to arrive wins).
    pub conflicts: u64,
    /// Changes superseded by a later change of the same key in the batch (never written).
    pub superseded: u64,
}

/// The key index of one table (all partitions a worker owns).
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: HashMap<Box<[u8]>, Entry>,
    files: Vec<Arc<str>>,
    file_ids: HashMap<Arc<str>, u32>,
    key_bytes: usize,
}

/// Bytes the index holds per key beyond the key itself (entry, hash table slot, allocation).
const ENTRY_OVERHEAD: usize = 48;

impl KeyIndex {
    /// Keys in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Estimated memory of the index in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.key_bytes + self.keys.capacity() * ENTRY_OVERHEAD
    }

    fn file_id(&mut self, path: &str) -> u32 {
        if let Some(id) = self.file_ids.get(path) {
            return *id;
        }
        let id = u32::try_from(self.files.len()).expect("fewer than 2^32 files");
        let path: Arc<str> = Arc::from(path);
        self.files.push(path.clone());
        self.file_ids.insert(path, id);
        id
    }

    /// Records that `key` (last changed on `partition`) is row `pos` of `file`; returns the
    /// location it replaces, if any.
    pub fn insert(
        &mut self,
        key: Box<[u8]>,
        file: &str,
        pos: u64,
        partition: i32,
    ) -> Option<(Arc<str>, u64)> {
        let entry = Entry {
            file: self.file_id(file),
            pos: u32::try_from(pos).expect("fewer than 2^32 rows per data file"),
            partition,
        };
        let len = key.len();
        match self.keys.insert(key, entry) {
            Some(old) => Some(self.location(old)),
            None => {
                self.key_bytes += len;
                None
            }
        }
    }

    fn location(&self, e: Entry) -> (Arc<str>, u64) {
        (self.files[e.file as usize].clone(), u64::from(e.pos))
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let e = self.keys.remove(key)?;
        self.key_bytes -= key.len();
        Some(e)
    }

    /// Where `key`'s row is, if the index has it.
    pub fn get(&self, key: &[u8]) -> Option<(Arc<str>, u64)> {
        self.keys.get(key).map(|e| self.location(*e))
    }

    /// Decides a batch: per key only its last change counts; a key already in the index has
    /// its old row deleted; a key whose last change is a row gets that row written. The
    /// index forgets every key the batch touches; [`Self::written`] records the new rows.
    pub fn plan<'k>(
        &mut self,
        events: &'k [Event],
        row_key: impl Fn(u32) -> &'k [u8],
    ) -> BatchPlan {
        let key_of = |e: &'k Event| -> &'k [u8] {
            match e {
                Event::Row { row, .. } => row_key(*row),
                Event::Delete { key, .. } => key,
            }
        };
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            last.insert(key_of(e), i);
        }
        let mut plan = BatchPlan {
            superseded: (events.len() - last.len()) as u64,
            ..BatchPlan::default()
        };
        let mut decided: Vec<(&[u8], usize)> = last.into_iter().collect();
        decided.sort_unstable_by_key(|(_, i)| *i);
        for (key, i) in decided {
            let (partition, row) = match &events[i] {
                Event::Row { row, partition } => (*partition, Some(*row)),
                Event::Delete { partition, .. } => (*partition, None),
            };
            if let Some(old) = self.remove(key) {
                if old.partition != partition && old.partition != UNKNOWN_PARTITION {
                    plan.conflicts += 1;
                }
                plan.deletes.push(self.location(old));
            }
            match row {
                Some(row) => plan.write.push((row, key.into(), partition)),
                None => plan.gone.push(key.into()),
            }
        }
        plan.write.sort_unstable_by_key(|(row, _, _)| *row);
        plan
    }

    /// Records the rows of `plan.write`, written in that order to `file` from row `start`.
    pub fn written(&mut self, write: &[(u32, Box<[u8]>, i32)], file: &str, start: u64) {
        for (n, (_, key, partition)) in write.iter().enumerate() {
            let replaced = self.insert(key.clone(), file, start + n as u64, *partition);
            debug_assert!(replaced.is_none(), "plan removed every written key");
        }
    }

    /// Replays changes recorded by [`Journal`] (in order) on an index read from the table.
    pub fn replay(&mut self, journal: &Journal) {
        for (key, at) in &journal.changes {
            match at {
                Some((file, pos, partition)) => {
                    self.insert(key.clone(), file, *pos, *partition);
                }
                None => {
                    self.remove(key);
                }
            }
        }
    }
}

/// The index changes of one epoch (since the last barrier), in order: what an index read
/// again from the table (which holds the epoch's changes only after its commit) must replay.
#[derive(Debug, Default)]
pub struct Journal {
    changes: Vec<(Box<[u8]>, Option<Location>)>,
}

/// A row's place: data file, position, and the Kafka partition its change came from.
type Location = (Arc<str>, u64, i32);

impl Journal {
    /// Notes a batch: its deleted keys, and its written rows at `file` from row `start`.
    pub fn note(&mut self, plan: &BatchPlan, file: Option<&Arc<str>>, start: u64) {
        self.changes
            .extend(plan.gone.iter().map(|k| (k.clone(), None)));
        if let Some(file) = file {
            for (n, (_, key, partition)) in plan.write.iter().enumerate() {
                self.changes.push((
                    key.clone(),
                    Some((file.clone(), start + n as u64, *partition)),
                ));
            }
        }
    }

    /// Forgets the epoch (its changes are in the table, or abandoned).
    pub fn clear(&mut self) {
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(row: u32) -> Event {
        Event::Row { row, partition: 0 }
    }

    fn del(key: &[u8]) -> Event {
        Event::Delete {
            key: key.into(),
            partition: 0,
        }
    }

    #[test]
    fn last_change_per_key_wins_and_old_rows_are_deleted() {
        let mut index = KeyIndex::default();
        index.insert(b"a".to_vec().into(), "f0", 7, 0);
        index.insert(b"b".to_vec().into(), "f0", 8, 0);
        // rows: a(new), c, c(again); deletes: b, c
        let rows: [&[u8]; 3] = [b"a", b"c", b"c"];
        let events = [row(0), row(1), del(b"b"), row(2), del(b"c")];
        let plan = index.plan(&events, |r| rows[r as usize]);
        // a replaced (f0@7 deleted, row 0 written); b deleted (f0@8); c written twice then
        // deleted: nothing written, nothing to delete.
        assert_eq!(
            plan.write.iter().map(|(r, _, _)| *r).collect::<Vec<_>>(),
            [0]
        );
        let mut deletes = plan.deletes.clone();
        deletes.sort();
        assert_eq!(deletes, [(Arc::from("f0"), 7), (Arc::from("f0"), 8)]);
        assert_eq!(plan.superseded, 2);
        let mut journal = Journal::default();
        journal.note(&plan, Some(&Arc::from("f1")), 100);
        index.written(&plan.write, "f1", 100);
        // An index read again from a table without this batch, with the journal replayed,
        // is the same index.
        let mut again = KeyIndex::default();
        again.insert(b"a".to_vec().into(), "f0", 7, 0);
        again.insert(b"b".to_vec().into(), "f0", 8, 0);
        again.replay(&journal);
        assert_eq!(again.get(b"a"), Some((Arc::from("f1"), 100)));
        assert_eq!(again.get(b"b"), None);
        assert_eq!(again.len(), 1);
        assert_eq!(index.get(b"a"), Some((Arc::from("f1"), 100)));
        assert_eq!(index.get(b"b"), None);
        assert_eq!(index.get(b"c"), None);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_key_from_another_partition_is_a_conflict_but_still_replaced() {
        let mut index = KeyIndex::default();
        index.insert(b"k".to_vec().into(), "f0", 1, 3);
        index.insert(b"r".to_vec().into(), "f0", 2, UNKNOWN_PARTITION);
        let rows: [&[u8]; 2] = [b"k", b"r"];
        let events = [
            Event::Row {
                row: 0,
                partition: 5,
            },
            Event::Row {
                row: 1,
                partition: 5,
            },
        ];
        let plan = index.plan(&events, |r| rows[r as usize]);
        assert_eq!(
            plan.conflicts, 1,
            "a rebuilt key has no partition to conflict with"
        );
        assert_eq!(plan.deletes.len(), 2);
        assert_eq!(plan.write.len(), 2);
    }

    #[test]
    fn memory_grows_with_keys_and_shrinks_with_deletes() {
        let mut index = KeyIndex::default();
        for i in 0u32..1000 {
            index.insert(i.to_be_bytes().to_vec().into(), "f", u64::from(i), 0);
        }
        let full = index.memory_bytes();
        assert!(full >= 1000 * (4 + ENTRY_OVERHEAD), "{full}");
        let events: Vec<Event> = (0u32..1000).map(|i| del(&i.to_be_bytes())).collect();
        let plan = index.plan(&events, |_| unreachable!());
        assert_eq!(plan.deletes.len(), 1000);
        assert!(index.is_empty());
    }
}
