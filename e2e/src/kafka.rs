//! The broker side of a test: a Tansu broker (plain, or behind the TLS/SASL gateway), topics, and
//! producers of the standard click events.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{BaseProducer, BaseRecord, Producer},
};

use crate::{
    free_port, make_certs, repo_root, servers::Server, venv_python, wait_for, wait_owned_port,
};

/// A Tansu broker with in-memory storage on a free port.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    /// librdkafka properties every client of this broker needs (TLS / SASL).
    pub client_properties: Vec<(String, String)>,
    _gateway: Option<Server>,
}

/// TLS and SASL in front of the test broker ([`Broker::start_secured`]).
#[derive(Debug, Clone, Default)]
pub struct KafkaSecurity {
    /// Serve TLS with a certificate from [`make_certs`]'s CA.
    pub tls: bool,
    /// Also require a client certificate (mutual TLS).
    pub client_certificate: bool,
    /// SASL users (`name`, `password`); none: no SASL.
    pub users: Vec<(String, String)>,
}

/// What clients need to reach a secured broker (files under the test directory).
#[derive(Debug, Clone)]
pub struct KafkaClientFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Broker {
    pub fn start() -> Result<Self> {
        // A port free when picked may be taken by a parallel test before the broker binds
        // it; then this broker exits and the other test's broker would answer in its place.
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            match Self::launch(port, port, Vec::new(), None) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// A broker reachable only through the TLS/SASL gateway (e2e/servers/kafka_gateway.py):
    /// Tansu advertises the gateway's address. `client` is the librdkafka security of the
    /// harness's own clients (producer, topic admin, readers).
    pub fn start_secured(
        dir: &Path,
        security: &KafkaSecurity,
        client: Vec<(String, String)>,
    ) -> Result<(Self, KafkaClientFiles)> {
        let certs = dir.join("kafka-certs");
        std::fs::create_dir_all(&certs)?;
        let (ca, cert, key) = make_certs(&certs)?;
        let files = KafkaClientFiles {
            ca_file: ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
        };
        let port = free_port();
        let gateway_port = free_port();
        let log = std::fs::File::create(dir.join("kafka-gateway.log"))?;
        let mut cmd = Command::new(venv_python());
        cmd.arg(repo_root().join("e2e/servers/kafka_gateway.py"))
            .args(["--port", &gateway_port.to_string()])
            .args(["--upstream", &format!("127.0.0.1:{port}")]);
        if security.tls {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
            if security.client_certificate {
                cmd.arg("--client-ca").arg(&ca);
            }
        }
        for (user, password) in &security.users {
            cmd.args(["--user", &format!("{user}:{password}")]);
        }
        let mut gateway = Server(cmd.stdout(log.try_clone()?).stderr(log).spawn()?);
        wait_owned_port(&mut gateway.0, gateway_port, "kafka gateway")?;
        let broker = Self::launch(port, gateway_port, client, Some(gateway))?;
        Ok((broker, files))
    }

    fn launch(
        port: u16,
        advertised_port: u16,
        client_properties: Vec<(String, String)>,
        gateway: Option<Server>,
    ) -> Result<Self> {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised_port}");
        let bin = repo_root().join("bin/tansu");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} (run scripts/setup.sh)", bin.display()))?;
        let mut broker = Self {
            child,
            bootstrap: format!("127.0.0.1:{advertised_port}"),
            client_properties,
            _gateway: gateway,
        };
        // The answer must come from this broker, not another test's on the same port.
        wait_owned_port(&mut broker.child, port, "the broker")?;
        let consumer: BaseConsumer = broker.client_config().create()?;
        wait_for("broker metadata", Duration::from_secs(20), || {
            consumer.fetch_metadata(None, Duration::from_secs(1)).ok()
        })?;
        Ok(broker)
    }

    /// A client configuration for this broker (bootstrap servers and security).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }

    /// Creates a topic and waits until its partitions are visible.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        create_topic_with(self.client_config(), topic, partitions, false)?;
        let consumer: BaseConsumer = self.client_config().create()?;
        wait_for("topic partitions", Duration::from_secs(20), || {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(1))
                .ok()?;
            let n = md.topics().first()?.partitions().len();
            (i32::try_from(n).ok()? == partitions).then_some(())
        })
    }

    /// A producer to this broker.
    pub fn producer(&self) -> Result<EventProducer> {
        EventProducer::with_config(self.client_config())
    }

    /// Reads every record of `topic` until `expected` are seen or `timeout` passes.
    pub fn consume_all(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<ConsumedRecord>> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", format!("e2e-reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md
            .topics()
            .first()
            .map(|t| t.partitions())
            .unwrap_or_default()
        {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < expected && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(ConsumedRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        Ok(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a topic; with `exist_ok`, a topic that already exists is fine.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, exist_ok: bool) -> Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    create_topic_with(config, topic, partitions, exist_ok)
}

fn create_topic_with(
    config: ClientConfig,
    topic: &str,
    partitions: i32,
    exist_ok: bool,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in rt.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        match r {
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if exist_ok => {}
            Err((t, e)) => bail!("create topic {t}: {e}"),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// One click event of about 200 bytes; `id` is unique per event.
pub fn event_json(id: u64, ts_ms: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let kinds = ["click", "view", "purchase", "scroll"];
    format!(
        r#"{{"id":{id},"ts":"{ts}","user_id":"user-{:06}","event_type":"{}","amount":{}.{:02},"page":"/products/category-{}/item-{:08}","session":"s-{:016x}"}}"#,
        id % 100_000,
        kinds[(id % 4) as usize],
        id % 500,
        id % 100,
        id % 37,
        id.wrapping_mul(2_654_435_761),
        id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

/// Produces to the test broker.
pub struct EventProducer {
    producer: BaseProducer,
}

impl EventProducer {
    pub fn new(bootstrap: &str) -> Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        Self::with_config(config)
    }

    /// A producer with `config` (bootstrap servers, security) and the harness's batching.
    pub fn with_config(mut config: ClientConfig) -> Result<Self> {
        let producer = config
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("message.max.bytes", "10485760")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        Ok(Self { producer })
    }

    /// Sends one payload to a partition (queued; call `flush`).
    pub fn send(&self, topic: &str, partition: i32, payload: &[u8]) -> Result<()> {
        self.send_record(topic, partition, None, Some(payload))
    }

    /// Sends one keyed record to a partition; `None` is a tombstone (queued; call `flush`).
    pub fn send_keyed(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<()> {
        self.send_record(topic, partition, Some(key), payload)
    }

    /// Queues a record, waiting while the producer's queue is full.
    fn send_record(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Sends events with ids in `ids`, partition = id mod `partitions`, timestamped now.
    pub fn send_events(
        &self,
        topic: &str,
        partitions: i32,
        ids: std::ops::Range<u64>,
    ) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        for id in ids {
            let p = i32::try_from(id % u64::try_from(partitions).unwrap()).unwrap();
            self.send(topic, p, event_json(id, now).as_bytes())?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.producer.flush(Duration::from_secs(60))?;
        Ok(())
    }
}

/// Produces events with sequential ids (from 0) on a thread until finished.
pub struct BackgroundProducer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64>>,
}

impl BackgroundProducer {
    /// Starts producing about `per_second` events per second over `partitions`.
    pub fn start(broker: &Broker, topic: &str, partitions: i32, per_second: u64) -> Result<Self> {
        Self::start_with(broker, topic, partitions, per_second, |id| {
            event_json(id, chrono::Utc::now().timestamp_millis())
        })
    }

    /// Like [`Self::start`], with the payload of each id made by `make`.
    pub fn start_with(
        broker: &Broker,
        topic: &str,
        partitions: i32,
        per_second: u64,
        make: fn(u64) -> String,
    ) -> Result<Self> {
        use std::sync::atomic::Ordering;
        let producer = broker.producer()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, topic) = (stop.clone(), topic.to_string());
        let handle = std::thread::spawn(move || -> Result<u64> {
            let chunk = (per_second / 20).max(1);
            let mut next = 0u64;
            while !s.load(Ordering::Relaxed) {
                for id in next..next + chunk {
                    let p = i32::try_from(id % u64::try_from(partitions)?)?;
                    producer.send(&topic, p, make(id).as_bytes())?;
                }
                next += chunk;
                producer.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(next)
        });
        Ok(Self { stop, handle })
    }

    /// Stops and returns how many events were produced (all acknowledged).
    pub fn finish(self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))?
    }
}
