//! End-to-end harness: starts real components (Tansu broker, PostgreSQL), produces events,
//! runs the `tidewater` binary as a separate process, and reads tables back through
//! independent readers (PyIceberg and DuckDB). Every server listens on 127.0.0.1 only and is
//! stopped when its handle drops.
#![allow(missing_docs, clippy::missing_panics_doc)]

pub mod kubelet;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
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

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Chooses rustls' ring provider for this process (the graph enables both ring and aws-lc-rs,
/// so rustls cannot choose and would panic at the first https handshake). Call before the
/// first kube client is built; repeated calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The operator binary next to [`tidewater_bin`] (`TIDEWATER_OPERATOR_BIN` overrides).
pub fn operator_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEWATER_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    tidewater_bin().with_file_name("tidewater-operator")
}

/// The `tidewater` binary built in the same target directory as the running test.
pub fn tidewater_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEWATER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/tidewater
    let bin = exe.parent().unwrap().parent().unwrap().join("tidewater");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p tidewater-runtime` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The Python of the project's venv (PyIceberg, DuckDB).
pub fn venv_python_path() -> PathBuf {
    venv_python()
}

fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, reserved for this test process for a few minutes.
///
/// The kernel may hand the same free port to two test processes that ask at nearly the same
/// time (nextest runs tests as parallel processes, and the port is only free until someone
/// binds it). A port is handed out only if its reservation file under the temp directory
/// could be created exclusively; reservations older than five minutes are reclaimed.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("tidewater-e2e-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = dir.join(port.to_string());
        let stale = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300));
        if stale {
            let _ = std::fs::remove_file(&file);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .is_ok()
        {
            return port;
        }
    }
    panic!(
        "no free port reservable in 100 attempts under {}",
        dir.display()
    );
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (Linux `/proc`).
///
/// Answers "is the server on this port the one this test started" where a connect would
/// also succeed against another test's server.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
}

/// Waits until `child` listens on `port`; an error if it exits first (port taken) or
/// another process holds the port.
fn wait_owned_port(child: &mut Child, port: u16, what: &str) -> Result<()> {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if listens_on(pid, port) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} on port {port} exited ({status}): port taken by another process?");
        }
        if Instant::now() > deadline {
            bail!("timed out after 60s waiting for {what} to listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
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
        use std::sync::atomic::Ordering;
        let producer = broker.producer()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, topic) = (stop.clone(), topic.to_string());
        let handle = std::thread::spawn(move || -> Result<u64> {
            let chunk = (per_second / 20).max(1);
            let mut next = 0u64;
            while !s.load(Ordering::Relaxed) {
                producer.send_events(&topic, partitions, next..next + chunk)?;
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

/// A PostgreSQL server in a temporary directory (for the Postgres catalog tests).
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn pg_bin(name: &str) -> PathBuf {
        for dir in [
            "/usr/local/bin",
            "/usr/lib/postgresql/17/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/15/bin",
        ] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
        PathBuf::from(name)
    }

    fn command(&self, name: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(Self::pg_bin(name));
            c
        } else {
            Command::new(Self::pg_bin(name))
        }
    }

    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let as_postgres = std::env::var("USER").map_or(true, |u| u == "root")
            && Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout.starts_with(b"0"))
                .unwrap_or(false);
        let pg = Self {
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = pg.dir.path().join("data");
        if as_postgres {
            std::fs::create_dir_all(&data)?;
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(pg.dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "chown for postgres failed");
        }
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            pg.port,
            pg.dir.path().display()
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(pg.dir.path().join("log"))
            .args(["-w", "start"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(pg)
    }

    /// A catalog URI for database `postgres`.
    pub fn uri(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Credentials the tests give moto (it accepts any) through the environment, never the spec.
pub const S3_KEY_ID: &str = "tidewater-test";
pub const S3_SECRET: &str = "tidewater-test-secret";

/// A child process killed when the handle drops.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An S3-compatible server (moto) on a free port, with one bucket.
pub struct Moto {
    _server: Server,
    pub port: u16,
    pub bucket: String,
}

impl Moto {
    pub fn start(bucket: &str, log: &Path) -> Result<Self> {
        let port = free_port();
        let log = std::fs::File::create(log)?;
        let child = Command::new(repo_root().join(".venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("moto_server (scripts/setup.sh installs it)")?;
        let mut server = Server(child);
        wait_owned_port(&mut server.0, port, "moto")?;
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        write!(
            s,
            "PUT /{bucket} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        anyhow::ensure!(reply.contains(" 200 "), "create bucket: {reply}");
        Ok(Self {
            _server: server,
            port,
            bucket: bucket.into(),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id (to pause it with SIGSTOP: S3 that hangs).
    pub fn pid(&self) -> u32 {
        self._server.0.id()
    }

    /// Iceberg `s3.*` properties for readers and the REST server.
    pub fn props(&self) -> Vec<(String, String)> {
        vec![
            ("s3.endpoint".into(), self.endpoint()),
            ("s3.access-key-id".into(), S3_KEY_ID.into()),
            ("s3.secret-access-key".into(), S3_SECRET.into()),
            ("s3.region".into(), "us-east-1".into()),
            ("s3.path-style-access".into(), "true".into()),
        ]
    }
}

/// The project's REST catalog test server (e2e/servers/rest_catalog.py) on a free port.
pub struct RestCatalog {
    _server: Server,
    pub port: u16,
    pub token: String,
    /// `https` when started with TLS.
    pub scheme: &'static str,
    /// The CA that signed the server certificate (TLS only).
    pub ca_file: Option<PathBuf>,
}

/// The OAuth2 client the TLS test server accepts, and the environment variable that hands
/// `id:secret` to tidewater processes.
pub const OAUTH_CLIENT: (&str, &str) = ("tidewater", "client-s3cret");
pub const OAUTH_ENV: &str = "TW_TEST_CATALOG_CREDENTIAL";

/// A CA and a server certificate for 127.0.0.1 (openssl CLI), in `dir`: (CA, cert, key).
pub fn make_certs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tidewater test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

impl RestCatalog {
    /// A server over a SQLite SqlCatalog in `dir`, warehouse `warehouse`, requiring `token`.
    pub fn start(
        dir: &Path,
        warehouse: &str,
        props: &[(String, String)],
        token: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let port = free_port();
        let log = std::fs::File::create(dir.join("rest-catalog.log"))?;
        let mut cmd = Command::new(venv_python());
        cmd.arg(repo_root().join("e2e/servers/rest_catalog.py"))
            .args(["--port", &port.to_string()])
            .arg("--catalog-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.join("rest-catalog.db").display()
            ))
            .args(["--warehouse", warehouse, "--token", token])
            .args(extra);
        for (k, v) in props {
            cmd.arg("--prop").arg(format!("{k}={v}"));
        }
        let child = cmd.stdout(log.try_clone()?).stderr(log).spawn()?;
        let mut server = Server(child);
        wait_owned_port(&mut server.0, port, "REST catalog")?;
        Ok(Self {
            _server: server,
            port,
            token: token.into(),
            scheme: "http",
            ca_file: None,
        })
    }

    /// A server on https (a CA made for the test) that hands out tokens for the OAuth2 client
    /// [`OAUTH_CLIENT`]; `extra` as for [`RestCatalog::start`].
    pub fn start_tls_oauth(
        dir: &Path,
        warehouse: &str,
        props: &[(String, String)],
        extra: &[&str],
    ) -> Result<Self> {
        let (ca, cert, key) = make_certs(dir)?;
        let cert = cert.display().to_string();
        let key = key.display().to_string();
        let mut args = vec![
            "--client-id",
            OAUTH_CLIENT.0,
            "--client-secret",
            OAUTH_CLIENT.1,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        args.extend_from_slice(extra);
        let mut server = Self::start(dir, warehouse, props, "issued-by-oauth", &args)?;
        server.scheme = "https";
        server.ca_file = Some(ca);
        Ok(server)
    }

    pub fn uri(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Lines of the server's log (e.g. injected failures).
    pub fn log_text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("rest-catalog.log")).unwrap_or_default()
    }
}

/// Parameters of a test pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    pub catalog_uri: String,
    pub warehouse: PathBuf,
    pub table: String,
    pub interval: String,
    pub parallelism: u32,
    pub dead_letter: Option<String>,
    pub max_record_bytes: Option<u64>,
    pub partition_by: Vec<String>,
    /// More subscribed topics (they may not exist yet).
    pub extra_topics: Vec<String>,
    /// Extra `writeProperties`.
    pub write_properties: Vec<(String, String)>,
    /// `source.kafka.startingOffsets`.
    pub starting_offsets: String,
    /// `sql` or `rest`.
    pub catalog_type: String,
    /// Overrides `warehouse` (e.g. `s3://bucket/wh`).
    pub warehouse_uri: Option<String>,
    /// `spec.storage.s3.endpoint` (path-style, credentials from the environment).
    pub s3_endpoint: Option<String>,
    /// REST bearer token file (`spec.sink.catalog.auth.secretFile`).
    pub token_file: Option<PathBuf>,
    /// The token, for the readers.
    pub token: Option<String>,
    /// OAuth2 client credentials from [`OAUTH_ENV`] instead of a token (REST).
    pub oauth_env: bool,
    /// `checkpoint.timeout`.
    pub checkpoint_timeout: String,
    /// `source.kafka.topicPattern` instead of the topic list.
    pub topic_pattern: Option<String>,
    /// `spec.sink.catalog.caFile`.
    pub ca_file: Option<PathBuf>,
    /// `spec.source.kafka.security`, as YAML lines indented for that key.
    pub kafka_security: Option<String>,
}

impl PipelineSpec {
    /// A click-event pipeline with everything under `dir`.
    pub fn clicks(dir: &Path, bootstrap: &str, topic: &str) -> Self {
        Self {
            name: "clicks".into(),
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            catalog_uri: format!("sqlite://{}", dir.join("catalog.db").display()),
            warehouse: dir.join("warehouse"),
            table: "analytics.clicks".into(),
            interval: "1s".into(),
            parallelism: 2,
            dead_letter: None,
            max_record_bytes: None,
            partition_by: vec!["day(ts)".into()],
            extra_topics: Vec::new(),
            write_properties: Vec::new(),
            starting_offsets: "earliest".into(),
            catalog_type: "sql".into(),
            warehouse_uri: None,
            s3_endpoint: None,
            token_file: None,
            token: None,
            oauth_env: false,
            ca_file: None,
            checkpoint_timeout: "60s".into(),
            topic_pattern: None,
            kafka_security: None,
        }
    }

    /// The same pipeline on a REST catalog and S3 (moto): data, metadata and state in S3.
    pub fn on_rest_and_s3(mut self, dir: &Path, rest: &RestCatalog, moto: &Moto) -> Result<Self> {
        let token_file = dir.join("catalog-token");
        std::fs::write(&token_file, &rest.token)?;
        self.catalog_type = "rest".into();
        self.catalog_uri = rest.uri();
        self.warehouse_uri = Some(format!("s3://{}/warehouse", moto.bucket));
        self.s3_endpoint = Some(moto.endpoint());
        self.token_file = Some(token_file);
        self.token = Some(rest.token.clone());
        if rest.scheme == "https" {
            self.token_file = None;
            self.oauth_env = true;
            self.ca_file = rest.ca_file.clone();
        }
        Ok(self)
    }

    fn warehouse_text(&self) -> String {
        self.warehouse_uri
            .clone()
            .unwrap_or_else(|| self.warehouse.display().to_string())
    }

    pub fn yaml(&self) -> String {
        let dl = self
            .dead_letter
            .as_ref()
            .map(|t| format!("  deadLetter:\n    topic: {t}\n"))
            .unwrap_or_default();
        let max = self
            .max_record_bytes
            .map(|m| format!("    maxRecordBytes: {m}\n"))
            .unwrap_or_default();
        let parts = serde_json::to_string(&self.partition_by).unwrap();
        let mut props = BTreeMap::from([(
            "write.parquet.compression-codec".to_string(),
            "zstd".to_string(),
        )]);
        props.extend(self.write_properties.iter().cloned());
        let props: String = props
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        format!(
            r#"apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: {name}
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
      {topics}
      startingOffsets: "{starting}"
      partitionDiscoveryInterval: 2s
{security}  format:
    type: json
{max}  sink:
    catalog:
      type: {catalog_type}
      uri: {uri}
      warehouse: {warehouse}
{auth}    table: {table}
    mode: append
    createTable:
      schema:
        - {{name: id, type: long, required: true}}
        - {{name: ts, type: timestamptz}}
        - {{name: user_id, type: string}}
        - {{name: event_type, type: string}}
        - {{name: amount, type: double}}
      partitionBy: {parts}
    writeProperties:
{props}  checkpoint:
    interval: {interval}
    timeout: {timeout}
  parallelism: {parallelism}
{dl}{storage}"#,
            name = self.name,
            bootstrap = self.bootstrap,
            topics = match &self.topic_pattern {
                Some(p) => format!("topicPattern: '{p}'"),
                None => format!(
                    "topics: [{}]",
                    std::iter::once(&self.topic)
                        .chain(&self.extra_topics)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            security = self
                .kafka_security
                .as_ref()
                .map(|y| format!("      security:\n{y}"))
                .unwrap_or_default(),
            uri = self.catalog_uri,
            warehouse = self.warehouse_text(),
            catalog_type = self.catalog_type,
            auth = match (&self.token_file, self.oauth_env) {
                (_, true) => format!(
                    "      auth:\n        type: oauth2\n        secretEnv: {OAUTH_ENV}\n{}",
                    self.ca_file
                        .as_ref()
                        .map(|c| format!("      caFile: {}\n", c.display()))
                        .unwrap_or_default()
                ),
                (Some(f), false) => format!(
                    "      auth:\n        type: bearer\n        secretFile: {}\n",
                    f.display()
                ),
                (None, false) => String::new(),
            },
            storage = self
                .s3_endpoint
                .as_ref()
                .map(|e| format!(
                    "  storage:\n    s3:\n      endpoint: {e}\n      region: us-east-1\n      pathStyleAccess: true\n"
                ))
                .unwrap_or_default(),
            table = self.table,
            interval = self.interval,
            timeout = self.checkpoint_timeout,
            starting = self.starting_offsets,
            parallelism = self.parallelism,
        )
    }

    /// Writes the spec to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.yaml())?;
        Ok(())
    }

    /// What PyIceberg and DuckDB see in the table.
    pub fn inspect(&self) -> Result<TableView> {
        self.read("pyiceberg,duckdb")
    }

    /// Live data files as PyIceberg sees them.
    pub fn live_files(&self) -> Result<Vec<LiveDataFile>> {
        let view = self.read_with("pyiceberg", &["--files"])?;
        let text = |f: &serde_json::Value, k: &str| f[k].as_str().unwrap_or_default().to_string();
        Ok(view.raw["files"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| LiveDataFile {
                        path: text(f, "path"),
                        codec: text(f, "codec"),
                        partition: text(f, "partition"),
                        size: f["size"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Live data files: path, partition (JSON), size in bytes.
    pub fn data_files_by_partition(&self) -> Result<Vec<(String, String, u64)>> {
        Ok(self
            .live_files()?
            .into_iter()
            .map(|f| (f.path, f.partition, f.size))
            .collect())
    }

    /// Live data files: path, Parquet codec.
    pub fn data_files(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .live_files()?
            .into_iter()
            .map(|f| (f.path, f.codec))
            .collect())
    }

    fn read(&self, readers: &str) -> Result<TableView> {
        self.read_with(readers, &[])
    }

    fn read_with(&self, readers: &str, extra: &[&str]) -> Result<TableView> {
        let mut args: Vec<String> = vec![
            "--catalog-type".into(),
            self.catalog_type.clone(),
            "--catalog-uri".into(),
            self.catalog_uri.clone(),
            "--table".into(),
            self.table.clone(),
            "--readers".into(),
            readers.into(),
            "--warehouse".into(),
            match &self.warehouse_uri {
                Some(w) => w.clone(),
                None => format!("file://{}", self.warehouse.display()),
            },
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        if self.oauth_env {
            args.extend([
                "--credential".into(),
                format!("{}:{}", OAUTH_CLIENT.0, OAUTH_CLIENT.1),
            ]);
        } else if let Some(t) = &self.token {
            args.extend(["--token".into(), t.clone()]);
        }
        if let Some(ca) = &self.ca_file {
            args.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        if let Some(e) = &self.s3_endpoint {
            args.extend([
                "--s3-endpoint".into(),
                e.clone(),
                "--s3-key-id".into(),
                S3_KEY_ID.into(),
                "--s3-secret".into(),
                S3_SECRET.into(),
            ]);
        }
        run_reader(&args)
    }
}

/// One live data file as PyIceberg lists it.
#[derive(Debug, Clone)]
pub struct LiveDataFile {
    pub path: String,
    /// Parquet codec of the first column chunk.
    pub codec: String,
    /// The partition tuple as JSON.
    pub partition: String,
    pub size: u64,
}

/// Counts from the independent readers.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    pub exists: bool,
    pub pyiceberg_rows: u64,
    pub pyiceberg_distinct: u64,
    pub duckdb_rows: u64,
    pub duckdb_distinct: u64,
    pub raw: serde_json::Value,
}

impl TableView {
    /// Both readers see exactly `n` rows with `n` distinct ids: nothing lost, nothing twice.
    #[track_caller]
    pub fn assert_exactly(&self, n: u64) {
        assert_eq!(self.pyiceberg_rows, n, "PyIceberg rows: {self:?}");
        assert_eq!(
            self.pyiceberg_distinct, n,
            "PyIceberg distinct ids: {self:?}"
        );
        assert_eq!(self.duckdb_rows, n, "DuckDB rows: {self:?}");
        assert_eq!(self.duckdb_distinct, n, "DuckDB distinct ids: {self:?}");
    }
}

/// Reads a table with PyIceberg and DuckDB (e2e/readers/inspect_table.py).
pub fn inspect_table(catalog_uri: &str, warehouse: &Path, table: &str) -> Result<TableView> {
    read_table(catalog_uri, warehouse, table, "pyiceberg,duckdb")
}

/// Runs the reader script with the given readers (`pyiceberg`, `duckdb`).
fn read_table(
    catalog_uri: &str,
    warehouse: &Path,
    table: &str,
    readers: &str,
) -> Result<TableView> {
    let args: Vec<String> = vec![
        "--catalog-uri".into(),
        catalog_uri.into(),
        "--table".into(),
        table.into(),
        "--readers".into(),
        readers.into(),
        "--warehouse".into(),
        format!("file://{}", warehouse.display()),
    ];
    run_reader(&args)
}

fn run_reader(args: &[String]) -> Result<TableView> {
    let out = Command::new(venv_python())
        .arg(repo_root().join("e2e/readers/inspect_table.py"))
        .args(args)
        .output()?;
    if out.status.code() == Some(3) {
        return Ok(TableView::default());
    }
    anyhow::ensure!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let n = |path: &str| {
        raw.pointer(path)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(TableView {
        exists: true,
        pyiceberg_rows: n("/pyiceberg/rows"),
        pyiceberg_distinct: n("/pyiceberg/distinct"),
        duckdb_rows: n("/duckdb/rows"),
        duckdb_distinct: n("/duckdb/distinct"),
        raw,
    })
}

/// Sends signal `sig` (TERM, STOP, CONT, …) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid}");
    Ok(())
}

/// A `tidewater` process (`run`, `coordinator` or `worker`).
pub struct Tidewater {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Tidewater {
    /// Starts `tidewater run -f spec` with optional fail points; logs go to `log`.
    pub fn start(spec: &Path, log: &Path, failpoints: Option<&str>) -> Result<Self> {
        Self::start_with(spec, log, failpoints, &[])
    }

    /// `tidewater run -f spec EXTRA…`.
    pub fn start_with(
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = vec!["run".into(), "-f".into(), spec.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(&args, "--metrics-addr", log, failpoints)
    }

    /// `tidewater coordinator -f spec EXTRA…` on a free port.
    pub fn coordinator(
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::coordinator_at(free_port(), spec, log, failpoints, extra)
    }

    /// A coordinator on a given port (a restarted coordinator keeps its address, as behind
    /// a Kubernetes Service).
    pub fn coordinator_at(
        port: u16,
        spec: &Path,
        log: &Path,
        failpoints: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "-f".into(),
            spec.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn_on(port, &args, "--listen", log, failpoints)
    }

    /// `tidewater worker --coordinator URL --name NAME`.
    pub fn worker(coordinator_url: &str, name: &str, log: &Path) -> Result<Self> {
        Self::worker_with(coordinator_url, name, log, None)
    }

    /// A worker with fail points armed.
    pub fn worker_with(
        coordinator_url: &str,
        name: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        let args: Vec<String> = vec![
            "worker".into(),
            "--coordinator".into(),
            coordinator_url.into(),
            "--name".into(),
            name.into(),
        ];
        Self::spawn(&args, "--metrics-addr", log, failpoints)
    }

    /// The coordinator's base URL (for workers).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    fn spawn(
        args: &[String],
        addr_flag: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        Self::spawn_on(free_port(), args, addr_flag, log, failpoints)
    }

    fn spawn_on(
        metrics_port: u16,
        args: &[String],
        addr_flag: &str,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(tidewater_bin());
        cmd.args(args)
            .arg(addr_flag)
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info,sqlx=warn,iceberg=warn,opendal=warn")
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env(OAUTH_ENV, format!("{}:{}", OAUTH_CLIENT.0, OAUTH_CLIENT.1))
            .stdout(Stdio::null())
            .stderr(log_file);
        match failpoints {
            Some(f) => cmd.env("TIDEWATER_FAILPOINTS", f),
            None => cmd.env_remove("TIDEWATER_FAILPOINTS"),
        };
        Ok(Self {
            child: Some(cmd.spawn()?),
            metrics_port,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, like `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (TERM, STOP, CONT).
    pub fn signal(&self, sig: &str) {
        let _ = signal(self.pid(), sig);
    }

    /// Exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for("process exit", timeout, || self.try_wait()).ok()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal("TERM");
        let status = self
            .wait_timeout(timeout)
            .context("tidewater did not stop after SIGTERM")?;
        self.child = None;
        Ok(status)
    }

    /// GET a path on the HTTP port.
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        self.http("GET", path, None)
    }

    /// POST a JSON body to a path on the HTTP port.
    pub fn http_post(&self, path: &str, json: &str) -> Result<(u16, String)> {
        self.http("POST", path, Some(json))
    }

    fn http(&self, method: &str, path: &str, json: Option<&str>) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        match json {
            Some(b) => write!(
                s,
                "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )?,
            None => write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?,
        }
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let code = body
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let body = body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = self.http_get("/v1/status")?;
        anyhow::ensure!(code == 200, "status {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until `/readyz` answers 200 (recovered and reading).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait_for("readyz", timeout, || match self.http_get("/readyz") {
            Ok((200, _)) => Some(()),
            _ => None,
        })
    }

    /// The value of a metric line (`name` including labels) from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").ok()?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tidewater {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls until the readers see `rows` rows (PyIceberg only, for speed).
pub fn wait_for_rows(spec: &PipelineSpec, rows: u64, timeout: Duration) -> Result<TableView> {
    let deadline = Instant::now() + timeout;
    loop {
        let view = inspect_table_fast(spec)?;
        if view.pyiceberg_rows >= rows || Instant::now() > deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn inspect_table_fast(spec: &PipelineSpec) -> Result<TableView> {
    spec.read("pyiceberg")
}
