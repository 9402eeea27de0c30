//! Shared by the controllers' tests: the operator context, a recording mock API server
//! (tower-test) that answers through a closure, and the CompactionPolicy example fixture.
#![allow(dead_code)] // each test binary uses its part

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::{Client, client::Body, runtime::events::Reporter};
use serde_json::{Value, json};
use tidewater_crds::CompactionPolicy;
use tidewater_operator::kube_io::{Address, Context};

pub mod walk;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The operator's context on `client`.
pub fn context(client: Client, address: Address) -> Arc<Context> {
    Arc::new(Context {
        client,
        default_image: "ghcr.io/tidewater/runtime:0.1.0".into(),
        pods_otlp: Default::default(),
        address,
        reporter: Reporter {
            controller: "tidewater-operator".into(),
            instance: None,
        },
        metrics: Arc::default(),
    })
}

/// One request seen by the mock API server.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

/// Answers every request with `answer(method, path, body)` (given `metadata` when it has
/// none) and records it.
pub fn serve(
    mut handle: Handle,
    answer: impl Fn(&Method, &str, Value) -> Value + Send + 'static,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            log.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
            let mut reply = answer(&method, &path, body);
            if reply.get("metadata").is_none() {
                reply["metadata"] = json!({"name": "x", "namespace": "analytics"});
            }
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (task, seen)
}

/// `examples/compaction.yaml` plus `extra` spec lines, in namespace `ns`.
pub fn policy(extra: &str, ns: &str) -> CompactionPolicy {
    let mut p: CompactionPolicy = serde_yaml::from_str(&format!(
        "{}{extra}",
        include_str!("../../../examples/compaction.yaml")
    ))
    .unwrap();
    p.metadata.namespace = Some(ns.into());
    p.metadata.uid = Some("uid-cp".into());
    p.metadata.generation = Some(2);
    p
}
