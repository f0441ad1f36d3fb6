//! What one cluster node says about the cluster, parsed: `CLUSTER INFO`
//! (its state and slot counts) and `CLUSTER NODES` (who owns which slots,
//! who replicates whom). I/O-free, so the parsing is pinned by unit tests.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use anyhow::Context as _;

/// Every hash slot of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// `CLUSTER INFO`'s `key:value` lines.
#[derive(Debug)]
pub(crate) struct Info(BTreeMap<String, String>);

impl Info {
    pub fn parse(text: &str) -> Info {
        Info(
            text.lines()
                .filter_map(|line| line.trim().split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("?", String::as_str)
    }

    /// How many values contain `needle` (`state=online` in the `slaveN`
    /// lines of `INFO replication`).
    pub fn values_containing(&self, needle: &str) -> usize {
        self.0.values().filter(|v| v.contains(needle)).count()
    }

    /// The lines a failed health check quotes.
    pub fn summary(&self) -> String {
        [
            "cluster_state",
            "cluster_slots_ok",
            "cluster_slots_pfail",
            "cluster_slots_fail",
            "cluster_known_nodes",
            "cluster_size",
        ]
        .iter()
        .map(|k| format!("{k}:{}", self.get(k)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeLine {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// The primary's id, for a replica.
    pub replica_of: Option<String>,
    /// `fail` or `fail?` (PFAIL): the viewer thinks it is down.
    pub failing: bool,
    /// Still in the MEET handshake: its id is not yet the real one.
    pub handshake: bool,
    pub slots: Vec<RangeInclusive<u16>>,
}

/// One node's `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub(crate) struct Nodes(pub Vec<NodeLine>);

impl Nodes {
    /// `<id> <ip:port@cport[,hostname]> <flags> <primary|-> <ping> <pong>
    /// <epoch> <link> <slot>...`; slots being migrated (`[5461->-id]`) are
    /// skipped, a test cluster never migrates.
    pub fn parse(text: &str) -> anyhow::Result<Nodes> {
        let mut nodes = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            nodes.push(parse_line(line).with_context(|| format!("CLUSTER NODES line {line:?}"))?);
        }
        Ok(Nodes(nodes))
    }

    pub fn by_id(&self, id: &str) -> Option<&NodeLine> {
        self.0.iter().find(|n| n.id == id)
    }

    /// Who serves each slot range, in slot order: `(range, primary's id)`.
    pub fn owners(&self) -> Vec<(RangeInclusive<u16>, &str)> {
        let mut owners: Vec<_> = self
            .0
            .iter()
            .flat_map(|n| n.slots.iter().map(move |r| (r.clone(), n.id.as_str())))
            .collect();
        owners.sort_by_key(|(r, _)| *r.start());
        owners
    }

    pub fn owner_of(&self, slot: u16) -> Option<&NodeLine> {
        self.0
            .iter()
            .find(|n| n.slots.iter().any(|r| r.contains(&slot)))
    }

    /// Slots owned by anyone (each counted once if the view is sane).
    pub fn covered(&self) -> usize {
        self.0
            .iter()
            .flat_map(|n| n.slots.iter())
            .map(|r| usize::from(r.end() - r.start()) + 1)
            .sum()
    }
}

fn parse_line(line: &str) -> anyhow::Result<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [id, addr, flags, primary, _ping, _pong, _epoch, _link, slots @ ..] = fields.as_slice()
    else {
        anyhow::bail!("fewer than 8 fields");
    };
    // 127.0.0.1:7000@17000 (or with ,hostname); the port is after the last
    // ':' of the part before '@'.
    let host_port = addr.split(['@', ',']).next().unwrap_or(addr);
    let port = host_port
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no port in {addr:?}"))?;
    let flags: Vec<&str> = flags.split(',').collect();
    let mut ranges = Vec::new();
    for s in slots.iter().filter(|s| !s.starts_with('[')) {
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo: u16 = lo.parse().with_context(|| format!("slot {s:?}"))?;
        let hi: u16 = hi.parse().with_context(|| format!("slot {s:?}"))?;
        ranges.push(lo..=hi);
    }
    Ok(NodeLine {
        id: (*id).to_owned(),
        port,
        primary: flags.contains(&"master"),
        replica_of: (*primary != "-").then(|| (*primary).to_owned()),
        failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        handshake: flags.contains(&"handshake"),
        slots: ranges,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    /// A view taken from Redis 7.0.15 just after a failover: 27101 died,
    /// 27104 (its replica) took 0-5460 over.
    const AFTER_FAILOVER: &str = "\
595f1ab6 127.0.0.1:27102@28102 myself,master - 0 1796525294000 2 connected 5461-10922
db08667e 127.0.0.1:27104@28104 master - 0 1796525294514 7 connected 0-5460
a0354be4 127.0.0.1:27105@28105 slave 595f1ab6 0 1796525294716 2 connected
d6629175 127.0.0.1:27103@28103 master - 0 1796525294716 3 connected 10923-16383 [16000->-x]
2a6cfe84 127.0.0.1:27101@28101 master,fail - 1796525292701 1796525292198 1 disconnected
17b3ce64 127.0.0.1:27106@28106,host.example slave d6629175 0 1796525294716 3 connected
";

    #[test]
    fn cluster_nodes_gives_owners_replicas_and_failures() {
        let nodes = Nodes::parse(AFTER_FAILOVER).unwrap();
        assert_eq!(nodes.0.len(), 6);
        assert_eq!(nodes.covered(), usize::from(SLOTS));
        let owners: Vec<_> = nodes
            .owners()
            .into_iter()
            .map(|(r, id)| (*r.start(), *r.end(), id))
            .collect();
        assert_eq!(
            owners,
            [
                (0, 5460, "db08667e"),
                (5461, 10922, "595f1ab6"),
                (10923, 16383, "d6629175")
            ]
        );
        assert_eq!(nodes.owner_of(0).unwrap().port, 27104);
        assert_eq!(nodes.owner_of(16383).unwrap().port, 27103);
        let dead = nodes.by_id("2a6cfe84").unwrap();
        assert!(dead.primary && dead.failing && dead.slots.is_empty());
        let replica = nodes.by_id("17b3ce64").unwrap();
        assert_eq!(replica.port, 27106);
        assert_eq!(replica.replica_of.as_deref(), Some("d6629175"));
        assert!(!replica.primary && !replica.failing);
    }

    #[test]
    fn cluster_info_is_read_by_key() {
        let info = Info::parse("cluster_state:ok\r\ncluster_slots_ok:16384\r\n");
        assert_eq!(info.get("cluster_state"), "ok");
        assert_eq!(info.get("cluster_slots_ok"), "16384");
        assert_eq!(info.get("cluster_size"), "?");
    }
}
