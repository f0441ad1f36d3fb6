//! Whether a [`RedisCluster`] is up: every node asked over a fresh
//! connection what it sees (`CLUSTER INFO`, `CLUSTER NODES`, `INFO
//! replication`), polled with [`wait_until`] until they all agree, the
//! error quoting the last node found wanting and why.

use std::sync::Mutex;

use anyhow::Context as _;

use super::view::{Info, Nodes, SLOTS};
use super::{ask, Node, RedisCluster, WAIT};
use crate::util::wait_until;

/// How complete the cluster must be for [`RedisCluster::check`] to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// Every slot served by a running primary, and every running node
    /// agrees and says `cluster_state:ok`: what clients need.
    Serving,
    /// Serving, and every node runs: each is a primary with slots and
    /// `replicas_per_primary` replicas online, or one of those replicas.
    Complete,
}

impl RedisCluster {
    /// Waits until every node knows every other by its real id: only then
    /// can a replica be told whom to replicate.
    pub(super) async fn wait_all_known(&self) -> anyhow::Result<()> {
        let last = Mutex::new(String::new());
        let result = wait_until(WAIT, "every cluster node to know every other", || {
            let last = &last;
            async move {
                for node in &self.nodes {
                    let known = match ask(node.port, [&["CLUSTER", "NODES"][..]]).await {
                        Ok([text]) => Nodes::parse(&text).map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    let missing = known.map(|view| {
                        self.nodes
                            .iter()
                            .filter(|n| view.by_id(&n.id).is_none_or(|l| l.handshake))
                            .map(|n| n.port)
                            .collect::<Vec<_>>()
                    });
                    let problem = match missing {
                        Ok(missing) if missing.is_empty() => continue,
                        Ok(missing) => format!("node {} does not know {missing:?} yet", node.port),
                        Err(e) => e,
                    };
                    set(last, problem);
                    return false;
                }
                true
            }
        })
        .await;
        result.with_context(|| format!("last seen: {}", read(&last)))
    }

    /// Polls [`check`](Self::check) until it passes; the error quotes the
    /// last problem it found.
    pub(super) async fn wait(&self, want: Want, what: &str) -> anyhow::Result<()> {
        let last = Mutex::new(String::new());
        let result = wait_until(WAIT, what, || {
            let last = &last;
            async move {
                match self.check(want).await {
                    Ok(()) => true,
                    Err(e) => {
                        set(last, e);
                        false
                    }
                }
            }
        })
        .await;
        result.with_context(|| format!("last seen: {}", read(&last)))
    }

    /// `Err` names the first node found wanting and why.
    async fn check(&self, want: Want) -> Result<(), String> {
        let mut agreed: Option<(u16, String)> = None;
        for node in &self.nodes {
            if !node.service.is_running() {
                if want == Want::Complete {
                    return Err(format!("node {} is not running", node.port));
                }
                continue;
            }
            let [info, nodes, replication] = ask(
                node.port,
                [
                    &["CLUSTER", "INFO"][..],
                    &["CLUSTER", "NODES"],
                    &["INFO", "replication"],
                ],
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            let info = Info::parse(&info);
            let view = Nodes::parse(&nodes).map_err(|e| format!("node {}: {e:#}", node.port))?;
            let says = || format!("node {} says {}", node.port, info.summary());
            if info.get("cluster_state") != "ok"
                || info.get("cluster_slots_ok") != SLOTS.to_string()
                || view.covered() != usize::from(SLOTS)
            {
                return Err(says());
            }
            // Every owner must be one of ours and running; a dead primary
            // keeps its slots in the views until its replica is elected.
            for (range, id) in view.owners() {
                let owner = self.nodes.iter().find(|n| n.id == id);
                if !owner.is_some_and(|n| n.service.is_running()) {
                    return Err(format!(
                        "{}: slots {range:?} are still owned by {id} (not running)",
                        says()
                    ));
                }
            }
            let owners = format!("{:?}", view.owners());
            match &agreed {
                Some((port, theirs)) if *theirs != owners => {
                    return Err(format!(
                        "nodes {port} and {} disagree on slot owners: {theirs} vs {owners}",
                        node.port
                    ))
                }
                Some(_) => {}
                None => agreed = Some((node.port, owners)),
            }
            if want == Want::Complete {
                self.check_complete(node, &view, &Info::parse(&replication))
                    .map_err(|e| format!("{}: {e}", says()))?;
            }
        }
        Ok(())
    }

    /// In `view` (what `node` sees), every node is a slot-owning primary
    /// with all its replicas, or one of those replicas; `node`'s own
    /// replication links are up.
    fn check_complete(&self, node: &Node, view: &Nodes, replication: &Info) -> Result<(), String> {
        for n in &self.nodes {
            let Some(line) = view.by_id(&n.id) else {
                return Err(format!("it does not know node {}", n.port));
            };
            if line.failing {
                return Err(format!("it sees node {} failing", n.port));
            }
            if line.primary {
                let replicas = view
                    .0
                    .iter()
                    .filter(|r| r.replica_of.as_deref() == Some(line.id.as_str()))
                    .count();
                if line.slots.is_empty() || replicas != self.replicas_per_primary {
                    return Err(format!(
                        "it sees primary {} with {} slot ranges and {replicas} replicas",
                        n.port,
                        line.slots.len()
                    ));
                }
            } else if !line
                .replica_of
                .as_deref()
                .and_then(|p| view.by_id(p))
                .is_some_and(|p| p.primary && !p.slots.is_empty())
            {
                return Err(format!(
                    "it sees node {} as no replica of a primary",
                    n.port
                ));
            }
        }
        let me = view
            .by_id(&node.id)
            .ok_or_else(|| format!("it does not list itself ({})", node.id))?;
        if me.primary {
            let online = replication.values_containing("state=online");
            if online != self.replicas_per_primary {
                return Err(format!("{online} of its replicas are online"));
            }
        } else if replication.get("master_link_status") != "up" {
            return Err(format!(
                "its link to its primary is {}",
                replication.get("master_link_status")
            ));
        }
        Ok(())
    }
}

fn set(last: &Mutex<String>, problem: String) {
    if let Ok(mut last) = last.lock() {
        *last = problem;
    }
}

fn read(last: &Mutex<String>) -> String {
    last.lock().map(|s| s.clone()).unwrap_or_default()
}
