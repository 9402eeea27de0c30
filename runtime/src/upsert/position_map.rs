//! Where rewritten rows went: compaction of an upsert table writes, per replace snapshot, a
//! map from each surviving row's old place (data file, position) to its new one, as a Parquet
//! file named in the snapshot's summary (`tidewater.position-map`). A pipeline whose key index
//! still points at rewritten files translates its position deletes through it, so a delete
//! decided before the rewrite still removes the row after it.

use std::{collections::HashMap, sync::Arc};

use arrow_array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, cast::AsArray, types::Int64Type,
};
use arrow_schema::{DataType, Field, Schema};
use iceberg::io::FileIO;
use parquet::arrow::{ArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder};

/// Snapshot summary key: the position map of a compaction of an upsert table.
pub const SUMMARY_POSITION_MAP: &str = "tidewater.position-map";

/// Rows moved out of one file: `(old position, new file index, new position)`.
type Moves = Vec<(u64, u32, u64)>;

/// Old place → new place of every row a rewrite kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PositionMap {
    /// Per old file: `(old position, new file index, new position)`, by old position.
    moved: HashMap<Arc<str>, Moves>,
    new_files: Vec<Arc<str>>,
}

fn io_error(what: &str, e: impl std::fmt::Display) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("position map: {what}: {e}"),
    )
}

impl PositionMap {
    /// Notes that rows `old_positions` of `old_file` are now rows `new_start..` of `new_file`.
    pub fn moved(&mut self, old_file: &str, old_positions: &[u64], new_file: &str, new_start: u64) {
        let new = match self.new_files.iter().position(|f| &**f == new_file) {
            Some(i) => i,
            None => {
                self.new_files.push(Arc::from(new_file));
                self.new_files.len() - 1
            }
        };
        let new = u32::try_from(new).expect("fewer than 2^32 files");
        let rows = self.moved.entry(Arc::from(old_file)).or_default();
        rows.extend(
            old_positions
                .iter()
                .enumerate()
                .map(|(i, &old)| (old, new, new_start + i as u64)),
        );
    }

    /// Adds the moves of `other` (rows of other files).
    pub fn absorb(&mut self, other: PositionMap) {
        for (old, rows) in other.moved {
            for (pos, new, new_pos) in rows {
                let file = other.new_files[new as usize].clone();
                self.moved(&old, &[pos], &file, new_pos);
            }
        }
    }

    /// The moves of rows of `files` only (the groups a commit kept).
    pub fn only(&self, files: &std::collections::HashSet<&str>) -> PositionMap {
        let mut out = PositionMap {
            moved: HashMap::new(),
            new_files: self.new_files.clone(),
        };
        for (old, rows) in &self.moved {
            if files.contains(&**old) {
                out.moved.insert(old.clone(), rows.clone());
            }
        }
        out
    }

    /// Whether the map moved rows of `file`.
    pub fn covers(&self, file: &str) -> bool {
        self.moved.contains_key(file)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.moved.is_empty()
    }

    /// Rows the map moved.
    pub fn len(&self) -> usize {
        self.moved.values().map(Vec::len).sum()
    }

    /// Where row `pos` of `file` is now: `None` when the map does not cover the file, or the
    /// row was not kept (it was deleted before the rewrite).
    pub fn translate(&self, file: &str, pos: u64) -> Option<(Arc<str>, u64)> {
        let rows = self.moved.get(file)?;
        let i = rows.binary_search_by_key(&pos, |r| r.0).ok()?;
        let (_, new, new_pos) = rows[i];
        Some((self.new_files[new as usize].clone(), new_pos))
    }

    fn sort(&mut self) {
        for rows in self.moved.values_mut() {
            rows.sort_unstable_by_key(|r| r.0);
        }
    }

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("old_file", DataType::Utf8, false),
            Field::new("old_pos", DataType::Int64, false),
            Field::new("new_file", DataType::Utf8, false),
            Field::new("new_pos", DataType::Int64, false),
        ]))
    }

    /// Writes the map as Parquet at `path`.
    pub async fn write(&mut self, io: &FileIO, path: &str) -> iceberg::Result<()> {
        self.sort();
        let (mut old_file, mut old_pos, mut new_file, mut new_pos) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut files: Vec<(&Arc<str>, &Moves)> = self.moved.iter().collect();
        files.sort_by_key(|(f, _)| *f);
        for (file, rows) in files {
            for &(old, new, pos) in rows {
                old_file.push(&**file);
                old_pos.push(i64::try_from(old).unwrap_or(i64::MAX));
                new_file.push(&*self.new_files[new as usize]);
                new_pos.push(i64::try_from(pos).unwrap_or(i64::MAX));
            }
        }
        let batch = RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(StringArray::from(old_file)) as ArrayRef,
                Arc::new(Int64Array::from(old_pos)),
                Arc::new(StringArray::from(new_file)),
                Arc::new(Int64Array::from(new_pos)),
            ],
        )
        .map_err(|e| io_error("batch", e))?;
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, Self::schema(), None)
            .map_err(|e| io_error("writer", e))?;
        w.write(&batch).map_err(|e| io_error("write", e))?;
        w.close().map_err(|e| io_error("close", e))?;
        io.new_output(path)?.write(bytes.into()).await
    }

    /// Reads a map written by [`Self::write`].
    pub async fn read(io: &FileIO, path: &str) -> iceberg::Result<Self> {
        let bytes = io.new_input(path)?.read().await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(ParquetRecordBatchReaderBuilder::build)
            .map_err(|e| io_error(path, e))?;
        let mut map = Self::default();
        for batch in reader {
            let batch = batch.map_err(|e| io_error(path, e))?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| io_error(path, format!("no column {name}")))
            };
            let (of, op, nf, np) = (
                col("old_file")?,
                col("old_pos")?,
                col("new_file")?,
                col("new_pos")?,
            );
            let (of, nf) = (of.as_string::<i32>(), nf.as_string::<i32>());
            let (op, np) = (
                op.as_primitive::<Int64Type>(),
                np.as_primitive::<Int64Type>(),
            );
            for i in 0..batch.num_rows() {
                map.moved(
                    of.value(i),
                    &[u64::try_from(op.value(i)).unwrap_or(0)],
                    nf.value(i),
                    u64::try_from(np.value(i)).unwrap_or(0),
                );
            }
        }
        map.sort();
        Ok(map)
    }
}

/// Translates `(file, position)` pairs through maps applied in order (a row rewritten twice
/// moves twice); returns the pairs and how many moved. A pair whose row a map does not hold
/// (deleted before that rewrite) is dropped: it deletes nothing.
pub fn translate_all(
    deletes: Vec<(Arc<str>, u64)>,
    maps: &[Arc<PositionMap>],
) -> (Vec<(Arc<str>, u64)>, usize) {
    let mut moved = 0;
    let out = deletes
        .into_iter()
        .filter_map(|(mut file, mut pos)| {
            let mut changed = false;
            for map in maps {
                if map.covers(&file) {
                    let (f, p) = map.translate(&file, pos)?;
                    (file, pos, changed) = (f, p, true);
                }
            }
            moved += usize::from(changed);
            Some((file, pos))
        })
        .collect();
    (out, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_where_a_rewrite_put_them_even_after_two_rewrites() {
        let mut first = PositionMap::default();
        // a.parquet rows 0, 2, 3 survived (1 was deleted) → c.parquet 0..3; b's rows → c 3..5.
        first.moved("a", &[0, 2, 3], "c", 0);
        first.moved("b", &[0, 1], "c", 3);
        let mut second = PositionMap::default();
        second.moved("c", &[0, 1, 2, 3, 4], "d", 10);
        first.sort();
        let maps = [Arc::new(first.clone()), Arc::new(second)];
        let (out, moved) = translate_all(
            vec![
                (Arc::from("a"), 2),
                (Arc::from("a"), 1),
                (Arc::from("b"), 1),
                (Arc::from("z"), 7),
            ],
            &maps,
        );
        assert_eq!(
            out,
            [
                (Arc::from("d"), 11),
                (Arc::from("d"), 14),
                (Arc::from("z"), 7)
            ],
            "a@1 was deleted before the rewrite: dropped; z was never rewritten"
        );
        assert_eq!(moved, 2);
        assert_eq!(first.translate("a", 3), Some((Arc::from("c"), 2)));
        assert_eq!(first.len(), 5);
    }
}
