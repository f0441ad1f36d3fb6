//! Reads of the bridge's Redis layout (docs/redis-layout.md) and the two
//! writes the gateway makes: `PUBLISH <prefix>push`, and starting a new
//! life of a partition's event log (its epoch) when the log has none.
//!
//! The fleet is split into partitions (one hash slot each, so on a
//! cluster each lives on one node): what covers the whole fleet (the
//! device sets, a bbox search) asks every partition in one pipeline, which
//! fred sends to each node at once.
//!
//! In: device ids, a bbox, a cursor. Out: [`Snap`]s (a `DeviceState` plus
//! the status `ts` the snapshot filter needs) and event-log entries.

use fieldcast_core::DeviceState;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};

use crate::cursor::{Cursor, Epoch, Position, StreamId};
use fieldcast_core::geo::BBox;

/// A Redis read or write failed, or Redis holds what the layout does not
/// allow (retriable: Redis may come back, or be repaired).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("event log: {0}")]
    EventLog(String),
}

pub use fieldcast_core::Keys;

/// One device's hot state as a snapshot sees it.
#[derive(Debug, Clone)]
pub struct Snap {
    pub state: DeviceState,
    /// The status part's `ts` (`sts`), which `DeviceState` does not carry.
    pub sts: Option<i64>,
}

/// What one partition's event log looks like right now.
#[derive(Debug, Clone, Copy)]
pub struct StreamBounds {
    /// The log's current life.
    pub epoch: Epoch,
    /// Newest id ever added (`0-0` for a stream never written).
    pub last: StreamId,
    /// Newest id trimmed away: a cursor before it may have missed events.
    pub max_deleted: StreamId,
}

/// Every partition's [`StreamBounds`], in partition order.
#[derive(Debug, Clone)]
pub struct LogBounds(pub Vec<StreamBounds>);

impl LogBounds {
    /// The cursor of every partition's newest event (or of the start of
    /// an empty log).
    pub fn last_cursor(&self) -> Cursor {
        Cursor::new(
            self.0
                .iter()
                .map(|b| Position::new(b.epoch, b.last))
                .collect(),
        )
    }

    pub fn epochs(&self) -> Vec<Epoch> {
        self.0.iter().map(|b| b.epoch).collect()
    }

    /// Whether every position of `c` (in these lives) is still in its
    /// log's retained window: nothing after it trimmed away, and not
    /// beyond the newest id (a cursor from elsewhere).
    pub fn retains(&self, c: &Cursor) -> bool {
        self.0.len() == c.positions().len()
            && self
                .0
                .iter()
                .zip(c.positions())
                .all(|(b, p)| p.id >= b.max_deleted && p.id <= b.last)
    }
}

/// The gateway's Redis clients wait for a reconnect rather than fail
/// every reader at a blip (see [`fieldcast_service::redis`]).
pub fn builder(url: &str) -> Result<Builder, StoreError> {
    Ok(fieldcast_service::redis::builder(
        url,
        fieldcast_service::redis::WhileDown::Wait,
    )?)
}

/// The gateway's command connections to Redis.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pub keys: Keys,
    epoch_script: Script,
}

const PIPELINE_CHUNK: usize = 500;
/// Entries a replay reads per round trip, across the partitions it reads.
pub const REPLAY_BATCH: usize = 1000;
/// Reads of the bounds before giving up on a log that keeps changing life
/// under them (each failed read also starts a life if there is none).
const BOUNDS_ATTEMPTS: usize = 3;

impl Store {
    /// Starts connecting (in the background, retrying forever) and returns
    /// at once, so the gateway runs, not ready, while Redis is away.
    pub fn connect(url: &str, keys: Keys) -> Result<Self, StoreError> {
        let pool = builder(url)?.build_pool(4)?;
        let _ = pool.connect_pool();
        Ok(Store {
            pool,
            keys,
            epoch_script: Script::from_lua(include_str!("lua/epoch.lua")),
        })
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    /// Every connection of the pool answers. One answering is not enough:
    /// a client still without its cluster routing state fails every
    /// command it gets, so readiness would come before the gateway can
    /// serve (seen on a loaded CI machine).
    pub async fn ping(&self) -> Result<(), StoreError> {
        for client in self.pool.clients() {
            let _: String = client.ping(None).await?;
        }
        Ok(())
    }

    /// The partitions whose keys do not answer within `within` (see
    /// [`fieldcast_service::redis::unreachable_partitions`]).
    pub async fn unreachable_partitions(&self, within: std::time::Duration) -> Vec<usize> {
        fieldcast_service::redis::unreachable_partitions(self.pool.next(), &self.keys, within).await
    }

    /// Every device with a hot state (`SMEMBERS` of every partition's
    /// device set, in one pipeline).
    pub async fn fleet(&self) -> Result<Vec<String>, StoreError> {
        let pipe = self.pool.next().pipeline();
        for part in self.keys.all() {
            let () = pipe.smembers(&part.devices).await?;
        }
        let mut ids = Vec::new();
        for reply in pipe.try_all::<Value>().await {
            ids.extend(strings(reply?));
        }
        Ok(ids)
    }

    /// The ids the geo index places in or near `bbox` (a superset; filter
    /// exactly with the snapshot's lat/lon). Every search box of
    /// [`BBox::geosearch_boxes`] (the two parts of a box across the 180°
    /// meridian, the meridian itself) goes in one round trip; the union is
    /// returned, each id once.
    pub async fn bbox_candidates(&self, bbox: &BBox) -> Result<Vec<String>, StoreError> {
        let Some(boxes) = bbox.geosearch_boxes() else {
            return self.fleet().await;
        };
        let pipe = self.pool.next().pipeline();
        for part in self.keys.all() {
            for &(lon, lat, w, h) in &boxes {
                let args: Vec<Value> = vec![
                    part.geo.clone().into(),
                    "FROMLONLAT".into(),
                    lon.into(),
                    lat.into(),
                    "BYBOX".into(),
                    w.into(),
                    h.into(),
                    "km".into(),
                ];
                let () = pipe
                    .custom(command_at("GEOSEARCH", &part.geo), args)
                    .await?;
            }
        }
        // `try_all`: one result per command, so each GEOSEARCH's array
        // stays apart, however many were sent.
        let mut ids = Vec::new();
        for reply in pipe.try_all::<Value>().await {
            ids.extend(strings(reply?));
        }
        // The boxes overlap by their margins at the meridian.
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Whether `id` has a hot state (`EXISTS <prefix>dev:<id>`).
    pub async fn has_state(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = self.pool.next().exists(self.keys.device(id)).await?;
        Ok(n > 0)
    }

    /// The hot state of each id that has one, one pipelined round trip per
    /// chunk of ids.
    pub async fn states(&self, ids: &[String]) -> Result<Vec<Snap>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PIPELINE_CHUNK) {
            let pipe = self.pool.next().pipeline();
            for id in chunk {
                let () = pipe.hgetall(self.keys.device(id)).await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            for (id, reply) in chunk.iter().zip(replies) {
                let pairs = pairs(reply);
                if pairs.is_empty() {
                    continue;
                }
                let sts = pairs
                    .iter()
                    .find(|(k, _)| k == "sts")
                    .and_then(|(_, v)| v.parse().ok());
                let state =
                    DeviceState::from_hash(id, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                out.push(Snap { state, sts });
            }
        }
        Ok(out)
    }

    /// Every partition's log epoch and newest and newest-trimmed ids, in
    /// one pipeline. A log without an epoch or without its stream gets a
    /// new life first (see `lua/epoch.lua`), so a cursor always has an
    /// epoch.
    pub async fn stream_bounds(&self) -> Result<LogBounds, StoreError> {
        let n = self.keys.all().len();
        let mut found: Vec<Option<StreamBounds>> = vec![None; n];
        for _ in 0..BOUNDS_ATTEMPTS {
            let missing: Vec<usize> = (0..n).filter(|&p| found[p].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let read = self.read_bounds(&missing).await?;
            let mut lifeless = Vec::new();
            for (p, b) in missing.into_iter().zip(read) {
                match b {
                    Some(b) => found[p] = Some(b),
                    None => lifeless.push(p),
                }
            }
            futures::future::try_join_all(lifeless.into_iter().map(|p| self.start_life(p))).await?;
        }
        let all: Option<Vec<StreamBounds>> = found.into_iter().collect();
        all.map(LogBounds).ok_or_else(|| {
            StoreError::EventLog(format!(
                "an event log's epoch changed during {BOUNDS_ATTEMPTS} reads in a row"
            ))
        })
    }

    /// The bounds of the `partitions`' logs, each `None` when that log has
    /// no life or moved to another one during the read.
    async fn read_bounds(
        &self,
        partitions: &[usize],
    ) -> Result<Vec<Option<StreamBounds>>, StoreError> {
        // Per partition, the epoch on both sides of XINFO: if it is the
        // same twice, the ids belong to that life. One pipeline, so each
        // partition's three replies come from one connection in order.
        let pipe = self.pool.next().pipeline();
        for &p in partitions {
            let k = &self.keys.all()[p];
            let () = pipe.get(&k.epoch).await?;
            let args: Vec<Value> = vec!["STREAM".into(), k.events.clone().into()];
            let () = pipe.custom(command_at("XINFO", &k.events), args).await?;
            let () = pipe.get(&k.epoch).await?;
        }
        let mut replies = pipe.try_all::<Value>().await.into_iter();
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let (Some(before), Some(info), Some(after)) =
                (replies.next(), replies.next(), replies.next())
            else {
                return Err(StoreError::EventLog(
                    "missing replies to GET/XINFO/GET".into(),
                ));
            };
            out.push(self.bounds_of(p, before?, info, after?)?);
        }
        Ok(out)
    }

    fn bounds_of(
        &self,
        p: usize,
        before: Value,
        info: Result<Value, fred::error::Error>,
        after: Value,
    ) -> Result<Option<StreamBounds>, StoreError> {
        let (before, after) = (self.epoch_of(p, before)?, self.epoch_of(p, after)?);
        let info = match info {
            Ok(v) => v,
            // No stream: lost, or never written.
            Err(e) if e.details().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (Some(epoch), Some(after)) = (before, after) else {
            return Ok(None);
        };
        if epoch != after {
            return Ok(None);
        }
        let mut b = StreamBounds {
            epoch,
            last: StreamId::ZERO,
            max_deleted: StreamId::ZERO,
        };
        for (k, v) in value_pairs(info) {
            let id = || {
                v.as_string()
                    .and_then(|s| s.parse::<StreamId>().ok())
                    .unwrap_or_default()
            };
            match k.as_str() {
                "last-generated-id" => b.last = id(),
                "max-deleted-entry-id" => b.max_deleted = id(),
                _ => {}
            }
        }
        Ok(Some(b))
    }

    /// Runs `lua/epoch.lua` on partition `p`'s log: a new life if it has
    /// none, else nothing.
    async fn start_life(&self, p: usize) -> Result<Epoch, StoreError> {
        let k = &self.keys.all()[p];
        let fresh = Epoch::random();
        let v: Value = self
            .epoch_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![k.events.clone(), k.epoch.clone()],
                vec![fresh.to_string()],
            )
            .await?;
        let epoch = self.epoch_of(p, v)?.ok_or_else(|| {
            StoreError::EventLog(format!("{} is missing right after SET", k.epoch))
        })?;
        if epoch == fresh {
            tracing::info!(partition = p, %epoch, "an event log had no epoch (new, or lost by Redis); started a new life: older cursors get cursor_expired");
        }
        Ok(epoch)
    }

    /// An epoch as Redis returned it for partition `p`: `None` for a
    /// missing key.
    fn epoch_of(&self, p: usize, v: Value) -> Result<Option<Epoch>, StoreError> {
        if v.is_null() {
            return Ok(None);
        }
        let text = v.as_string().unwrap_or_default();
        text.parse().map(Some).map_err(|_| {
            StoreError::EventLog(format!(
                "{} holds {text:?}, not an epoch of 16 lowercase hex digits",
                self.keys.all()[p].epoch
            ))
        })
    }

    /// Up to `count` of partition `p`'s log entries strictly after
    /// `after`: `(id, device, event JSON without cursor)`; `None` when the
    /// log is no longer in `after`'s life, so the entries read may belong
    /// to another one and are not returned.
    pub async fn events_after(
        &self,
        p: usize,
        after: Position,
        count: usize,
    ) -> Result<Option<Vec<(StreamId, String, String)>>, StoreError> {
        let k = &self.keys.all()[p];
        let args: Vec<Value> = vec![
            k.events.clone().into(),
            format!("({}", after.id).into(),
            "+".into(),
            "COUNT".into(),
            (count as i64).into(),
        ];
        // The epoch after the XRANGE, on the same connection: a command
        // retried on a reconnected (and emptied) Redis cannot pass off the
        // new life's entries as the old one's.
        let pipe = self.pool.next().pipeline();
        let () = pipe.custom(command_at("XRANGE", &k.events), args).await?;
        let () = pipe.get(&k.epoch).await?;
        let (v, epoch): (Value, Value) = pipe.all().await?;
        if self.epoch_of(p, epoch)? != Some(after.epoch) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for entry in v.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(id) = id.as_string().and_then(|s| s.parse::<StreamId>().ok()) else {
                continue;
            };
            let fields = pairs(fields);
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            if let (Some(d), Some(j)) = (get("d"), get("j")) {
                out.push((id, d, j));
            }
        }
        Ok(Some(out))
    }

    /// `PUBLISH <prefix>push <payload>`.
    pub async fn publish_push(&self, payload: String) -> Result<(), StoreError> {
        let _: i64 = self.pool.next().publish(&self.keys.push, payload).await?;
        Ok(())
    }
}

/// A custom command routed on a cluster to `key`'s slot (for `XINFO
/// STREAM <key>` the first argument is no key).
fn command_at(name: &'static str, key: &str) -> CustomCommand {
    CustomCommand::new_static(
        name,
        ClusterHash::Custom(fieldcast_core::partition::key_slot(key)),
        false,
    )
}

fn strings(v: Value) -> Vec<String> {
    v.into_array()
        .into_iter()
        .filter_map(|v| v.as_string())
        .collect()
}

/// A flat `[k, v, k, v]` array or a map as string pairs.
fn pairs(v: Value) -> Vec<(String, String)> {
    value_pairs(v)
        .into_iter()
        .filter_map(|(k, v)| v.as_string().map(|v| (k, v)))
        .collect()
}

fn value_pairs(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(m) => m
            .inner()
            .into_iter()
            .filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v)))
            .collect(),
        other => {
            let mut out = Vec::new();
            let mut it = other.into_array().into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = k.as_string() {
                    out.push((k, v));
                }
            }
            out
        }
    }
}
