//! The other servers a test needs: PostgreSQL (a catalog), moto (S3), the REST catalog (plain or
//! https with OAuth2) with the test certificates, and the schema registry with its Avro
//! producer (confluent-kafka's serializer). Each listens on 127.0.0.1 and stops when its
//! handle drops.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context, Result};

use crate::{free_port, repo_root, venv_python, wait_owned_port};

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
pub(crate) struct Server(pub(crate) Child);

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

/// The project's Confluent-compatible schema registry (e2e/servers/schema_registry.py).
pub struct SchemaRegistry {
    _server: Server,
    pub port: u16,
    /// `user:password` every request must carry (HTTP basic), when set.
    pub basic_auth: Option<String>,
}

impl SchemaRegistry {
    /// A registry with empty state; its log goes to `dir/schema-registry.log`.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with_auth(dir, None)
    }

    /// A registry that refuses requests without HTTP basic `user:password` (when given).
    pub fn start_with_auth(dir: &Path, basic_auth: Option<&str>) -> Result<Self> {
        let port = free_port();
        let log = std::fs::File::create(dir.join("schema-registry.log"))?;
        let mut cmd = Command::new(venv_python());
        cmd.arg(repo_root().join("e2e/servers/schema_registry.py"))
            .args(["--port", &port.to_string()]);
        if let Some(auth) = basic_auth {
            cmd.args(["--basic-auth", auth]);
        }
        let child = cmd.stdout(log.try_clone()?).stderr(log).spawn()?;
        let mut server = Server(child);
        wait_owned_port(&mut server.0, port, "schema registry")?;
        Ok(Self {
            _server: server,
            port,
            basic_auth: basic_auth.map(str::to_string),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET path` as JSON (the test reads the registry's state with it).
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.request("GET", path, "")
    }

    /// Registers `schema` (Avro, JSON text) under `subject`; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u64> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.request("POST", &format!("/subjects/{subject}/versions"), &body)?;
        answer["id"].as_u64().context("registry answer without id")
    }

    fn request(&self, method: &str, path: &str, body: &str) -> Result<serde_json::Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let auth = self.basic_auth.as_ref().map_or(String::new(), |a| {
            use base64::Engine as _;
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
        anyhow::ensure!(head.contains(" 200 "), "{method} {path}: {head} {body}");
        Ok(serde_json::from_str(body)?)
    }
}

/// Produces `records` (JSON objects) as Avro with confluent-kafka's AvroSerializer under
/// `schema` (e2e/producers/avro_produce.py); returns its exit code and stderr.
pub fn produce_avro(
    bootstrap: &str,
    registry: &SchemaRegistry,
    topic: &str,
    schema: &Path,
    records: &[String],
) -> Result<(Option<i32>, String)> {
    let mut cmd = Command::new(venv_python());
    cmd.arg(repo_root().join("e2e/producers/avro_produce.py"))
        .args([
            "--bootstrap",
            bootstrap,
            "--registry",
            &registry.url(),
            "--topic",
            topic,
        ]);
    if let Some(auth) = &registry.basic_auth {
        cmd.args(["--registry-auth", auth]);
    }
    let mut child = cmd
        .arg("--schema")
        .arg(schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    for r in records {
        writeln!(stdin, "{r}")?;
    }
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
