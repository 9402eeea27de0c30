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
fn batcher_for(spec: &std::path::Path) -> Result<tidewater_runtime::convert::RowBatcher> {
    let resource = tidewater_crds::IngestionPipeline::from_yaml(&std::fs::read_to_string(spec)?)?;
    let create = resource
        .spec
        .sink
        .create_table
        .expect("spec has createTable");
    let (schema, _) = tidewater_runtime::table::table_definition(&create)?;
    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    tidewater_runtime::convert::RowBatcher::new(arrow).map_err(anyhow::Error::msg)
}

fn main() -> Result<()> {
    match Args::parse().command {
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
