//! Leader election between two operator replicas against a mock API server that keeps one
//! Lease the way the real one does (create fails when it exists, a write with a stale
//! resourceVersion is a 409): one leads, the other waits; killed, the leader is replaced within
//! the lease duration; shutting down, it hands over at once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, client::Body};
use serde_json::{Value, json};
use tidewater_operator::leader::{Elector, Timing};
use tokio::time::Instant;

/// The API server's copy of the Lease.
#[derive(Default)]
struct Store {
    lease: Option<Value>,
    version: u64,
}

fn status(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": reason, "reason": reason, "code": code}),
    )
}

/// Answers GET, POST and PUT of one Lease with optimistic concurrency.
fn answer(store: &Mutex<Store>, method: &Method, body: Value) -> (StatusCode, Value) {
    let mut s = store.lock().unwrap();
    match *method {
        Method::GET => match &s.lease {
            Some(l) => (StatusCode::OK, l.clone()),
            None => status(404, "NotFound"),
        },
        Method::POST if s.lease.is_some() => status(409, "AlreadyExists"),
        Method::PUT
            if s.lease
                .as_ref()
                .map(|l| l["metadata"]["resourceVersion"].clone())
                != Some(body["metadata"]["resourceVersion"].clone()) =>
        {
            status(409, "Conflict")
        }
        Method::POST | Method::PUT => {
            s.version += 1;
            let mut lease = body;
            lease["metadata"]["resourceVersion"] = json!(s.version.to_string());
            lease["metadata"]["namespace"] = json!("tidewater-system");
            s.lease = Some(lease.clone());
            (StatusCode::OK, lease)
        }
        _ => status(405, "MethodNotAllowed"),
    }
}

/// A candidate whose client talks to `store`; the returned task is its connection (abort it
/// to cut the candidate off, as a killed pod).
fn candidate(
    store: Arc<Mutex<Store>>,
    identity: &str,
    timing: Timing,
) -> (Elector, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = answer(&store, &method, body);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = Client::new(service, "tidewater-system");
    let api: Api<Lease> = Api::namespaced(client, "tidewater-system");
    (
        Elector::new(api, "tidewater-operator", identity, timing),
        task,
    )
}

fn holder(store: &Mutex<Store>) -> Option<String> {
    store.lock().unwrap().lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn one_leads_the_other_takes_over_when_it_dies_and_at_once_when_it_leaves() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (mut a, a_conn) = candidate(store.clone(), "operator-a", timing());
    let (mut b, _b_conn) = candidate(store.clone(), "operator-b", timing());

    a.acquire().await;
    assert_eq!(holder(&store).as_deref(), Some("operator-a"));
    // B keeps trying while A renews: it never gets the Lease.
    let a_renewing = tokio::spawn(async move {
        let lost = a.keep().await;
        (a, lost)
    });
    let waited = tokio::time::timeout(Duration::from_secs(4), b.acquire()).await;
    assert!(waited.is_err(), "B took a live lease");
    assert_eq!(holder(&store).as_deref(), Some("operator-a"));
    let transitions =
        store.lock().unwrap().lease.as_ref().unwrap()["spec"]["leaseTransitions"].as_i64();
    assert_eq!(transitions, Some(0));

    // A is killed: no renewals, no release. B leads within the lease duration (+ a retry).
    a_conn.abort();
    let killed = Instant::now();
    b.acquire().await;
    let took = killed.elapsed();
    assert_eq!(holder(&store).as_deref(), Some("operator-b"));
    assert!(
        took <= timing().lease_duration + timing().retry_period * 3,
        "takeover after {took:?}"
    );
    // A, cut off, notices it can no longer renew and gives up within its renew deadline.
    let (_, lost) = tokio::time::timeout(Duration::from_secs(5), a_renewing)
        .await
        .expect("A gives up")
        .unwrap();
    assert!(lost.to_string().contains("leadership lost"), "{lost}");

    // B shuts down and releases: a new candidate C leads at its first round.
    b.release().await.unwrap();
    assert_eq!(holder(&store), None);
    let (mut c, _c_conn) = candidate(store.clone(), "operator-c", timing());
    let started = Instant::now();
    c.acquire().await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(holder(&store).as_deref(), Some("operator-c"));
    let transitions =
        store.lock().unwrap().lease.as_ref().unwrap()["spec"]["leaseTransitions"].as_i64();
    assert_eq!(transitions, Some(2));
}

#[tokio::test]
async fn two_candidates_racing_for_a_new_lease_elect_one() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (mut a, _a) = candidate(store.clone(), "operator-a", timing());
    let (mut b, _b) = candidate(store.clone(), "operator-b", timing());
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.is_none() != rb.is_none(),
        "exactly one wins: {ra:?} {rb:?}"
    );
    let winner = if ra.is_none() {
        "operator-a"
    } else {
        "operator-b"
    };
    assert_eq!(holder(&store).as_deref(), Some(winner));
}
