//! The whole chain in this process for the bench and probe tests: testkit's
//! [`Chain`] (a private Mosquitto, the bridge on it with its own database,
//! Redis prefix and spool), and a gateway on a free port that takes HS256 tokens signed with [`SECRET`].

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use fieldcast_gateway::{AuthMode, Config};
use fieldcast_testkit::chain::Chain;
use fieldcast_testkit::wait_until;

pub const SECRET: &str = "sim-test-secret";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct World {
    pub chain: Chain,
    pub gateway: SocketAddr,
    pub gateway_stop: CancellationToken,
    pub gateway_done: JoinHandle<anyhow::Result<()>>,
}

impl World {
    pub async fn start() -> World {
        let chain = Chain::start("sim").await.expect("broker and bridge");
        let store = chain.store();
        let mut config =
            Config::for_tests(&store.redis_url, &store.redis_prefix, &store.database_url);
        config.auth = AuthMode::Jwt;
        config.jwt_secret = Some(SECRET.into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        let gateway_stop = CancellationToken::new();
        let gateway_done = tokio::spawn(fieldcast_gateway::serve(
            config,
            listener,
            gateway_stop.clone(),
        ));
        wait_until(WAIT, "gateway ready", || async move {
            http_get(gateway, "/readyz").await.0 == 200
        })
        .await
        .expect("gateway becomes ready");
        World {
            chain,
            gateway,
            gateway_stop,
            gateway_done,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway)
    }

    pub async fn stop(self) {
        self.gateway_stop.cancel();
        self.gateway_done
            .await
            .expect("gateway task")
            .expect("gateway shut down cleanly");
        self.chain.stop().await.expect("bridge shut down cleanly");
    }
}

/// `GET path` over HTTP/1.0: (status, body); (0, "") when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name{labels}` exactly as written in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
