//! The rebuild's source in the layout before partitions (before e3a58a5):
//! `<prefix>dev:<id>` hashes listed in the set `<prefix>devices`, with
//! `<prefix>geo` beside them, in the same Redis under the same prefix. The
//! set is walked with `SSCAN`, so memory stays bounded and a large set
//! does not block Redis.
//!
//! With `--delete-old`, a second walk deletes what the first one copied,
//! but only after the first had no failure, and each device's old hash
//! only right after its state was written again (a no-op unless it changed
//! since) and confirmed in the new layout. The old keys left at any point
//! are exactly the devices not moved yet, so a stopped run is resumed by
//! running it again.

use std::collections::HashMap;

use anyhow::Context as _;
use fred::prelude::{
    Client, ClientLike, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio_util::sync::CancellationToken;

use fieldcast_core::{DeviceId, Location, Status};

use super::{next_or_stop, tally, DeviceState, Outcome, Read, RebuildArgs, Report, Source, Writer};

/// The key names of the layout before partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldLayout {
    prefix: String,
}

impl OldLayout {
    pub fn new(prefix: &str) -> Self {
        OldLayout {
            prefix: prefix.to_owned(),
        }
    }

    /// The set of every device id with a hot state.
    pub fn devices(&self) -> String {
        format!("{}devices", self.prefix)
    }

    /// The geo set of every device's last position.
    pub fn geo(&self) -> String {
        format!("{}geo", self.prefix)
    }

    /// One device's hot-state hash.
    pub fn device(&self, id: &str) -> String {
        format!("{}dev:{id}", self.prefix)
    }

    /// The old event log and its epoch, dead once the bridge writes the new
    /// layout: deleted with the rest by `--delete-old`. (Its `evseen:`
    /// keys expire by themselves within 24 h.)
    pub fn event_log(&self) -> [String; 2] {
        [
            format!("{}events", self.prefix),
            format!("{}events:epoch", self.prefix),
        ]
    }
}

/// Copies every old hash to the new layout, then with `--delete-old`
/// deletes the old keys (module doc).
pub(super) async fn rebuild(
    writer: &mut Writer,
    client: Client,
    args: &RebuildArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let old = OldLayout::new(&args.store.redis_prefix);
    let mut source = OldKeys::new(client.clone(), old.clone(), args.batch);
    writer.drain(&mut source, shutdown).await?;
    if !args.delete_old {
        return Ok(());
    }
    if writer.report.failed > 0 {
        writer.report.old_kept = writer.report.devices;
        tracing::warn!(
            failed = writer.report.failed,
            "old keys kept: not every device was copied"
        );
        return Ok(());
    }
    tracing::info!("every device copied; deleting the old keys");
    let mut source = OldKeys::new(client.clone(), old.clone(), args.batch);
    // The second walk's counts only say what changed since the first.
    let mut again = Report::default();
    while let Some(batch) = next_or_stop(&mut source, shutdown).await? {
        let outcomes = tally(&mut again, writer.write_batch(batch).await)?;
        let moved: Vec<String> = outcomes
            .into_iter()
            .filter(|(_, o)| *o != Outcome::Failed)
            .map(|(id, _)| id)
            .collect();
        writer.report.old_deleted += delete_devices(&client, &old, &moved).await? as u64;
    }
    finish_deleting(writer, &client, &old, &again).await
}

/// Deletes the old event log, the old geo set and the old device set once
/// no device is left in the last; else counts those kept.
async fn finish_deleting(
    writer: &mut Writer,
    client: &Client,
    old: &OldLayout,
    again: &Report,
) -> anyhow::Result<()> {
    if again.written > 0 {
        tracing::info!(
            devices = again.written,
            "devices changed in the old layout since the copy were copied again"
        );
    }
    let left: u64 = client
        .scard(old.devices())
        .await
        .context("counting the old device set")?;
    writer.report.old_kept = left;
    if left > 0 {
        tracing::warn!(
            devices = left,
            "old keys kept: these devices are still in the old set (failed, or written by a bridge of the old version meanwhile)"
        );
        return Ok(());
    }
    // One key per command: on a cluster each is in a slot of its own.
    for key in [old.geo(), old.devices()]
        .into_iter()
        .chain(old.event_log())
    {
        let _: i64 = client
            .del(&key)
            .await
            .with_context(|| format!("deleting {key}"))?;
    }
    tracing::info!(devices = writer.report.old_deleted, "old keys deleted");
    Ok(())
}

/// Deletes the old hash of each of `ids` and takes them out of the old
/// device and geo sets, in one pipeline. Returns how many hashes existed.
async fn delete_devices(client: &Client, old: &OldLayout, ids: &[String]) -> anyhow::Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let pipe = client.pipeline();
    for id in ids {
        let _: () = pipe.del(old.device(id)).await?;
    }
    let _: () = pipe.srem(old.devices(), ids.to_vec()).await?;
    let _: () = pipe.zrem(old.geo(), ids.to_vec()).await?;
    let replies: Vec<Value> = pipe.all().await.context("deleting old device hashes")?;
    Ok(replies
        .iter()
        .take(ids.len())
        .filter(|v| matches!(v, Value::Integer(1)))
        .count())
}

/// Pages of old hashes, in `SSCAN` order.
struct OldKeys {
    client: Client,
    old: OldLayout,
    /// `None` once the scan is complete.
    cursor: Option<String>,
    count: u32,
}

impl OldKeys {
    fn new(client: Client, old: OldLayout, count: u32) -> Self {
        OldKeys {
            client,
            old,
            cursor: Some("0".to_owned()),
            count,
        }
    }

    async fn scan_ids(&mut self, cursor: &str) -> anyhow::Result<Vec<String>> {
        let set = self.old.devices();
        let page: Value = self
            .client
            .custom(
                CustomCommand::new_static("SSCAN", ClusterHash::from(set.as_str()), false),
                vec![
                    set.clone(),
                    cursor.to_owned(),
                    "COUNT".into(),
                    self.count.to_string(),
                ],
            )
            .await
            .with_context(|| format!("scanning the old device set {set}"))?;
        let (next, ids): (String, Vec<String>) = page.convert()?;
        self.cursor = (next != "0").then_some(next);
        Ok(ids)
    }

    async fn read_hashes(&self, ids: Vec<String>) -> anyhow::Result<Vec<Read>> {
        let pipe = self.client.pipeline();
        for id in &ids {
            let _: () = pipe.hgetall(self.old.device(id)).await?;
        }
        let hashes: Vec<Value> = pipe.all().await.context("reading old device hashes")?;
        ids.into_iter()
            .zip(hashes)
            .map(|(id, hash)| {
                let fields: HashMap<String, String> = hash
                    .convert()
                    .with_context(|| format!("reading the old hash of {id}"))?;
                Ok(from_old_hash(id, &fields))
            })
            .collect()
    }
}

impl Source for OldKeys {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Vec<Read>>> {
        // SSCAN may answer an empty page before the end.
        while let Some(cursor) = self.cursor.take() {
            let ids = self.scan_ids(&cursor).await?;
            if !ids.is_empty() {
                return self.read_hashes(ids).await.map(Some);
            }
        }
        Ok(None)
    }
}

/// The state an old hash holds (docs/redis-layout.md's fields, the same in
/// both layouts). `last_seen` and `swill` are not carried: the scripts set
/// `last_seen` from `ts` and `sts`, and `swill` is only written by a Last
/// Will the bridge receives (docs/redis-rebuild.md).
pub fn from_old_hash(id: String, fields: &HashMap<String, String>) -> Read {
    let device = match DeviceId::parse(&id) {
        Ok(d) => d,
        Err(e) => {
            return Read::Unusable {
                device: id,
                reason: e.to_string(),
            }
        }
    };
    match (old_location(fields), old_status(fields)) {
        (Ok(location), Ok(status)) => Read::State(DeviceState {
            device,
            location,
            status,
        }),
        (Err(reason), _) | (_, Err(reason)) => Read::Unusable { device: id, reason },
    }
}

fn old_location(f: &HashMap<String, String>) -> Result<Option<Location>, String> {
    let Some(ts) = f.get("ts") else {
        return Ok(None);
    };
    Ok(Some(Location {
        ts: int("ts", ts)?,
        lat: required(f, "lat")?,
        lon: required(f, "lon")?,
        alt: optional(f, "alt")?,
        speed: optional(f, "speed")?,
        heading: optional(f, "heading")?,
        accuracy: optional(f, "accuracy")?,
    }))
}

fn old_status(f: &HashMap<String, String>) -> Result<Option<Status>, String> {
    let Some(sts) = f.get("sts") else {
        return Ok(None);
    };
    let online = match f.get("online").map(String::as_str) {
        Some("1") => true,
        Some("0") => false,
        other => return Err(format!("online is {other:?}, not \"1\" or \"0\"")),
    };
    Ok(Some(Status {
        ts: int("sts", sts)?,
        device_ts: true,
        online,
        battery: optional(f, "battery")?,
        signal: optional(f, "signal")?,
    }))
}

fn int(name: &str, v: &str) -> Result<i64, String> {
    v.parse()
        .map_err(|_| format!("{name} is {v:?}, not an integer"))
}

fn required(f: &HashMap<String, String>, name: &str) -> Result<f64, String> {
    optional(f, name)?.ok_or_else(|| format!("{name} is missing"))
}

fn optional(f: &HashMap<String, String>, name: &str) -> Result<Option<f64>, String> {
    match f.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(format!("{name} is {v:?}, not a number")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn old_names_under_the_prefix() {
        let old = OldLayout::new("fc:");
        assert_eq!(old.devices(), "fc:devices");
        assert_eq!(old.geo(), "fc:geo");
        assert_eq!(old.device("v1"), "fc:dev:v1");
        assert_eq!(old.event_log(), ["fc:events", "fc:events:epoch"]);
    }

    #[test]
    fn an_old_hash_gives_its_location_and_status() {
        let h = hash(&[
            ("ts", "1000"),
            ("lat", "51.5"),
            ("lon", "-0.12"),
            ("speed", "3.5"),
            ("sts", "900"),
            ("online", "0"),
            ("signal", "-70"),
            ("swill", "900"),
            ("last_seen", "1200"),
        ]);
        let Read::State(s) = from_old_hash("v1".into(), &h) else {
            panic!("usable");
        };
        assert_eq!(s.device.as_str(), "v1");
        assert_eq!(
            s.location,
            Some(Location {
                ts: 1000,
                lat: 51.5,
                lon: -0.12,
                alt: None,
                speed: Some(3.5),
                heading: None,
                accuracy: None,
            })
        );
        assert_eq!(
            s.status,
            Some(Status {
                ts: 900,
                device_ts: true,
                online: false,
                battery: None,
                signal: Some(-70.0),
            })
        );
    }

    #[test]
    fn what_an_old_hash_lacks_stays_out() {
        let Read::State(s) = from_old_hash("v1".into(), &hash(&[("last_seen", "5")])) else {
            panic!("usable");
        };
        assert_eq!((s.location, s.status), (None, None));
        let Read::State(s) = from_old_hash(
            "v1".into(),
            &hash(&[("sts", "5"), ("online", "1"), ("battery", "80")]),
        ) else {
            panic!("usable");
        };
        assert_eq!(s.location, None);
        assert_eq!(
            s.status.map(|s| (s.online, s.battery)),
            Some((true, Some(80.0)))
        );
    }

    #[test]
    fn a_malformed_old_hash_is_named_not_written() {
        for (h, why) in [
            (hash(&[("ts", "soon"), ("lat", "1"), ("lon", "2")]), "ts"),
            (hash(&[("ts", "5"), ("lon", "2")]), "lat is missing"),
            (hash(&[("ts", "5"), ("lat", "north"), ("lon", "2")]), "lat"),
            (hash(&[("ts", "5"), ("lat", "1"), ("lon", "NaN")]), "lon"),
            (hash(&[("sts", "5")]), "online"),
            (
                hash(&[("sts", "5"), ("online", "1"), ("battery", "full")]),
                "battery",
            ),
        ] {
            match from_old_hash("v1".into(), &h) {
                Read::Unusable { device, reason } => {
                    assert_eq!(device, "v1");
                    assert!(reason.contains(why), "{reason} names {why}");
                }
                r => panic!("{h:?} read as {r:?}"),
            }
        }
        assert!(matches!(
            from_old_hash("a b".into(), &hash(&[])),
            Read::Unusable { .. }
        ));
    }
}
