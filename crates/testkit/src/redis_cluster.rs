//! A private Redis Cluster for tests: `primaries` primaries with
//! `replicas_per_primary` replicas each, every node its own `redis-server`
//! (the binary [`RedisServer`](crate::RedisServer) uses) on two free
//! loopback ports (clients, cluster bus), killed on drop.
//!
//! The cluster is formed by hand (`CLUSTER SET-CONFIG-EPOCH`,
//! `ADDSLOTSRANGE`, `MEET`, `REPLICATE`) rather than with
//! `redis-cli --cluster create`: not for speed (see below), but so that
//! node `primaries + p * replicas_per_primary + k` is always the `k`-th
//! replica of primary `p` (the CLI shuffles replicas for host
//! anti-affinity), and a failure names the node and the step instead of
//! ending in the CLI's coloured text.
//!
//! Timing (Redis 7.0, measured on 2 cores): the processes are up in about
//! 0.1 s, all nodes know each other by gossip after 0.6–0.9 s, and every
//! node says `cluster_state:ok` about 2.0 s after start, with or without
//! replicas. That is the floor: a fresh primary stays `fail` for Redis's
//! fixed `CLUSTER_WRITABLE_DELAY` (2 s) after it starts. The node timeout is
//! [`NODE_TIMEOUT_MS`] (1 s), so a killed primary's replica takes over in
//! 2–3 s. Failover needs a majority of primaries alive: start at least
//! three for a test that kills one.
//!
//! Submodules: `health` (is the cluster serving, is it complete: polled
//! until every node agrees) · `view` (the parse of `CLUSTER INFO` and
//! `CLUSTER NODES`).

mod health;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fred::prelude::{Builder, ClientLike, Config, ServerConfig, Value};
use fred::types::CustomCommand;
use tempfile::TempDir;

use crate::mosquitto::tempdir;
use crate::process::{Recipe, Service};
use crate::redis::REDIS_SERVER;
use health::Want;
use view::{Nodes, SLOTS};

/// `cluster-node-timeout`: how long a node may be silent before it is
/// suspected. Short, so failover tests are quick; long enough that a loaded
/// 2-core machine does not fail nodes over by itself.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Bound on forming the cluster, a failover, and a rejoin after a restart.
/// Each takes about a second or three; the margin is for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// Bound on one admin connection to a node (connect, then each command).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A private Redis Cluster on `127.0.0.1`, every process killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// Primaries first, then the replicas of primary 0, of primary 1, ...
    nodes: Vec<Node>,
    primaries: usize,
    replicas_per_primary: usize,
    url: String,
}

#[derive(Debug)]
struct Node {
    port: u16,
    /// `CLUSTER MYID`; kept across restarts in the node's `nodes.conf`.
    id: String,
    service: Service,
    /// Holds `nodes.conf` and the log; outlives restarts.
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas_per_primary)` nodes, forms the
    /// cluster (slots split evenly between the primaries) and returns once
    /// every node says `cluster_state:ok`, agrees on who owns all 16384
    /// slots, and every replica's link to its primary is up.
    pub async fn start(
        primaries: usize,
        replicas_per_primary: usize,
    ) -> anyhow::Result<RedisCluster> {
        ensure!(
            (1..=usize::from(SLOTS)).contains(&primaries),
            "a cluster needs 1 to {SLOTS} primaries, not {primaries}"
        );
        let total = primaries * (1 + replicas_per_primary);
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            nodes.push(
                Node::start()
                    .await
                    .with_context(|| format!("start cluster node {i} of {total}"))?,
            );
        }
        let url = cluster_url(nodes.iter().map(|n| n.port));
        let cluster = RedisCluster {
            nodes,
            primaries,
            replicas_per_primary,
            url,
        };
        cluster.form().await.with_context(|| {
            format!("form a cluster of {primaries} primaries x {replicas_per_primary} replicas")
        })?;
        Ok(cluster)
    }

    /// fred's form, every node a seed:
    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=...`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every node's client port, primaries first (as started: after a
    /// failover the roles differ, ask [`primary_for_slot`](Self::primary_for_slot)).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The port of the primary serving `key`'s hash slot.
    pub async fn primary_for_key(&self, key: &str) -> anyhow::Result<u16> {
        self.primary_for_slot(fred::util::redis_keyslot(key.as_bytes()))
            .await
    }

    /// The port of the primary serving `slot`, as the first running node
    /// sees it (all agree once `start`, `wait_failover` or `restart` has
    /// returned).
    pub async fn primary_for_slot(&self, slot: u16) -> anyhow::Result<u16> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.service.is_running())
            .context("no cluster node is running")?;
        let [text] = ask(node.port, [&["CLUSTER", "NODES"][..]]).await?;
        let view = Nodes::parse(&text)?;
        let owner = view
            .owner_of(slot)
            .with_context(|| format!("node {} knows no owner of slot {slot}", node.port))?;
        Ok(owner.port)
    }

    /// SIGKILLs the primary serving `slot` and returns its port. Its replica
    /// takes over after the node timeout: [`wait_failover`](Self::wait_failover).
    pub async fn kill_primary(&mut self, slot: u16) -> anyhow::Result<u16> {
        let port = self.primary_for_slot(slot).await?;
        self.node_mut(port)?.service.kill();
        Ok(port)
    }

    /// SIGKILLs the first replica of the primary serving `slot` (as
    /// started: before any failover) and returns its port. Nothing takes
    /// over: the primary serves on, without a standby.
    pub async fn kill_replica_of(&mut self, slot: u16) -> anyhow::Result<u16> {
        ensure!(self.replicas_per_primary > 0, "a cluster without replicas");
        let primary = self.primary_for_slot(slot).await?;
        let p = self.nodes[..self.primaries]
            .iter()
            .position(|n| n.port == primary)
            .with_context(|| format!("node {primary} is no primary as started"))?;
        let replica = self
            .nodes
            .get_mut(self.primaries + p * self.replicas_per_primary)
            .context("no replica")?;
        replica.service.kill();
        Ok(replica.port)
    }

    /// Waits until `slot` (and every other slot) is served by a running
    /// primary again and every running node says `cluster_state:ok`;
    /// returns the port of the new primary of `slot`.
    pub async fn wait_failover(&self, slot: u16) -> anyhow::Result<u16> {
        self.wait(Want::Serving, "the cluster to serve every slot again")
            .await?;
        self.primary_for_slot(slot).await
    }

    /// Starts a killed node again on its ports with its `nodes.conf` (and no
    /// data); returns once it has rejoined and the cluster is complete, a
    /// former primary coming back as its successor's replica. Call
    /// [`wait_failover`](Self::wait_failover) first: a primary restarted
    /// before its replica took over comes back as an empty primary.
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.node_mut(port)?
            .service
            .restart()
            .await
            .with_context(|| format!("restart cluster node {port}"))?;
        self.wait(
            Want::Complete,
            &format!("node {port} to rejoin the cluster"),
        )
        .await
    }

    /// The ports of the nodes that exited by themselves (not killed by
    /// this handle): empty when none crashed.
    pub fn crashed(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.service.crashed().then_some(n.port))
            .collect()
    }

    fn node_mut(&mut self, port: u16) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("port {port} is no node of this cluster"))
    }

    /// Assigns slots, meets, replicates, then waits for a complete cluster.
    async fn form(&self) -> anyhow::Result<()> {
        let (primaries, replicas) = self.nodes.split_at(self.primaries);
        for (i, node) in self.nodes.iter().enumerate() {
            // Distinct epochs, as `redis-cli --cluster create` sets them, so
            // the nodes need not resolve collisions first.
            let epoch = (i + 1).to_string();
            ask_all(node.port, &[["CLUSTER", "SET-CONFIG-EPOCH", &epoch]]).await?;
        }
        for (i, node) in primaries.iter().enumerate() {
            let range = slot_range(i, self.primaries);
            let (lo, hi) = (range.start().to_string(), range.end().to_string());
            ask_all(node.port, &[["CLUSTER", "ADDSLOTSRANGE", &lo, &hi]]).await?;
        }
        let Some((first, others)) = self.nodes.split_first() else {
            bail!("a cluster without nodes");
        };
        for node in others {
            let (port, bus) = (node.port.to_string(), node.bus_port()?.to_string());
            ask_all(first.port, &[["CLUSTER", "MEET", "127.0.0.1", &port, &bus]])
                .await
                .with_context(|| format!("node {} meets {}", first.port, node.port))?;
        }
        self.wait_all_known().await?;
        for (i, replica) in replicas.iter().enumerate() {
            let primary = &primaries[i / self.replicas_per_primary.max(1)];
            ask(replica.port, [&["CLUSTER", "REPLICATE", &primary.id][..]])
                .await
                .with_context(|| format!("node {} replicates {}", replica.port, primary.port))?;
        }
        self.wait(Want::Complete, "the new cluster to be complete")
            .await
    }
}

impl Node {
    async fn start() -> anyhow::Result<Node> {
        let dir = tempdir("redis-cluster")?;
        let data = dir.path().display().to_string();
        let log = dir.path().join("redis.log");
        let node_timeout = NODE_TIMEOUT_MS.to_string();
        let service = Service::start_on_free_ports(2, |ports| {
            let (port, bus) = (ports[0].to_string(), ports[1].to_string());
            let args = crate::redis::server_args(
                &port,
                &data,
                &[
                    // The bus port is chosen, not the default port + 10000,
                    // which may be taken or past 65535.
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &node_timeout,
                    // Any replica may take over, however long its link was
                    // down; and replicas stay with the primary they were given.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--cluster-allow-replica-migration",
                    "no",
                    // A replica's first sync starts at once, not after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                    // The other primaries' slots keep serving while one is
                    // down, as Fieldcast's deployments run it: a partition
                    // is unreachable only while its own primary is.
                    "--cluster-require-full-coverage",
                    "no",
                ],
            );
            Ok(Recipe {
                name: "redis-server (cluster node)",
                program: PathBuf::from(REDIS_SERVER),
                args,
                log: log.clone(),
                ports: ports.to_vec(),
            })
        })
        .await?;
        let port = service
            .ports()
            .first()
            .copied()
            .context("node has no port")?;
        let [id] = ask(port, [&["CLUSTER", "MYID"][..]]).await?;
        Ok(Node {
            port,
            id,
            service,
            _dir: dir,
        })
    }

    fn bus_port(&self) -> anyhow::Result<u16> {
        self.service
            .ports()
            .get(1)
            .copied()
            .context("node has no bus port")
    }
}

/// The slots of primary `i` of `n`: an even split of 0..16384.
fn slot_range(i: usize, n: usize) -> std::ops::RangeInclusive<usize> {
    let total = usize::from(SLOTS);
    (i * total / n)..=((i + 1) * total / n - 1)
}

fn cluster_url(mut ports: impl Iterator<Item = u16>) -> String {
    let mut url = format!("redis-cluster://127.0.0.1:{}", ports.next().unwrap_or(0));
    for (i, port) in ports.enumerate() {
        let sep = if i == 0 { '?' } else { '&' };
        url.push_str(&format!("{sep}node=127.0.0.1:{port}"));
    }
    url
}

/// Runs `commands` on the node at `port` over one fresh connection, and
/// returns each reply as text.
async fn ask<const N: usize>(port: u16, commands: [&[&str]; N]) -> anyhow::Result<[String; N]> {
    let replies = ask_all(port, &commands).await?;
    replies
        .try_into()
        .map_err(|_| anyhow::anyhow!("node {port} gave a different number of replies"))
}

async fn ask_all<C: AsRef<[S]>, S: AsRef<str>>(
    port: u16,
    commands: &[C],
) -> anyhow::Result<Vec<String>> {
    let config = Config {
        server: ServerConfig::new_centralized("127.0.0.1", port),
        fail_fast: true,
        ..Config::default()
    };
    // No reconnect policy: a node that is down fails the connect at once.
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = ASK_TIMEOUT;
            c.internal_command_timeout = ASK_TIMEOUT;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = ASK_TIMEOUT)
        .build()
        .context("build an admin client")?;
    let run = async {
        client.init().await.context("connect")?;
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands {
            let words: Vec<&str> = command.as_ref().iter().map(AsRef::as_ref).collect();
            let Some((name, args)) = words.split_first() else {
                bail!("empty command");
            };
            let reply: Value = client
                .custom(
                    CustomCommand::new((*name).to_owned(), None, false),
                    args.to_vec(),
                )
                .await
                .with_context(|| words.join(" "))?;
            replies.push(reply.as_string().unwrap_or_default());
        }
        Ok(replies)
    };
    let result = run.await;
    // Best effort: the node may be gone, and then so is the connection.
    let _ = tokio::time::timeout(ASK_TIMEOUT, client.quit()).await;
    result.with_context(|| format!("cluster node 127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_evenly_and_completely() {
        let ranges: Vec<_> = (0..3).map(|i| slot_range(i, 3)).collect();
        assert_eq!(ranges, [0..=5460, 5461..=10921, 10922..=16383]);
        assert_eq!(slot_range(0, 1), 0..=16383);
    }

    #[test]
    fn url_is_freds_cluster_form() {
        assert_eq!(
            cluster_url([7000, 7001, 7002].into_iter()),
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002"
        );
    }
}
