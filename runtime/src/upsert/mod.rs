//! Upsert mode's state: the primary-key index (key → the data file and row holding the key's
//! current row) and the pure decision that turns a batch of changes into the rows to write and
//! the position deletes of the rows they replace. `key` encodes key columns into comparable
//! bytes; `rebuild` fills the index from a table's files; `position_map` says where a
//! compaction moved rows.

pub mod key;
pub mod position_map;
pub mod rebuild;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

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
    /// Rows of earlier writes that the batch replaces or deletes: `(file, position)`.
    pub deletes: Vec<(Arc<str>, u64)>,
    /// Keys whose previous change came from another Kafka partition (the order of their
    /// changes is not defined; the latest to arrive wins).
    pub conflicts: u64,
    /// Changes superseded by a later change of the same key in the batch (never written).
    pub superseded: u64,
    /// Keys the index cannot vouch for (it is over its bound, or equality mode): rows with
    /// them from earlier commits are removed by an equality delete.
    pub equality: Vec<Box<[u8]>>,
}

/// The key index of one table (all partitions a worker owns). Bounded: once its keys would
/// take more than `max_bytes`, new keys are kept for the current checkpoint only (`recent`)
/// and the index is *overflowed* — a key it does not hold may then exist in the table, so
/// its changes also get an equality delete. An index with bound 0 is equality mode.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: HashMap<Box<[u8]>, Entry>,
    /// Keys written in the current checkpoint that did not fit.
    recent: HashMap<Box<[u8]>, Entry>,
    files: Vec<Arc<str>>,
    file_ids: HashMap<Arc<str>, u32>,
    key_bytes: usize,
    max_bytes: Option<usize>,
    overflowed: bool,
}

/// Bytes the index holds per key beyond the key itself (entry, hash table slot, allocation).
const ENTRY_OVERHEAD: usize = 48;

impl KeyIndex {
    /// An index of at most about `max_bytes` (see [`Self::memory_bytes`]).
    pub fn bounded(max_bytes: usize) -> Self {
        Self {
            max_bytes: Some(max_bytes),
            ..Self::default()
        }
    }

    /// Equality mode: no key is indexed beyond the current checkpoint; every change of a key
    /// gets an equality delete.
    pub fn equality() -> Self {
        Self {
            max_bytes: Some(0),
            overflowed: true,
            ..Self::default()
        }
    }

    /// Whether keys exist that the index does not hold.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn has_room(&self, key_len: usize) -> bool {
        self.max_bytes.is_none_or(|max| {
            self.key_bytes + key_len + (self.keys.len() + 1) * ENTRY_OVERHEAD <= max
        })
    }

    /// Adds a committed row read from the table, if the bound allows; otherwise the index is
    /// overflowed from now on and the key is not held.
    pub fn load(&mut self, key: Box<[u8]>, file: &str, pos: u64, partition: i32) -> bool {
        if !self.keys.contains_key(&key) && !self.has_room(key.len()) {
            self.overflowed = true;
            return false;
        }
        self.insert(key, file, pos, partition);
        true
    }

    /// A row written in the current checkpoint: into the index, or into `recent` when the
    /// index is full.
    fn place(&mut self, key: Box<[u8]>, file: &str, pos: u64, partition: i32) {
        if self.has_room(key.len()) {
            self.insert(key, file, pos, partition);
        } else {
            self.overflowed = true;
            let entry = self.entry(file, pos, partition);
            self.recent.insert(key, entry);
        }
    }

    /// The checkpoint ended: rows of `recent` are committed, and known to no one.
    pub fn end_checkpoint(&mut self) {
        self.recent.clear();
    }

    fn entry(&mut self, file: &str, pos: u64, partition: i32) -> Entry {
        Entry {
            file: self.file_id(file),
            pos: u32::try_from(pos).expect("fewer than 2^32 rows per data file"),
            partition,
        }
    }

    /// Keys in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Estimated memory of the index in bytes (the keys, and per key an entry, its hash
    /// table slot and allocation).
    pub fn memory_bytes(&self) -> usize {
        self.key_bytes + (self.keys.len() + self.recent.len()) * ENTRY_OVERHEAD
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
        let entry = self.entry(file, pos, partition);
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
            let indexed = self.remove(key);
            let found = indexed.or_else(|| self.recent.remove(key));
            if let Some(old) = found {
                if old.partition != partition && old.partition != UNKNOWN_PARTITION {
                    plan.conflicts += 1;
                }
                plan.deletes.push(self.location(old));
            }
            if indexed.is_none() && self.overflowed {
                plan.equality.push(key.into());
            }
            if let Some(row) = row {
                plan.write.push((row, key.into(), partition));
            }
        }
        plan.write.sort_unstable_by_key(|(row, _, _)| *row);
        plan
    }

    /// Records the rows of `plan.write`, written in that order to `file` from row `start`.
    pub fn written(&mut self, write: &[(u32, Box<[u8]>, i32)], file: &str, start: u64) {
        for (n, (_, key, partition)) in write.iter().enumerate() {
            self.place(key.clone(), file, start + n as u64, *partition);
        }
    }

    /// `table` (this index read again from the table, which holds the current checkpoint's
    /// changes only once it is committed) brought up to date: its rows that this checkpoint
    /// deleted (`deleted`) are dropped, and the rows this checkpoint wrote (in `written`)
    /// are taken from this index.
    pub fn carry_into(
        &self,
        mut table: KeyIndex,
        written: &HashSet<Arc<str>>,
        deleted: &[(Arc<str>, u64)],
    ) -> KeyIndex {
        if !deleted.is_empty() {
            let deleted: HashSet<(&str, u64)> = deleted.iter().map(|(f, p)| (&**f, *p)).collect();
            let gone: Vec<Box<[u8]>> = table
                .keys
                .iter()
                .filter(|(_, e)| {
                    deleted.contains(&(&*table.files[e.file as usize], u64::from(e.pos)))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                table.remove(&key);
            }
        }
        for (key, e) in self.keys.iter().chain(&self.recent) {
            let file = &self.files[e.file as usize];
            if written.contains(file) {
                table.remove(key);
                table.recent.remove(key);
                table.place(key.clone(), file, u64::from(e.pos), e.partition);
            }
        }
        table
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
        index.written(&plan.write, "f1", 100);
        // An index read again from a table without this batch, brought up to date with the
        // checkpoint's files and deletes, is the same index.
        let mut table = KeyIndex::default();
        table.insert(b"a".to_vec().into(), "f0", 7, 0);
        table.insert(b"b".to_vec().into(), "f0", 8, 0);
        table.insert(b"z".to_vec().into(), "f0", 9, 1);
        let again = index.carry_into(table, &HashSet::from([Arc::from("f1")]), &plan.deletes);
        assert_eq!(again.get(b"a"), Some((Arc::from("f1"), 100)));
        assert_eq!(again.get(b"b"), None);
        assert_eq!(
            again.get(b"z"),
            Some((Arc::from("f0"), 9)),
            "another worker's key"
        );
        assert_eq!(again.len(), 2);
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
    fn over_its_bound_the_index_keeps_new_keys_for_the_checkpoint_and_asks_for_equality_deletes() {
        // Room for two keys of 4 bytes.
        let mut index = KeyIndex::bounded(2 * (4 + ENTRY_OVERHEAD));
        let rows: [&[u8]; 3] = [b"k001", b"k002", b"k003"];
        let events = [row(0), row(1), row(2)];
        let plan = index.plan(&events, |r| rows[r as usize]);
        assert!(
            plan.equality.is_empty(),
            "a complete index knows these keys are new"
        );
        index.written(&plan.write, "f1", 0);
        assert!(index.overflowed());
        assert_eq!(index.len(), 2);
        // k003 did not fit: updated in the same checkpoint, its row is found (position
        // delete) and, since the index is incomplete, an equality delete is asked for too.
        let again: [&[u8]; 2] = [b"k003", b"k001"];
        let plan = index.plan(&[row(0), row(1)], |r| again[r as usize]);
        assert_eq!(plan.deletes, [(Arc::from("f1"), 2), (Arc::from("f1"), 0)]);
        assert_eq!(plan.equality, [Box::from(&b"k003"[..])]);
        index.written(&plan.write, "f2", 0);
        // k003 took k001's place in the index; k001's new row went to `recent`. After the
        // checkpoint that row is known only to the table.
        assert_eq!(index.get(b"k003"), Some((Arc::from("f2"), 0)));
        index.end_checkpoint();
        let plan = index.plan(&[del(b"k001")], |_| unreachable!());
        assert!(plan.deletes.is_empty());
        assert_eq!(plan.equality.len(), 1);
        // Equality mode: every change asks for an equality delete.
        let mut eq = KeyIndex::equality();
        let plan = eq.plan(&[row(0)], |r| rows[r as usize]);
        assert_eq!(plan.equality.len(), 1);
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
