//! Private NATS servers with JetStream and an MQTT listener, for the
//! bridge's JetStream source: [`NatsServer`] (one node) and [`NatsCluster`]
//! (three nodes, routes between them). Each node listens on free loopback
//! ports (clients, MQTT, monitoring, and the cluster's routes), keeps its
//! JetStream store in its own tempdir, and is SIGKILLed on drop.
//!
//! A node is ready when its ports accept and its monitoring `/healthz`
//! says JetStream is current (on a cluster: a meta leader is elected),
//! so a test can create streams at once.
//!
//! Debian's nats-server 2.9 speaks MQTT 3.1.1 only (no `$share`, no QoS 2)
//! and refuses topics with '.' or ' ' in them (docs/nats.md).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::mosquitto::tempdir;
use crate::process::{Recipe, Service};
use crate::util::wait_until;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Bound on JetStream becoming current after a (re)start: a cluster
/// elects its meta leader within a few seconds.
const JS_READY: Duration = Duration::from_secs(30);

/// One node's ports, in the order its [`Recipe`] lists them.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    mqtt: u16,
    http: u16,
    /// Routes; 0 on a single node.
    cluster: u16,
}

impl Ports {
    fn free(clustered: bool) -> Ports {
        let p = crate::util::free_port;
        Ports {
            client: p(),
            mqtt: p(),
            http: p(),
            cluster: if clustered { p() } else { 0 },
        }
    }

    fn list(&self) -> Vec<u16> {
        let mut v = vec![self.client, self.mqtt, self.http];
        if self.cluster != 0 {
            v.push(self.cluster);
        }
        v
    }
}

/// One nats-server process, its config and store in `dir`.
#[derive(Debug)]
struct Node {
    name: String,
    ports: Ports,
    service: Service,
    dir: TempDir,
}

impl Node {
    /// Writes the config and starts the node; `routes` are the other
    /// nodes' cluster ports (empty: a single node).
    async fn start(name: &str, ports: Ports, routes: &[u16]) -> anyhow::Result<Node> {
        let dir = tempdir("nats")?;
        let conf = dir.path().join("nats.conf");
        let mut text = String::new();
        // Infallible: writing to a String.
        let _ = write!(
            text,
            "server_name: {name}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{http}\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             mqtt {{ listen: 127.0.0.1:{mqtt}{replicas} }}\n",
            client = ports.client,
            http = ports.http,
            mqtt = ports.mqtt,
            // nats-server sizes its own MQTT streams (sessions, retained
            // and QoS 1 messages) by the servers it sees at the first MQTT
            // connection: fix it, as a deployment should.
            replicas = if ports.cluster != 0 {
                ", stream_replicas: 3"
            } else {
                ""
            },
            store = dir.path().join("js").display(),
        );
        if ports.cluster != 0 {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let _ = write!(
                text,
                "cluster {{\n  name: fieldcast\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                ports.cluster,
                routes.join(", ")
            );
        }
        std::fs::write(&conf, text).with_context(|| format!("write {}", conf.display()))?;
        let recipe = Recipe {
            name: "nats-server",
            program: PathBuf::from(NATS_SERVER),
            args: vec!["-c".to_owned(), conf.display().to_string()],
            log: dir.path().join("nats.log"),
            ports: ports.list(),
        };
        let service = Service::start(recipe)
            .await
            .map_err(anyhow::Error::from)
            .with_context(|| format!("start nats-server {name}"))?;
        Ok(Node {
            name: name.to_owned(),
            ports,
            service,
            dir,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    fn mqtt_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.ports.mqtt)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Waits until `/healthz` answers 200: JetStream is current.
    async fn wait_jetstream(&self) -> anyhow::Result<()> {
        let port = self.ports.http;
        wait_until(
            JS_READY,
            &format!("{} JetStream ready", self.name),
            || async move { http_status(port, "/healthz").await == Some(200) },
        )
        .await
        .with_context(|| format!("log tail:\n{}", tail(&self.log())))
    }
}

/// A private single nats-server with JetStream and MQTT, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    /// `nats://127.0.0.1:<client port>`, for the bridge.
    pub url: String,
    /// `mqtt://127.0.0.1:<mqtt port>`, for devices.
    pub mqtt_url: String,
    node: Node,
}

impl NatsServer {
    /// Starts a node and waits for JetStream.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let mut last = None;
        // A port taken between free_port and the bind: try fresh ones.
        for _ in 0..5 {
            match Node::start("n1", Ports::free(false), &[]).await {
                Ok(node) => {
                    node.wait_jetstream().await?;
                    return Ok(NatsServer {
                        url: node.url(),
                        mqtt_url: node.mqtt_url(),
                        node,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    /// SIGKILL the server (its JetStream store stays on disk).
    pub fn kill(&mut self) {
        self.node.service.kill();
    }

    /// Kills it if it runs, starts it again on the same ports and store,
    /// and waits for JetStream.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.node.service.restart().await?;
        self.node.wait_jetstream().await
    }

    /// The server's log since it last (re)started.
    pub fn log(&self) -> String {
        self.node.log()
    }
}

/// A private 3-node NATS cluster (JetStream on every node, an MQTT
/// listener on every node), killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts three nodes routed to each other and waits until each one's
    /// JetStream is current (a meta leader is elected).
    pub async fn start() -> anyhow::Result<NatsCluster> {
        let mut last = None;
        // A port taken between free_port and a node's bind (seen in CI:
        // "address already in use"): the nodes started so far are killed
        // (dropped) and the whole cluster tries fresh ports.
        for _ in 0..5 {
            match Self::start_nodes().await {
                Ok(nodes) => return Self::ready(nodes).await,
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the NATS cluster did not start")))
    }

    async fn start_nodes() -> anyhow::Result<Vec<Node>> {
        const N: usize = 3;
        let ports: Vec<Ports> = (0..N).map(|_| Ports::free(true)).collect();
        let mut nodes = Vec::with_capacity(N);
        for (i, p) in ports.iter().enumerate() {
            let routes: Vec<u16> = ports
                .iter()
                .filter(|o| o.cluster != p.cluster)
                .map(|o| o.cluster)
                .collect();
            nodes.push(Node::start(&format!("n{}", i + 1), *p, &routes).await?);
        }
        Ok(nodes)
    }

    async fn ready(nodes: Vec<Node>) -> anyhow::Result<NatsCluster> {
        for node in &nodes {
            node.wait_jetstream().await?;
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated (`FIELDCAST_NATS_URL`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> anyhow::Result<String> {
        Ok(self.node(i)?.url())
    }

    /// Node `i`'s MQTT listener, `mqtt://127.0.0.1:<port>`.
    pub fn mqtt_url(&self, i: usize) -> anyhow::Result<String> {
        Ok(self.node(i)?.mqtt_url())
    }

    /// Node `i`'s `server_name` (`n1`, `n2`, `n3`).
    pub fn name(&self, i: usize) -> anyhow::Result<&str> {
        Ok(&self.node(i)?.name)
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.node_mut(i)?.service.kill();
        Ok(())
    }

    /// Starts node `i` again on its ports and store. Returns once its
    /// ports accept: its `/healthz` can stay failing for half a minute
    /// after a SIGKILL (a consumer of nats-server's own MQTT streams "not
    /// current"), while the node already serves.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.node_mut(i)?.service.restart().await
    }

    /// The names of the nodes that exited by themselves (not killed by
    /// [`kill`](Self::kill)): empty when none crashed.
    pub fn crashed(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.service.crashed().then(|| n.name.clone()))
            .collect()
    }

    /// Node `i`'s log since it last (re)started.
    pub fn log(&self, i: usize) -> String {
        self.node(i).map(Node::log).unwrap_or_default()
    }

    /// The `/jsz?streams=true` monitoring page of node `i` (JSON text),
    /// e.g. to see which node leads a stream.
    pub async fn jsz(&self, i: usize, query: &str) -> anyhow::Result<String> {
        let port = self.node(i)?.ports.http;
        http_get(port, &format!("/jsz?{query}"))
            .await
            .map(|(_, body)| body)
            .context("GET /jsz")
    }

    fn node(&self, i: usize) -> anyhow::Result<&Node> {
        match self.nodes.get(i) {
            Some(n) => Ok(n),
            None => bail!("no node {i} in a cluster of {}", self.nodes.len()),
        }
    }

    fn node_mut(&mut self, i: usize) -> anyhow::Result<&mut Node> {
        let n = self.nodes.len();
        match self.nodes.get_mut(i) {
            Some(node) => Ok(node),
            None => bail!("no node {i} in a cluster of {n}"),
        }
    }
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(code, _)| code)
}

/// GET over HTTP/1.0 on 127.0.0.1, within 2 s: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split(' ').nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
