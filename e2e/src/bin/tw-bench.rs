//! `tw-bench`: the physical limits the benchmark compares Tidewater with, measured on the
//! same data: raw rdkafka consume-and-discard, and raw Parquet encode of the same rows.
//! Prints one JSON object with records, bytes, wall and CPU seconds.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use tidewater_e2e::event_json;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read `count` records from every partition of `topic` and discard them.
    Consume {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
        /// Extra consumer properties `key=value` (to compare configurations).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// Also convert every record to Arrow with the pipeline's schema (JSON cost).
        #[arg(long)]
        convert_spec: Option<std::path::PathBuf>,
    },
    /// Create `analytics.bench` (partitioned by day) with `files` small data files of
    /// `rows` rows each, over `days` cold days: the compaction benchmark's input.
    SmallFiles {
        /// SQL catalog URI (`sqlite:///abs/catalog.db`).
        #[arg(long)]
        catalog: String,
        /// Warehouse directory.
        #[arg(long)]
        warehouse: std::path::PathBuf,
        #[arg(long)]
        files: u64,
        #[arg(long)]
        rows: u64,
        #[arg(long, default_value_t = 4)]
        days: u64,
    },
    /// Decode every Parquet file under `dir` and encode all rows again as zstd(1) Parquet
    /// (discarded): the physical limit of a rewrite on this machine.
    Recode {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Encode `count` click events (converted to Arrow beforehand, untimed) as zstd(1) Parquet.
    Encode {
        #[arg(long)]
        count: u64,
        /// The pipeline file whose createTable schema to use.
        #[arg(long)]
        spec: std::path::PathBuf,
    },
}

/// CPU seconds (user + system) of this process, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A converter for the createTable schema of a pipeline file.
fn batcher_for(spec: &std::path::Path) -> Result<tidewater_runtime::decode::RowBatcher> {
    let resource = tidewater_crds::IngestionPipeline::from_yaml(&std::fs::read_to_string(spec)?)?;
    let create = resource
        .spec
        .sink
        .create_table
        .expect("spec has createTable");
    let (schema, _) = tidewater_runtime::commit::table_definition(&create)?;
    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    tidewater_runtime::decode::RowBatcher::new(arrow).map_err(anyhow::Error::msg)
}

fn bench_batch(
    schema: &arrow_schema::SchemaRef,
    first: u64,
    rows: u64,
    day_ms: i64,
) -> Result<arrow_array::RecordBatch> {
    use arrow_array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    let ids: Vec<i64> = (first..first + rows).map(|i| i as i64).collect();
    let ts: Vec<i64> = ids
        .iter()
        .map(|i| (day_ms + (i % 86_400_000)) * 1000)
        .collect();
    let hash = |i: i64, k: u64| {
        (i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(k as u32)
    };
    let users: Vec<String> = ids
        .iter()
        .map(|i| format!("user-{:06}", hash(*i, 7) % 200_000))
        .collect();
    let pages: Vec<String> = ids
        .iter()
        .map(|i| format!("/p/{:x}/{:x}", hash(*i, 13) % 5000, hash(*i, 29)))
        .collect();
    let sessions: Vec<String> = ids
        .iter()
        .map(|i| format!("{:016x}", hash(*i, 41)))
        .collect();
    let amounts: Vec<f64> = ids
        .iter()
        .map(|i| (hash(*i, 3) % 100_000) as f64 / 100.0)
        .collect();
    Ok(arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("+00:00")),
            Arc::new(StringArray::from(users)),
            Arc::new(StringArray::from(pages)),
            Arc::new(StringArray::from(sessions)),
            Arc::new(Float64Array::from(amounts)),
        ],
    )?)
}

async fn small_files(
    catalog: &str,
    warehouse: &std::path::Path,
    files: u64,
    rows: u64,
    days: u64,
) -> Result<serde_json::Value> {
    use iceberg::{
        NamespaceIdent, TableCreation,
        spec::{NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec},
        transaction::{ApplyTransactionAction, Transaction},
    };
    use tidewater_crds::pipeline::{CatalogSpec, CatalogType};
    std::fs::create_dir_all(warehouse)?;
    let spec = CatalogSpec {
        catalog_type: CatalogType::Sql,
        uri: catalog.to_string(),
        warehouse: Some(warehouse.display().to_string()),
        name: "tidewater".into(),
        properties: Default::default(),
        auth: None,
        ca_file: None,
    };
    let conn =
        tidewater_runtime::config::CatalogConnection::resolve(&spec, std::path::Path::new("/"));
    let cat = tidewater_runtime::commit::open_catalog(&conn, &Default::default()).await?;
    let ns = NamespaceIdent::new("analytics".into());
    if !cat.namespace_exists(&ns).await? {
        cat.create_namespace(&ns, Default::default()).await?;
    }
    let field = |id, name: &str, t| NestedField::optional(id, name, Type::Primitive(t)).into();
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            field(2, "ts", PrimitiveType::Timestamptz),
            field(3, "user_id", PrimitiveType::String),
            field(4, "page", PrimitiveType::String),
            field(5, "session", PrimitiveType::String),
            field(6, "amount", PrimitiveType::Double),
        ])
        .build()?;
    let partition = UnboundPartitionSpec::builder()
        .add_partition_field(2, "ts_day", Transform::Day)?
        .build();
    let creation = TableCreation::builder()
        .name("bench".into())
        .schema(schema)
        .partition_spec(partition)
        .properties([(
            "write.parquet.compression-codec".to_string(),
            "zstd".to_string(),
        )])
        .build();
    let mut table = cat.create_table(&ns, creation).await?;
    let factory = tidewater_runtime::write::WriterFactory::new(&table, &Default::default())
        .map_err(anyhow::Error::msg)?;
    let arrow = factory.arrow_schema();
    let day0 = chrono::Utc::now().timestamp_millis() / 86_400_000 * 86_400_000 - 30 * 86_400_000;
    let (mut pending, mut bytes) = (Vec::new(), 0u64);
    for f in 0..files {
        let day_ms = day0 + i64::try_from(f % days)? * 86_400_000;
        let batch = bench_batch(&arrow, f * rows, rows, day_ms)?;
        let mut w = factory.open(format!("bench-{f}")).await?;
        w.write(batch).await?;
        let written = w.close_files().await?;
        bytes += written.iter().map(|d| d.file_size_in_bytes()).sum::<u64>();
        pending.extend(written);
        if pending.len() >= 250 || f + 1 == files {
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .with_check_duplicate(false)
                .add_data_files(std::mem::take(&mut pending))
                .apply(tx)?;
            table = tx.commit(cat.as_ref()).await?;
        }
    }
    Ok(serde_json::json!({"files": files, "rows": files * rows, "bytes": bytes}))
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::SmallFiles {
            catalog,
            warehouse,
            files,
            rows,
            days,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let out = rt.block_on(small_files(&catalog, &warehouse, files, rows, days))?;
            println!("{out}");
        }
        Cmd::Recode { dir } => {
            let mut paths = Vec::new();
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(d)? {
                    let p = e?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "parquet") {
                        paths.push(p);
                    }
                }
            }
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            let (mut bytes, mut rows) = (0u64, 0u64);
            let mut writer: Option<ArrowWriter<std::io::Sink>> = None;
            for p in &paths {
                let file = std::fs::File::open(p)?;
                bytes += file.metadata()?.len();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                        .build()?;
                for batch in reader {
                    let batch = batch?;
                    rows += batch.num_rows() as u64;
                    let w = match &mut writer {
                        Some(w) => w,
                        None => writer.insert(ArrowWriter::try_new(
                            std::io::sink(),
                            batch.schema(),
                            Some(
                                WriterProperties::builder()
                                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                                    .build(),
                            ),
                        )?),
                    };
                    w.write(&batch)?;
                }
            }
            if let Some(w) = writer {
                w.close()?;
            }
            let out = serde_json::json!({"files": paths.len(), "records": rows, "bytes": bytes, "wall_s": t0.elapsed().as_secs_f64(), "cpu_s": cpu_seconds() - cpu0});
            println!("{out}");
        }
        Cmd::Consume {
            bootstrap,
            topic,
            count,
            props,
            convert_spec,
        } => {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "tw-bench-raw")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100");
            for p in &props {
                let (k, v) = p.split_once('=').expect("key=value");
                config.set(k, v);
            }
            let consumer: BaseConsumer = config.create()?;
            let mut batcher = match convert_spec {
                Some(spec) => Some(batcher_for(&spec)?),
                None => None,
            };
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut tpl = TopicPartitionList::new();
            for p in md.topics()[0].partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            consumer.assign(&tpl)?;
            let (mut n, mut bytes) = (0u64, 0u64);
            while n < count {
                if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                    let m = m?;
                    let payload = m.payload().unwrap_or_default();
                    bytes += payload.len() as u64;
                    if let Some(b) = batcher.as_mut() {
                        b.push(payload)?;
                        if b.rows() == 8192 {
                            b.finish();
                        }
                    }
                    n += 1;
                }
            }
            let out = serde_json::json!({"records": n, "bytes": bytes, "wall_s": t0.elapsed().as_secs_f64(), "cpu_s": cpu_seconds() - cpu0});
            println!("{out}");
        }
        Cmd::Encode { count, spec } => {
            let mut batcher = batcher_for(&spec)?;
            let arrow = batcher.schema();
            let now = chrono::Utc::now().timestamp_millis();
            let (mut batches, mut bytes) = (Vec::new(), 0u64);
            for id in 0..count {
                let e = event_json(id, now);
                bytes += e.len() as u64;
                batcher.push(e.as_bytes())?;
                if batcher.rows() == 8192 {
                    batches.extend(batcher.finish());
                }
            }
            batches.extend(batcher.finish());
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .build();
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            let mut writer = ArrowWriter::try_new(std::io::sink(), arrow, Some(props))?;
            for b in &batches {
                writer.write(b)?;
            }
            writer.close()?;
            let out = serde_json::json!({"records": count, "bytes": bytes, "wall_s": t0.elapsed().as_secs_f64(), "cpu_s": cpu_seconds() - cpu0});
            println!("{out}");
        }
    }
    Ok(())
}
