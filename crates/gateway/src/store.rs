//! Reads of the bridge's Redis layout (docs/redis-layout.md) and the one
//! write the gateway makes, `PUBLISH <prefix>push`.
//!
//! In: device ids, a bbox, a cursor. Out: [`Snap`]s (a `DeviceState` plus
//! the status `ts` the snapshot filter needs) and event-log entries.

use std::time::Duration;

use fieldcast_core::DeviceState;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use crate::cursor::StreamId;
use crate::geo::BBox;

/// A Redis read or write failed (retriable: Redis may come back).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct StoreError(#[from] fred::error::Error);

/// Every key and channel name, derived once from the prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    pub devices: String,
    pub geo: String,
    pub live: String,
    pub events: String,
    pub push: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            devices: format!("{prefix}devices"),
            geo: format!("{prefix}geo"),
            live: format!("{prefix}live"),
            events: format!("{prefix}events"),
            push: format!("{prefix}push"),
        }
    }

    pub fn dev(&self, id: &str) -> String {
        format!("{}dev:{id}", self.prefix)
    }
}

/// One device's hot state as a snapshot sees it.
#[derive(Debug, Clone)]
pub struct Snap {
    pub state: DeviceState,
    /// The status part's `ts` (`sts`), which `DeviceState` does not carry.
    pub sts: Option<i64>,
}

/// What the event log looks like right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamBounds {
    /// Newest id ever added (`0-0` for a stream never written).
    pub last: StreamId,
    /// Newest id trimmed away: a cursor before it may have missed events.
    pub max_deleted: StreamId,
}

/// Builds a fred client configuration that reconnects forever with
/// exponential backoff and jitter, and fails commands fast while Redis is
/// away instead of queueing them without bound.
pub fn builder(url: &str) -> Result<Builder, StoreError> {
    let mut config = fred::types::config::Config::from_url(url)?;
    config.fail_fast = false;
    let mut b = Builder::from_config(config);
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
    policy.set_jitter(200);
    b.set_policy(policy)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 2;
            c.max_command_buffer_len = 50_000;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(3);
            // Command connections receive no pub/sub messages; fred
            // preallocates every broadcast channel at full capacity, so a
            // large default here costs tens of MB per pooled client.
            p.broadcast_channel_capacity = 32;
        });
    Ok(b)
}

/// The gateway's command connections to Redis.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pub keys: Keys,
}

const PIPELINE_CHUNK: usize = 500;
const REPLAY_BATCH: u64 = 1000;

impl Store {
    /// Starts connecting (in the background, retrying forever) and returns
    /// at once, so the gateway runs, not ready, while Redis is away.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let pool = builder(url)?.build_pool(4)?;
        let _ = pool.connect_pool();
        Ok(Store {
            pool,
            keys: Keys::new(prefix),
        })
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.pool.next().ping(None).await?;
        Ok(())
    }

    /// Every device with a hot state (`SMEMBERS <prefix>devices`).
    pub async fn fleet(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.pool.next().smembers(&self.keys.devices).await?)
    }

    /// The ids the geo index places in or near `bbox` (a superset; filter
    /// exactly with the snapshot's lat/lon).
    pub async fn bbox_candidates(&self, bbox: &BBox) -> Result<Vec<String>, StoreError> {
        let Some((lon, lat, w, h)) = bbox.geosearch_args() else {
            return self.fleet().await;
        };
        let args: Vec<Value> = vec![
            self.keys.geo.clone().into(),
            "FROMLONLAT".into(),
            lon.into(),
            lat.into(),
            "BYBOX".into(),
            w.into(),
            h.into(),
            "km".into(),
        ];
        let v: Value = self.pool.next().custom(command("GEOSEARCH"), args).await?;
        Ok(strings(v))
    }

    /// The hot state of each id that has one, one pipelined round trip per
    /// chunk of ids.
    pub async fn states(&self, ids: &[String]) -> Result<Vec<Snap>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PIPELINE_CHUNK) {
            let pipe = self.pool.next().pipeline();
            for id in chunk {
                let () = pipe.hgetall(self.keys.dev(id)).await?;
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

    /// The newest and the newest-trimmed ids of the event log.
    pub async fn stream_bounds(&self) -> Result<StreamBounds, StoreError> {
        let args: Vec<Value> = vec!["STREAM".into(), self.keys.events.clone().into()];
        let v: Value = match self.pool.next().custom(command("XINFO"), args).await {
            Ok(v) => v,
            // No stream yet: nothing was ever written or trimmed.
            Err(e) if e.details().contains("no such key") => return Ok(StreamBounds::default()),
            Err(e) => return Err(e.into()),
        };
        let mut b = StreamBounds::default();
        for (k, v) in value_pairs(v) {
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
        Ok(b)
    }

    /// Up to one batch of event-log entries strictly after `after`:
    /// `(cursor, device, event JSON without cursor)`.
    pub async fn events_after(
        &self,
        after: StreamId,
    ) -> Result<Vec<(StreamId, String, String)>, StoreError> {
        let args: Vec<Value> = vec![
            self.keys.events.clone().into(),
            format!("({after}").into(),
            "+".into(),
            "COUNT".into(),
            (REPLAY_BATCH as i64).into(),
        ];
        let v: Value = self.pool.next().custom(command("XRANGE"), args).await?;
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
        Ok(out)
    }

    /// `PUBLISH <prefix>push <payload>`.
    pub async fn publish_push(&self, payload: String) -> Result<(), StoreError> {
        let _: i64 = self.pool.next().publish(&self.keys.push, payload).await?;
        Ok(())
    }
}

fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
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
