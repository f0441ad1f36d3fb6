//! Alert rules turned into events (docs/alerts.md). Where each kind is
//! judged, so that it trips once:
//!
//! - `overspeed`: `location.lua`, with the location that becomes the
//!   newest (an episode per rule in the device hash's `os`);
//! - `low_battery`, `offline`: `status.lua`, with the status that moves
//!   the hot state (a downward crossing of the level; a Last Will);
//! - `event`: `event.lua`, with the first delivery of the device event
//!   (its dedup key);
//! - `inactive`: a sweep of the hot state ([`sweep`]).
//!
//! Every alert's id is fixed by what tripped it (rule, and the episode's
//! start, the status's `ts`, the event's id or the last message's `ts`),
//! so a replay is absorbed by the event store's dedup.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use fieldcast_core::rule::{Condition, Rule};
use fieldcast_core::{Backoff, DeviceId, Event, LogLimiter};

use super::{Fences, Snapshot};
use crate::metrics::Metrics;
use crate::record::EventRow;
use crate::store::postgres::Pg;
use crate::store::redis::RedisSink;

/// The metric label of a derived event's kind.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "geofence_enter" => "geofence_enter",
        "geofence_exit" => "geofence_exit",
        "alert.overspeed" => "alert.overspeed",
        "alert.low_battery" => "alert.low_battery",
        "alert.inactive" => "alert.inactive",
        "alert.offline" => "alert.offline",
        "alert.event" => "alert.event",
        _ => "other",
    }
}

fn alert(rule: &Rule, id: String, ts: i64, data: serde_json::Value) -> Event {
    Event {
        id,
        ts,
        kind: rule.alert_kind().to_owned(),
        severity: rule.severity(),
        data: serde_json::value::to_raw_value(&data).ok(),
    }
}

/// The alerts of one stream entry written by `location.lua` or
/// `status.lua`: `kind` tripped `rules` (comma-separated ids) at `ts`,
/// with `facts`. A rule deleted since trips nothing.
pub fn tripped(
    snapshot: &Snapshot,
    kind: &str,
    ts: i64,
    rules: &str,
    facts: &[(String, String)],
) -> Vec<Event> {
    let fact = |k: &str| facts.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let number = |k: &str| fact(k).and_then(|v| v.parse::<f64>().ok());
    rules
        .split(',')
        .filter_map(|r| r.parse::<u64>().ok())
        .filter_map(|r| snapshot.rule(r))
        .filter(|r| r.kind().as_str() == kind)
        .map(|r| match r.condition() {
            Condition::Overspeed { speed, .. } => {
                let since = fact("since")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(ts);
                alert(
                    r,
                    format!("alert-overspeed-{}-{since}", r.id()),
                    ts,
                    json!({"rule": r.id(), "speed": number("speed"), "limit": speed, "since": since}),
                )
            }
            Condition::Event { event_kind } => {
                let event = fact("e").unwrap_or_default();
                alert(
                    r,
                    format!("alert-event-{}-{event}", r.id()),
                    ts,
                    json!({"rule": r.id(), "event": event, "event_kind": event_kind}),
                )
            }
            Condition::LowBattery { battery } => alert(
                r,
                format!("alert-low_battery-{}-{ts}", r.id()),
                ts,
                json!({"rule": r.id(), "battery": number("battery"), "limit": battery}),
            ),
            _ => alert(
                r,
                format!("alert-{}-{}-{ts}", r.kind().as_str(), r.id()),
                ts,
                json!({"rule": r.id()}),
            ),
        })
        .collect()
}

/// How often the hot state is swept for inactive devices: half the
/// shortest `after`, within these bounds.
const SWEEP_MIN: Duration = Duration::from_secs(1);
const SWEEP_MAX: Duration = Duration::from_secs(10);

fn sweep_every(shortest_after_ms: Option<u64>) -> Duration {
    shortest_after_ms
        .map(|ms| Duration::from_millis(ms / 2))
        .unwrap_or(SWEEP_MAX)
        .clamp(SWEEP_MIN, SWEEP_MAX)
}

/// Finds, in one partition, the devices whose `last_seen` is at or before
/// a cutoff: `[id, last_seen, ...]`.
const SILENT_LUA: &str = r#"
local out = {}
local cutoff = tonumber(ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local seen = redis.call('HGET', ARGV[1] .. id, 'last_seen')
  if seen and tonumber(seen) <= cutoff then
    out[#out + 1] = id
    out[#out + 1] = seen
  end
end
return out
"#;

/// The `inactive` rules: every [`sweep_every`], the bridge holding the
/// sweep lease (a Redis key, so one bridge sweeps at a time) lists each
/// partition's devices silent for at least the shortest `after`, and
/// raises, for each rule of such a device whose `after` has passed, the
/// alert `alert-inactive-<rule>-<last_seen>` (ts `last_seen + after`):
/// once per silence, whichever bridge sweeps and however often.
pub struct Sweep {
    pub redis: Arc<RedisSink>,
    pub pg: Arc<Pg>,
    pub fences: Arc<Fences>,
    pub metrics: Arc<Metrics>,
    pub consumer: String,
    pub webhooks: crate::webhook::Wake,
}

/// Most (rule, device, last_seen) the sweep remembers having raised; past
/// it the memory is cleared and the next sweep raises them again, which
/// the event store absorbs.
const REMEMBERED: usize = 1_000_000;

impl Sweep {
    pub async fn run(self, stop: CancellationToken) {
        let mut raised = std::collections::HashSet::new();
        let mut log = LogLimiter::new(3, Duration::from_secs(60));
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let every = sweep_every(self.fences.current().inactive_rules().map(|(_, a)| a).min());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.sweep(&mut raised, every).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(error = %e, suppressed, "inactive sweep failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// One sweep. `raised` holds what this bridge already stored, so a
    /// device that stays silent is not written again every sweep.
    async fn sweep(
        &self,
        raised: &mut std::collections::HashSet<(u64, String, i64)>,
        every: Duration,
    ) -> anyhow::Result<()> {
        let snapshot = self.fences.current();
        let rules: Vec<(&Rule, u64)> = snapshot.inactive_rules().collect();
        let Some(shortest) = rules.iter().map(|(_, a)| *a).min() else {
            return Ok(());
        };
        let client = self.redis.client();
        let keys = self.redis.keys();
        let lease = format!("{}sweep:inactive", keys.prefix());
        let held: Option<String> = client
            .set(
                &lease,
                self.consumer.as_str(),
                // A little under the period: the holder sweeps again next
                // time, or another bridge takes over if it is gone.
                Some(fred::types::Expiration::PX(
                    (every.as_millis() as i64 * 9 / 10).max(1),
                )),
                Some(fred::types::SetOptions::NX),
                false,
            )
            .await?;
        if held.is_none() {
            return Ok(());
        }
        let now = fieldcast_core::time::now_ms();
        let cutoff = now - shortest as i64;
        let mut rows = Vec::new();
        let mut marks = Vec::new();
        for part in keys.all() {
            let found: Value = client
                .eval(
                    SILENT_LUA,
                    vec![part.devices.clone()],
                    vec![part.device(""), cutoff.to_string()],
                )
                .await?;
            let Value::Array(flat) = found else { continue };
            let mut it = flat.into_iter();
            while let (Some(id), Some(seen)) = (it.next(), it.next()) {
                let (Some(id), Some(seen)) = (
                    id.as_string(),
                    seen.as_string().and_then(|s| s.parse::<i64>().ok()),
                ) else {
                    continue;
                };
                let Ok(device) = DeviceId::parse(&id) else {
                    continue;
                };
                for r in snapshot.rules_of(&id) {
                    let Condition::Inactive { after_ms } = r.condition() else {
                        continue;
                    };
                    let after = *after_ms as i64;
                    if now - seen < after || raised.contains(&(r.id(), id.clone(), seen)) {
                        continue;
                    }
                    marks.push((r.id(), id.clone(), seen));
                    rows.push(EventRow {
                        device: device.clone(),
                        event: alert(
                            r,
                            format!("alert-inactive-{}-{seen}", r.id()),
                            seen + after,
                            json!({"rule": r.id(), "last_seen": seen, "after_ms": after}),
                        ),
                        received_at: now,
                    });
                }
            }
        }
        if !rows.is_empty() {
            super::drain::emit(
                &self.redis,
                &self.pg,
                &self.metrics,
                &snapshot,
                &self.webhooks,
                &rows,
            )
            .await?;
            if raised.len() + rows.len() > REMEMBERED {
                raised.clear();
            }
            raised.extend(marks);
        }
        self.metrics.inactive_sweeps.inc();
        Ok(())
    }
}
