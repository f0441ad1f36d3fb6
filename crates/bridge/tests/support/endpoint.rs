//! A webhook endpoint for tests: axum on 127.0.0.1:0, answering each
//! request as the test says and recording what it received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What the endpoint does with its n-th request (from 0).
pub type Answer = Arc<dyn Fn(usize) -> (StatusCode, Duration) + Send + Sync>;

/// One request the endpoint received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub status: StatusCode,
}

#[derive(Clone)]
pub struct Endpoint {
    answer: Answer,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Endpoint {
    /// Serves on a free loopback port until the test's runtime ends.
    pub async fn start(
        answer: impl Fn(usize) -> (StatusCode, Duration) + Send + Sync + 'static,
    ) -> (Endpoint, String) {
        let ep = Endpoint {
            answer: Arc::new(answer),
            seen: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(ep.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (ep, url)
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

async fn hook(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = ep.seen.lock().unwrap().len();
    let (status, delay) = (ep.answer)(n);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // Recorded before the delay, so a test can see a request in flight.
    ep.seen.lock().unwrap().push(Received {
        signature: header("x-fieldcast-signature"),
        content_type: header("content-type"),
        body,
        status,
    });
    tokio::time::sleep(delay).await;
    status
}

/// The signature a receiver computes: an HMAC written here with the
/// RustCrypto crates directly, not through the bridge's `sign`.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}
