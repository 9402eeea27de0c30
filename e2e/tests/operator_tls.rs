//! The real `tidewater-operator` binary against an https API endpoint (a CA made for the
//! test): its first calls complete a TLS handshake and reach the server, and the process does
//! not panic (rustls with two crypto providers in the build panics at the first handshake
//! unless the binary chooses one; every real cluster is https).

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use tidewater_e2e::{free_port, make_certs, operator_bin};

/// An https server that logs each request line and answers every request with a Kubernetes
/// `Status` 404 (the operator then retries; what matters is that the request arrived).
const SERVER: &str = r#"
import http.server, json, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write(self.requestline + "\n")
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn operator_binary_speaks_https_to_the_api_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = make_certs(dir.path())?;
    let port = free_port();
    let requests = dir.path().join("requests.log");
    let mut server = Command::new("python3")
        .args(["-c", SERVER, &port.to_string()])
        .arg(&cert)
        .arg(&key)
        .arg(&requests)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("python3 https server")?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \
             \"https://127.0.0.1:{port}\", certificate-authority: \"{}\"}}\nusers:\n- name: u\n  \
             user: {{token: e2e}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, \
             namespace: default}}\ncurrent-context: c\n",
            ca.display()
        ),
    )?;
    let log = dir.path().join("operator.log");
    let mut operator = Command::new(operator_bin())
        .args([
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
            // This server answers 404 to everything, a Lease too: without election the
            // controllers' own calls are what reach it.
            "--leader-elect",
            "false",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("operator.err"))?)
        .spawn()
        .context("start tidewater-operator (cargo build -p tidewater-operator)")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        let text = std::fs::read_to_string(&requests).unwrap_or_default();
        if text.contains("/apis/tidewater.dev/v1alpha1/") || Instant::now() > deadline {
            break text;
        }
        if let Some(status) = operator.try_wait()? {
            break format!("operator exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still running after its first calls were answered.
    std::thread::sleep(Duration::from_secs(2));
    let exited = operator.try_wait()?;
    let _ = operator.kill();
    let _ = operator.wait();
    let _ = server.kill();
    let _ = server.wait();
    let mut output = std::fs::read_to_string(&log)?;
    std::fs::File::open(dir.path().join("operator.err"))?.read_to_string(&mut output)?;
    ensure!(
        !output.contains("panicked") && !output.contains("CryptoProvider"),
        "the operator panicked: {output}"
    );
    ensure!(
        exited.is_none(),
        "the operator exited ({exited:?}): {output}"
    );
    ensure!(
        arrived.contains("GET /apis/tidewater.dev/v1alpha1/"),
        "no request of the operator reached the https server (requests: {arrived:?}): {output}"
    );
    eprintln!(
        "tidewater-operator over https: {} requests, first: {}",
        arrived.lines().count(),
        arrived.lines().next().unwrap_or_default()
    );
    Ok(())
}
