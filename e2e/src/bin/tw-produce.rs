//! `tw-produce`: creates a topic if needed and produces ~200-byte JSON click events
//! (used by the quick start and the benchmark).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use tidewater_e2e::EventProducer;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "clicks")]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    #[arg(long, default_value_t = 0)]
    start_id: u64,
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Also send this many records that cannot be converted (bad JSON, wrong types, a
    /// missing required id), to show the dead-letter path.
    #[arg(long, default_value_t = 0)]
    bad: u64,
}

const BAD_RECORDS: &[&str] = &[
    r#"{"id": 1, "user_id": "#,
    r#"{"id": "not-a-number", "user_id": "u"}"#,
    r#"{"user_id": "u", "event_type": "click"}"#,
];

fn main() -> Result<()> {
    let args = Args::parse();
    tidewater_e2e::create_topic(&args.bootstrap, &args.topic, args.partitions, true)?;
    let producer = EventProducer::new(&args.bootstrap)?;
    let started = Instant::now();
    let chunk = if args.rate == 0 {
        args.count.max(1)
    } else {
        (args.rate / 10).max(1)
    };
    let mut id = args.start_id;
    let end = args.start_id + args.count;
    while id < end {
        let next = (id + chunk).min(end);
        producer.send_events(&args.topic, args.partitions, id..next)?;
        id = next;
        if args.rate > 0 {
            let due = Duration::from_secs_f64((id - args.start_id) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    for i in 0..args.bad {
        let bad = BAD_RECORDS[usize::try_from(i).unwrap_or(0) % BAD_RECORDS.len()];
        let partition =
            i32::try_from(i % u64::try_from(args.partitions.max(1)).unwrap_or(1)).unwrap_or(0);
        producer.send(&args.topic, partition, bad.as_bytes())?;
    }
    producer.flush()?;
    eprintln!(
        "produced {} events (+{} bad records) to {} in {:.2}s",
        args.count,
        args.bad,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
