//! Turns the membership changes `location.lua` recorded (one entry per
//! change in the partition's `transitions` stream) into `geofence_enter`
//! and `geofence_exit` events, stored and pushed as device events are:
//! PostgreSQL `events` first (unique on device and event id), then
//! `event.lua` (dedup key, event log, live push). Only then is the entry
//! acknowledged and deleted.
//!
//! Every bridge drains, as one consumer group per stream, so each entry
//! goes to one of them; an entry left pending by a bridge that died is
//! claimed by another after [`CLAIM_IDLE`]. A replayed entry makes the
//! same events with the same ids, which both stores absorb.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::XID;
use fred::types::Value;
use tokio_util::sync::CancellationToken;

use fieldcast_core::{Backoff, DeviceId, Event, LogLimiter};
use fieldcast_geofence::transitions;

use super::{parse_membership, Fences};
use crate::metrics::{KindLabel, Metrics};
use crate::queue::Batch;
use crate::record::{EventRow, Reliable};
use crate::store::postgres::{Pg, PgError};
use crate::store::redis::RedisSink;
use crate::webhook::{enqueue, Owed, Wake};
use fieldcast_geofence::FenceId;

/// The consumer group on every partition's stream.
pub const GROUP: &str = "fieldcast";

/// Entries read per stream and pass.
const COUNT: u64 = 256;

/// An entry pending this long with a consumer is taken over: its bridge
/// died or lost Redis midway.
const CLAIM_IDLE: Duration = Duration::from_secs(30);

/// How often the streams are read without a wake-up (a change recorded by
/// another bridge's location step, or one this bridge missed).
const POLL: Duration = Duration::from_secs(1);

/// How often entries abandoned by other consumers are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(10);

pub struct Drain {
    pub redis: Arc<RedisSink>,
    pub pg: Arc<Pg>,
    pub fences: Arc<Fences>,
    pub metrics: Arc<Metrics>,
    /// This process's consumer name, unique per run.
    pub consumer: String,
    pub webhooks: Wake,
}

/// One stream entry: a device's membership moving from `prev` to `next`
/// with the location at `ts`, or (`a` set) alert rules tripped by it.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    stream: usize,
    id: String,
    device: String,
    ts: i64,
    prev: String,
    next: String,
    /// The rule kind (`overspeed`, `low_battery`, `offline`) of an alert.
    alert: Option<String>,
    /// The rules that tripped, comma-separated.
    rules: String,
    /// What tripped them, by name (`since`, `speed`, `battery`).
    facts: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis: {0}")]
    Sink(#[from] crate::store::redis::RedisSinkError),
    #[error("postgres: {0}")]
    Pg(#[from] crate::store::postgres::PgError),
}

impl Drain {
    pub fn consumer_name() -> String {
        format!(
            "bridge-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }

    pub async fn run(self, stop: CancellationToken) {
        let streams: Vec<String> = self
            .redis
            .keys()
            .all()
            .iter()
            .map(|k| k.transitions.clone())
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut log = LogLimiter::new(3, Duration::from_secs(30));
        let mut grouped = false;
        // After a failed pass, this consumer's own pending entries are read
        // again ("0") before new ones (">").
        let mut own_pending = false;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_claim = tokio::time::Instant::now();
        let every: Vec<usize> = (0..streams.len()).collect();
        loop {
            // A wake-up reads the streams it names; the poll reads all.
            let which: Vec<usize> = tokio::select! {
                _ = stop.cancelled() => break,
                parts = self.fences.changed() => parts.iter().map(|p| p.index()).filter(|i| *i < streams.len()).collect(),
                _ = tick.tick() => every.clone(),
            };
            // After a failure, this consumer's pending entries may be in
            // any stream.
            let which = if own_pending { every.clone() } else { which };
            let claim = last_claim.elapsed() >= CLAIM_EVERY;
            let outcome = async {
                if !grouped {
                    self.create_groups(&streams).await?;
                    grouped = true;
                }
                if claim {
                    last_claim = tokio::time::Instant::now();
                }
                // Until a pass finds less than a full read.
                loop {
                    let more = self.pass(&streams, &which, own_pending, claim).await?;
                    own_pending = false;
                    if !more {
                        return Ok::<(), DrainError>(());
                    }
                }
            }
            .await;
            match outcome {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    own_pending = true;
                    if e.to_string().contains("NOGROUP") {
                        // Redis restarted empty, or was flushed.
                        grouped = false;
                    }
                    let wait = backoff.next_delay();
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(error = %e, retry_in = ?wait, suppressed, "geofence transitions not drained; retrying");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if !own_pending && grouped {
            // Nothing of ours is pending: leave no consumer behind.
            let pipe = self.redis.client().pipeline();
            for s in &streams {
                let _: Result<(), _> = pipe
                    .xgroup_delconsumer(s.as_str(), GROUP, self.consumer.as_str())
                    .await;
            }
            let _ = pipe.all::<Value>().await;
        }
    }

    async fn create_groups(&self, streams: &[String]) -> Result<(), DrainError> {
        let pipe = self.redis.client().pipeline();
        for s in streams {
            // From the start: entries written before any bridge made the
            // group are owed too.
            let _: () = pipe.xgroup_create(s.as_str(), GROUP, "0", true).await?;
        }
        for answer in pipe.try_all::<Value>().await {
            match answer {
                Ok(_) => {}
                Err(e) if e.details().starts_with("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads the streams `which` once (and claims abandoned entries in
    /// every stream when `claim`), handles what it found. True when some
    /// read came back full.
    async fn pass(
        &self,
        streams: &[String],
        which: &[usize],
        own_pending: bool,
        claim: bool,
    ) -> Result<bool, DrainError> {
        if which.is_empty() && !claim {
            return Ok(false);
        }
        let pipe = self.redis.client().pipeline();
        let from = if own_pending { "0" } else { ">" };
        for s in which.iter().filter_map(|&i| streams.get(i)) {
            let _: () = pipe
                .xreadgroup(
                    GROUP,
                    self.consumer.as_str(),
                    Some(COUNT),
                    None,
                    false,
                    s.as_str(),
                    XID::from(from),
                )
                .await?;
        }
        if claim {
            for s in streams {
                let _: () = pipe
                    .xautoclaim(
                        s.as_str(),
                        GROUP,
                        self.consumer.as_str(),
                        CLAIM_IDLE.as_millis() as u64,
                        "0-0",
                        Some(COUNT),
                        false,
                    )
                    .await?;
            }
        }
        let answers: Vec<Value> = pipe.all().await?;
        let mut changes = Vec::new();
        let mut full = false;
        // The answers: one read per stream of `which`, then one claim per
        // stream.
        for (i, answer) in answers.into_iter().enumerate() {
            let (stream, entries) = match which.get(i) {
                Some(&s) => (s, read_entries(answer)),
                None => (i - which.len(), claimed_entries(answer)),
            };
            full |= entries.len() as u64 >= COUNT;
            changes.extend(
                entries
                    .into_iter()
                    .filter_map(|(id, fields)| Change::from_fields(stream, id, &fields)),
            );
        }
        if changes.is_empty() {
            return Ok(full);
        }
        self.handle(streams, &changes).await?;
        Ok(full)
    }

    /// Stores and pushes the events of `changes`, then acknowledges and
    /// deletes their entries.
    async fn handle(&self, streams: &[String], changes: &[Change]) -> Result<(), DrainError> {
        let snapshot = self.fences.current();
        let now = fieldcast_core::time::now_ms();
        let mut rows = Vec::new();
        for c in changes {
            let Ok(device) = DeviceId::parse(&c.device) else {
                // Cannot happen: the id came through the edge's check.
                continue;
            };
            if let Some(kind) = &c.alert {
                for event in super::alerts::tripped(&snapshot, kind, c.ts, &c.rules, &c.facts) {
                    rows.push(EventRow {
                        device: device.clone(),
                        event,
                        received_at: now,
                    });
                }
                continue;
            }
            let (prev, next) = (parse_membership(&c.prev), parse_membership(&c.next));
            for t in transitions(&prev, &next) {
                let (name, severity) = match snapshot.info(t.fence) {
                    Some(i) => (i.name.clone(), i.severity),
                    None => (String::new(), Default::default()),
                };
                let data = serde_json::json!({"geofence": t.fence, "name": name});
                let event = Event {
                    id: t.event_id(c.ts),
                    ts: c.ts,
                    kind: t.direction.kind().to_owned(),
                    severity,
                    data: serde_json::value::to_raw_value(&data).ok(),
                };
                rows.push(EventRow {
                    device: device.clone(),
                    event,
                    received_at: now,
                });
            }
        }
        emit(
            &self.redis,
            &self.pg,
            &self.metrics,
            &snapshot,
            &self.webhooks,
            &rows,
        )
        .await?;
        let pipe = self.redis.client().pipeline();
        for (i, s) in streams.iter().enumerate() {
            let ids: Vec<&str> = changes
                .iter()
                .filter(|c| c.stream == i)
                .map(|c| c.id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let _: () = pipe.xack(s.as_str(), GROUP, ids.clone()).await?;
            let _: () = pipe.xdel(s.as_str(), ids).await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        self.metrics.geofence_changes.inc_by(changes.len() as u64);
        Ok(())
    }
}

/// Stores derived events (transitions, alerts) as device events are:
/// PostgreSQL first, then `event.lua` (dedup, log, live push). Idempotent.
///
/// Alerts of rules, and transitions of fences, that name a webhook are
/// owed to it first (`webhook_outbox`, idempotent): an owed alert is one
/// whose event will be stored, since a failure here or below retries the
/// whole step with the same ids.
pub async fn emit(
    redis: &RedisSink,
    pg: &Pg,
    metrics: &Metrics,
    snapshot: &super::Snapshot,
    webhooks: &Wake,
    rows: &[EventRow],
) -> Result<(), DrainError> {
    if rows.is_empty() {
        return Ok(());
    }
    let owed: Vec<Owed> = rows
        .iter()
        .filter_map(|r| {
            let data: serde_json::Value =
                serde_json::from_str(r.event.data.as_deref()?.get()).ok()?;
            let hook = if r.event.kind.starts_with("alert.") {
                snapshot.rule(data.get("rule")?.as_u64()?)?.webhook()?
            } else {
                snapshot.fence_webhook(FenceId(data.get("geofence")?.as_u64()?))?
            };
            Some(Owed::for_webhook(r.device.as_str(), &r.event, hook))
        })
        .collect();
    if !owed.is_empty() {
        let client = pg.pool().get().await.map_err(PgError::from)?;
        enqueue(&**client, &owed).await.map_err(PgError::from)?;
    }
    pg.write_durable(&[], rows, metrics).await?;
    let batch = Batch {
        reliable: rows
            .iter()
            .map(|r| Reliable::Event {
                device: r.device.clone(),
                event: r.event.clone(),
                rx: r.received_at,
                ack: None,
            })
            .collect(),
        derived: true,
        ..Batch::default()
    };
    redis.apply(&batch, metrics).await?;
    if !owed.is_empty() {
        webhooks.owed();
    }
    for r in rows {
        metrics
            .derived_events
            .get_or_create(&KindLabel {
                kind: super::alerts::kind_label(&r.event.kind),
            })
            .inc();
    }
    Ok(())
}

impl Change {
    fn from_fields(stream: usize, id: String, fields: &[(String, String)]) -> Option<Change> {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        Some(Change {
            stream,
            id,
            device: get("d")?,
            ts: get("ts")?.parse().ok()?,
            prev: get("prev").unwrap_or_default(),
            next: get("next").unwrap_or_default(),
            alert: get("a"),
            rules: get("r").unwrap_or_default(),
            facts: fields
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "since" | "speed" | "battery" | "e"))
                .cloned()
                .collect(),
        })
    }
}

type Entry = (String, Vec<(String, String)>);

/// Entries of an `XREADGROUP` answer for one stream: `[[key, [[id,
/// [f, v, ...]], ...]]]`, or nil when there is nothing.
fn read_entries(v: Value) -> Vec<Entry> {
    let Value::Array(streams) = v else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
            _ => None,
        })
        .flat_map(entries)
        .collect()
}

/// Entries of an `XAUTOCLAIM` answer: `[cursor, [[id, [f, v, ...]], ...],
/// deleted ids]`.
fn claimed_entries(v: Value) -> Vec<Entry> {
    match v {
        Value::Array(mut parts) if parts.len() >= 2 => entries(parts.swap_remove(1)),
        _ => Vec::new(),
    }
}

fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|e| {
            let Value::Array(mut pair) = e else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = pair.pop()?.as_string()?;
            // A claimed entry deleted meanwhile comes back with nil fields.
            let Value::Array(flat) = fields else {
                return None;
            };
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k.as_string()?, v.as_string().unwrap_or_default()));
            }
            Some((id, out))
        })
        .collect()
}
