//! Splits batches by partition. Streams usually put a whole batch into one partition
//! (`day(ts)` of live events): that case is detected with the vectorized transform and
//! the batch is written whole, instead of iceberg-rust's per-row split (which builds an
//! Iceberg literal struct for every row). Mixed batches use the crate's splitter. Pure.

use arrow_array::{Array, ArrayRef, RecordBatch, StructArray, cast::AsArray, types};
use arrow_schema::DataType;
use iceberg::{
    arrow::{PartitionValueCalculator, RecordBatchPartitionSplitter},
    spec::{PartitionKey, PartitionSpecRef, SchemaRef},
};

/// After a mixed batch, how many batches go straight to the full split before the fast
/// path is tried again (keeps bucketed tables from paying for both).
const BACKOFF_BATCHES: u32 = 16;

/// Partition splitter with a single-partition fast path.
pub struct Partitioner {
    calculator: PartitionValueCalculator,
    splitter: RecordBatchPartitionSplitter,
    skip_fast_path: u32,
}

impl Partitioner {
    /// A partitioner for a table schema and partition spec.
    pub fn new(schema: SchemaRef, spec: PartitionSpecRef) -> iceberg::Result<Self> {
        Ok(Self {
            calculator: PartitionValueCalculator::try_new(&spec, &schema)?,
            splitter: RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)?,
            skip_fast_path: 0,
        })
    }

    /// The batch's rows grouped by partition key.
    pub fn split(
        &mut self,
        batch: &RecordBatch,
    ) -> iceberg::Result<Vec<(PartitionKey, RecordBatch)>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        if self.skip_fast_path > 0 {
            self.skip_fast_path -= 1;
            return self.splitter.split(batch);
        }
        let values = self.calculator.calculate(batch)?;
        if single_valued(&values) {
            let key = self
                .splitter
                .split(&batch.slice(0, 1))?
                .into_iter()
                .next()
                .map(|(key, _)| key)
                .expect("one row yields one partition");
            return Ok(vec![(key, batch.clone())]);
        }
        self.skip_fast_path = BACKOFF_BATCHES;
        self.splitter.split(batch)
    }
}

/// True when every row of the partition-value struct array is the same (conservative:
/// false for types it does not compare).
fn single_valued(values: &ArrayRef) -> bool {
    let Some(s) = values.as_any().downcast_ref::<StructArray>() else {
        return false;
    };
    s.null_count() == 0 && s.columns().iter().all(uniform)
}

fn uniform(a: &ArrayRef) -> bool {
    if a.len() <= 1 || a.null_count() == a.len() {
        return true;
    }
    if a.null_count() > 0 {
        return false;
    }
    fn same<T: PartialEq>(v: &[T]) -> bool {
        v.iter().all(|x| *x == v[0])
    }
    match a.data_type() {
        DataType::Int32 => same(a.as_primitive::<types::Int32Type>().values()),
        DataType::Date32 => same(a.as_primitive::<types::Date32Type>().values()),
        DataType::Int64 => same(a.as_primitive::<types::Int64Type>().values()),
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            let first = s.value(0);
            (1..s.len()).all(|i| s.value(i) == first)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use iceberg::{
        arrow::schema_to_arrow_schema,
        spec::{NestedField, PartitionSpec, PrimitiveType, Schema, Transform, Type},
    };

    use super::*;

    type Setup = (
        Partitioner,
        arrow_schema::SchemaRef,
        SchemaRef,
        PartitionSpecRef,
    );

    fn setup(transform: Transform, source: &str) -> Setup {
        let schema = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "ts",
                    Type::Primitive(PrimitiveType::Timestamptz),
                )),
                Arc::new(NestedField::optional(
                    3,
                    "kind",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .unwrap();
        let schema = Arc::new(schema);
        let spec = PartitionSpec::builder(schema.clone())
            .add_partition_field(source, format!("{source}_p"), transform)
            .unwrap()
            .build()
            .unwrap();
        let spec = Arc::new(spec);
        let arrow = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        (
            Partitioner::new(schema.clone(), spec.clone()).unwrap(),
            arrow,
            schema,
            spec,
        )
    }

    fn batch(arrow: &arrow_schema::SchemaRef, ts_micros: &[i64], kinds: &[&str]) -> RecordBatch {
        let n = ts_micros.len();
        RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..i64::try_from(n).unwrap())),
                Arc::new(
                    TimestampMicrosecondArray::from(ts_micros.to_vec()).with_timezone("+00:00"),
                ),
                Arc::new(StringArray::from(kinds.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_single_day_batch_is_written_whole_with_the_same_key_as_the_crate() {
        let (mut p, arrow, schema, spec) = setup(Transform::Day, "ts");
        let day = 1_767_323_045_000_000;
        let b = batch(
            &arrow,
            &[day, day + 1_000_000, day + 2_000_000],
            &["a", "b", "c"],
        );
        let fast = p.split(&b).unwrap();
        assert_eq!(fast.len(), 1);
        assert_eq!(fast[0].1.num_rows(), 3);
        let reference = RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)
            .unwrap()
            .split(&b)
            .unwrap();
        assert_eq!(reference.len(), 1);
        assert_eq!(fast[0].0.data(), reference[0].0.data());
        assert_eq!(fast[0].0.to_path(), reference[0].0.to_path());
    }

    #[test]
    fn mixed_batches_are_split_and_back_off_the_fast_path() {
        let (mut p, arrow, _, _) = setup(Transform::Identity, "kind");
        let b = batch(&arrow, &[1, 2, 3, 4], &["a", "b", "a", "c"]);
        let mut parts = p.split(&b).unwrap();
        parts.sort_by_key(|(_, b)| b.num_rows());
        let rows: Vec<usize> = parts.iter().map(|(_, b)| b.num_rows()).collect();
        assert_eq!(rows, vec![1, 1, 2]);
        assert_eq!(p.skip_fast_path, BACKOFF_BATCHES);
        // Still correct while the fast path is skipped.
        let same = batch(&arrow, &[1, 2], &["z", "z"]);
        assert_eq!(p.split(&same).unwrap().len(), 1);
    }
}
