//! Redis sink: hot state, geo index, live publication, event log and dead
//! letters (layout in docs/redis-layout.md). A whole batch goes out as one
//! pipeline of Lua scripts: one network round trip (one per node on a
//! cluster), and the "only forward in `ts`" decision taken atomically on
//! the server. Each script call touches the keys of one partition: one
//! hash slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fred::clients::Pipeline;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};

use fieldcast_core::geo::{index_cell, GEO_MAX_LAT};
use fieldcast_core::live::{self, fmt_f64};
use fieldcast_core::partition::key_slot;
use fieldcast_core::{Event, Keys, Kind, Location, Partition, Status, Topology};
use fieldcast_service::redis::ReplyCode;

use crate::fences::{Fences, Snapshot};
use crate::metrics::{KindLabel, Metrics};
use crate::queue::Batch;
use crate::record::{DeadLetter, LiveLocation, Reliable};

/// How many events the live event logs keep (approximately), all
/// partitions together: each keeps its share ([`event_log_maxlen`]).
pub const EVENT_LOG_MAXLEN: u64 = 100_000;
/// How long the event log and the live dedup keys last.
pub const EVENT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Locations per script call: one EVALSHA and one SPUBLISH (a JSON array)
/// for up to this many updates (of one partition on a cluster), instead of
/// one each.
pub const LOCATIONS_PER_SCRIPT: usize = 100;
/// Dead-letter list length (PROTOCOL.md §2).
pub const DEADLETTER_MAX: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisSinkError(#[from] pub fred::error::Error);

impl RedisSinkError {
    /// Redis answered that this data cannot be applied (a script error on
    /// its arguments, a key of the wrong type): retrying the same items can
    /// never work. Server states that pass (LOADING, BUSY, OOM, READONLY,
    /// MASTERDOWN, TRYAGAIN, CLUSTERDOWN) and connection errors are outages.
    pub fn is_permanent(&self) -> bool {
        match ReplyCode::of(&self.0) {
            ReplyCode::WrongType => true,
            // A Lua runtime error names the script; other ERR replies
            // (a command refused in this state) are not about the data.
            ReplyCode::Err => {
                let msg = self.0.details();
                msg.contains("user_script") || msg.contains("Error running script")
            }
            ReplyCode::NoScript | ReplyCode::Transient => false,
            ReplyCode::Other => matches!(self.0.kind(), fred::error::ErrorKind::InvalidArgument),
        }
    }
}

/// The bridge's writer of the Redis layout ([`Keys`]): each batch from
/// the queue is one pipeline of Lua scripts (hot state, GEO, live push,
/// event log with dedup), and a batch Redis refuses for its content is
/// split until the refused items are found (`apply_isolating`).
pub struct RedisSink {
    client: Client,
    keys: Keys,
    /// The geofences each location's membership is computed with; none
    /// (the rebuild) leaves memberships as they are.
    fences: Option<Arc<Fences>>,
    location: Script,
    status: Script,
    event: Script,
}

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub published: usize,
    /// Applied locations and statuses whose geofence membership changed or
    /// that tripped an alert (recorded in their partition's `transitions`
    /// stream).
    pub membership_changes: usize,
    /// The partitions of those: the streams the drain reads at once.
    pub changed: Vec<Partition>,
    pub stale_locations: usize,
    pub stale_statuses: usize,
    pub duplicate_events: usize,
}

/// One script call of a batch.
enum Work<'a> {
    /// Up to [`LOCATIONS_PER_SCRIPT`] fixes, published on the channel.
    Locations(&'a str, Vec<(Partition, &'a LiveLocation)>),
    Status(&'a str, &'a Status, i64),
    /// An event, and whether the bridge derived it (`Batch::derived`).
    Event(&'a str, &'a Event, i64, bool),
}

impl Work<'_> {
    fn call(&self) -> Call {
        match self {
            Work::Locations(..) => Call::Location,
            Work::Status(..) => Call::Status,
            Work::Event(..) => Call::Event,
        }
    }
}

/// The kind of a script call, to read its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Location,
    Status,
    Event,
}

impl Applied {
    /// Adds one script call's answer: `location.lua` answers a flag per
    /// fix, the others 1 when applied (else stale or duplicate).
    fn count(&mut self, work: &Work, keys: &Keys, answer: Value) {
        match (work.call(), answer) {
            (Call::Location, Value::Array(flags)) => {
                let parts: &[(Partition, &LiveLocation)] = match work {
                    Work::Locations(_, chunk) => chunk,
                    _ => &[],
                };
                for (i, f) in flags.into_iter().enumerate() {
                    if matches!(f, Value::Integer(1)) {
                        self.published += 1;
                    } else if matches!(f, Value::Integer(2)) {
                        self.published += 1;
                        self.membership_changes += 1;
                        if let Some((p, _)) = parts.get(i) {
                            self.changed.push(*p);
                        }
                    } else {
                        self.stale_locations += 1;
                    }
                }
            }
            (_, Value::Integer(1)) => self.published += 1,
            (Call::Status | Call::Event, Value::Integer(2)) => {
                self.published += 1;
                self.membership_changes += 1;
                if let Work::Status(device, ..) | Work::Event(device, ..) = work {
                    self.changed.push(keys.partitions().of(device));
                }
            }
            (Call::Event, _) => self.duplicate_events += 1,
            (Call::Status, _) => self.stale_statuses += 1,
            (Call::Location, _) => {}
        }
    }

    fn record(&self, metrics: &Metrics) {
        metrics
            .duplicate_events
            .inc_by(self.duplicate_events as u64);
        metrics.redis_messages.inc_by(
            (self.published + self.stale_locations + self.stale_statuses + self.duplicate_events)
                as u64,
        );
        for (kind, n) in [
            (Kind::Location, self.stale_locations),
            (Kind::Status, self.stale_statuses),
        ] {
            if n > 0 {
                metrics
                    .stale
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .inc_by(n as u64);
            }
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(fmt_f64).unwrap_or_default()
}

impl RedisSink {
    pub fn new(client: Client, keys: Keys) -> Self {
        RedisSink {
            client,
            keys,
            fences: None,
            location: Script::from_lua(include_str!("lua/location.lua")),
            status: Script::from_lua(include_str!("lua/status.lua")),
            event: Script::from_lua(include_str!("lua/event.lua")),
        }
    }

    /// Gives each location written its geofence membership.
    pub fn with_fences(mut self, fences: Arc<Fences>) -> Self {
        self.fences = Some(fences);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn load_scripts(&self) -> Result<(), RedisSinkError> {
        // To every primary (fred's SCRIPT LOAD on a cluster): a replica
        // promoted by a failover has none.
        for s in [&self.location, &self.status, &self.event] {
            s.load(&self.client).await?;
        }
        Ok(())
    }

    /// Writes one batch. Every script is idempotent (forward-only state,
    /// dedup key for events), so on error the caller may send the whole
    /// batch again.
    pub async fn apply(&self, batch: &Batch, metrics: &Metrics) -> Result<Applied, RedisSinkError> {
        let started = Instant::now();
        let result = self.apply_once(batch).await;
        match &result {
            Ok(a) => {
                metrics
                    .redis_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                a.record(metrics);
                if a.membership_changes > 0 {
                    if let Some(f) = &self.fences {
                        f.wake_drain(&a.changed);
                    }
                }
            }
            Err(_) => {
                metrics.redis_errors.inc();
            }
        }
        result
    }

    /// One pipeline for the batch. Calls answered `NOSCRIPT` (a Redis
    /// restarted or flushed, or a replica just promoted: on a cluster only
    /// that node's calls) are sent again, alone, once the scripts are
    /// loaded; sending the whole batch again would count what the other
    /// nodes applied the first time as stale or duplicate.
    async fn apply_once(&self, batch: &Batch) -> Result<Applied, RedisSinkError> {
        let work = self.work(batch);
        if work.is_empty() && batch.deadletters.is_empty() {
            return Ok(Applied::default());
        }
        let all: Vec<&Work> = work.iter().collect();
        let answers = self.send(&all, &batch.deadletters).await?;
        let mut applied = Applied::default();
        let mut again = Vec::new();
        for (w, answer) in all.into_iter().zip(answers) {
            match answer {
                Ok(v) => applied.count(w, &self.keys, v),
                Err(e) if ReplyCode::of(&e) == ReplyCode::NoScript => again.push(w),
                Err(e) => return Err(e.into()),
            }
        }
        if !again.is_empty() {
            self.load_scripts().await?;
            let answers = self.send(&again, &[]).await?;
            for (w, answer) in again.into_iter().zip(answers) {
                applied.count(w, &self.keys, answer?);
            }
        }
        Ok(applied)
    }

    /// The batch's script calls, in the order they are sent.
    fn work<'a>(&'a self, batch: &'a Batch) -> Vec<Work<'a>> {
        let mut work = Vec::with_capacity(batch.len());
        for (channel, group) in self.location_groups(&batch.locations) {
            for chunk in group.chunks(LOCATIONS_PER_SCRIPT) {
                work.push(Work::Locations(channel, chunk.to_vec()));
            }
        }
        for r in &batch.reliable {
            match r {
                Reliable::Status {
                    device, status, rx, ..
                } => work.push(Work::Status(device.as_str(), status, *rx)),
                Reliable::Event {
                    device, event, rx, ..
                } => work.push(Work::Event(device.as_str(), event, *rx, batch.derived)),
                Reliable::AckOnly(_) => {}
            }
        }
        work
    }

    /// Sends `work` and the dead letters in one pipeline: one answer per
    /// call, in order (the dead-letter writes' answers are checked here).
    async fn send(
        &self,
        work: &[&Work<'_>],
        deadletters: &[DeadLetter],
    ) -> Result<Vec<Result<Value, fred::error::Error>>, RedisSinkError> {
        let pipe = self.client.pipeline();
        for w in work {
            match w {
                Work::Locations(channel, chunk) => {
                    self.queue_locations(&pipe, channel, chunk).await?
                }
                Work::Status(device, status, rx) => {
                    self.queue_status(&pipe, device, status, *rx).await?
                }
                Work::Event(device, event, rx, derived) => {
                    self.queue_event(&pipe, device, event, *rx, *derived)
                        .await?
                }
            }
        }
        if !deadletters.is_empty() {
            let k = &self.keys;
            let entries: Vec<String> = deadletters.iter().map(deadletter_json).collect();
            let _: () = pipe.lpush(&k.deadletter, entries).await?;
            let _: () = pipe.ltrim(&k.deadletter, 0, DEADLETTER_MAX - 1).await?;
        }
        let mut answers = pipe.try_all::<Value>().await;
        for rest in answers.drain(work.len().min(answers.len())..) {
            rest?;
        }
        Ok(answers)
    }

    /// The batch's locations in the groups a script call may take, each
    /// with its live channel, sorted by partition (stable: each device's
    /// fixes keep their order) so a call names few partitions' shared keys:
    /// on a cluster one group per partition (a script touches one slot);
    /// on one Redis the whole batch, whose calls then carry up to
    /// [`LOCATIONS_PER_SCRIPT`] each, on the one live channel.
    fn location_groups<'a>(
        &'a self,
        locations: &'a [LiveLocation],
    ) -> Vec<(&'a str, Vec<(Partition, &'a LiveLocation)>)> {
        let keys = &self.keys;
        let partitions = keys.partitions();
        let mut tagged: Vec<_> = locations
            .iter()
            .map(|l| (partitions.of(l.device.as_str()), l))
            .collect();
        tagged.sort_by_key(|(p, _)| *p);
        if keys.topology() == Topology::Single {
            // One Redis: every partition publishes on `<prefix>live`.
            return keys
                .all()
                .first()
                .map(|p| (p.live.as_str(), tagged))
                .into_iter()
                .collect();
        }
        let mut groups: Vec<(&str, Vec<(Partition, &LiveLocation)>)> = Vec::new();
        for (p, l) in tagged {
            match groups.last_mut() {
                Some((_, group)) if group.last().map(|(q, _)| *q) == Some(p) => group.push((p, l)),
                _ => groups.push((keys.partition(p).live.as_str(), vec![(p, l)])),
            }
        }
        groups
    }

    /// One `location.lua` call for up to [`LOCATIONS_PER_SCRIPT`] fixes
    /// of one group ([`Self::location_groups`], sorted by partition),
    /// published on `channel`: each partition's geo set, device set and
    /// transitions stream once, with its number of fixes, then a device
    /// hash per fix; the configuration version and each fix's geofence
    /// membership computed with it (docs/geofences.md); the live
    /// envelopes as one JSON array (with their lengths), and each fix's
    /// eight arguments (`location.lua`'s header).
    async fn queue_locations(
        &self,
        pipe: &Pipeline<Client>,
        channel: &str,
        chunk: &[(Partition, &LiveLocation)],
    ) -> Result<(), fred::error::Error> {
        let snapshot = self.fences.as_ref().map(|f| f.current());
        let snapshot: Option<&Snapshot> = snapshot.as_deref();
        let version = snapshot.map_or(0, |s| s.version);
        let (mut fence_ids, mut membership, mut over) = (Vec::new(), String::new(), String::new());
        let mut shared: Vec<Value> = Vec::with_capacity(3);
        let mut slot = None;
        let mut counts: Vec<usize> = Vec::with_capacity(1);
        let mut hashes: Vec<Value> = Vec::with_capacity(chunk.len());
        let mut fixes: Vec<Value> = Vec::with_capacity(8 * chunk.len());
        // Every per-fix argument is a slice of this one buffer, not a
        // string of its own: the allocations per fix were the bridge's
        // largest cost (docs/benchmarks.md, "Cost per message").
        let mut arena = Args::with_capacity(160 * chunk.len());
        // The envelopes as the JSON array published when all apply, and
        // their lengths, for the script to pick the applied ones otherwise.
        let mut message: Vec<u8> = Vec::with_capacity(200 * chunk.len() + 2);
        let mut lens = Vec::with_capacity(4 * chunk.len());
        let mut last = None;
        for &(p, l) in chunk {
            let id = l.device.as_str();
            let k = self.keys.partition(p);
            if last != Some(p) {
                slot.get_or_insert_with(|| key_slot(&k.geo));
                shared
                    .extend([&k.geo, &k.devices, &k.transitions].map(|s| Value::from(s.as_str())));
                counts.push(0);
                last = Some(p);
            }
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
            arena.put(k.device_prefix().as_bytes());
            hashes.push(arena.value(id.as_bytes()));
            let loc = &l.loc;
            let first = lens.is_empty();
            if !first {
                lens.push(b',');
            }
            message.push(if first { b'[' } else { b',' });
            let before = message.len();
            live::write_location_envelope(&mut message, l.rx, id, loc);
            lens.extend_from_slice(
                itoa::Buffer::new()
                    .format(message.len() - before)
                    .as_bytes(),
            );
            if let Some(s) = snapshot {
                s.membership_into(id, loc, &mut fence_ids, &mut membership);
                s.overspeed_into(id, loc, &mut over);
            }
            // Redis geo cannot hold the poles: the geo set gets the bound,
            // the hash the exact latitude.
            let geo_lat = loc.lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
            fixes.push(arena.value(id.as_bytes()));
            fixes.push(arena.value(itoa::Buffer::new().format(loc.ts).as_bytes()));
            fixes.push(arena.packed_location(loc));
            fixes.push(arena.f64(loc.lon));
            fixes.push(arena.f64(geo_lat));
            fixes.push(
                arena.value(
                    itoa::Buffer::new()
                        .format(index_cell(geo_lat, loc.lon))
                        .as_bytes(),
                ),
            );
            fixes.push(arena.value(membership.as_bytes()));
            fixes.push(arena.value(over.as_bytes()));
        }
        message.push(b']');
        let mut args = Vec::with_capacity(5 + counts.len() + fixes.len());
        args.extend([
            Value::from(channel),
            Value::from(counts.len() as i64),
            Value::Bytes(message.into()),
            Value::Bytes(lens.into()),
            Value::from(version),
        ]);
        args.extend(counts.iter().map(|&c| Value::from(c as i64)));
        args.append(&mut fixes);
        shared.append(&mut hashes);
        evalsha_values(pipe, &self.location, slot.unwrap_or(0), shared, args).await
    }

    /// One `status.lua` call. A status without the device's `ts` (the Last
    /// Will) is published with the `ts` the script decides, so its envelope
    /// goes as the two halves around that `ts`.
    async fn queue_status(
        &self,
        pipe: &Pipeline<Client>,
        id: &str,
        status: &Status,
        rx: i64,
    ) -> Result<(), fred::error::Error> {
        let (_, k) = self.keys.of(id);
        let (envelope, after_ts, untimed) = if status.device_ts {
            let msg = live::status_json(id, status);
            (live::envelope(rx, &msg), String::new(), "0")
        } else {
            let (before, after) = live::status_envelope_around_ts(rx, id, status);
            (before, after, "1")
        };
        let args: Vec<String> = vec![
            id.to_owned(),
            status.ts.to_string(),
            if status.online { "1" } else { "0" }.to_owned(),
            opt(status.battery),
            opt(status.signal),
            envelope,
            k.live.clone(),
            untimed.to_owned(),
            after_ts,
        ];
        let (low, offline) = match self.fences.as_ref().map(|f| f.current()) {
            Some(s) if s.version > 0 => s.status_rules(id),
            _ => Default::default(),
        };
        let mut args = args;
        args.extend([low, offline]);
        let keys = vec![k.device(id), k.devices.clone(), k.transitions.clone()];
        evalsha(pipe, &self.status, keys, args).await
    }

    /// One `event.lua` call, in the device's partition: its `last_seen`,
    /// then (once per event id) the partition's log, with its epoch, and
    /// the live push.
    async fn queue_event(
        &self,
        pipe: &Pipeline<Client>,
        id: &str,
        event: &Event,
        rx: i64,
        derived: bool,
    ) -> Result<(), fred::error::Error> {
        let (_, k) = self.keys.of(id);
        let args: Vec<String> = vec![
            id.to_owned(),
            live::event_json(id, event),
            rx.to_string(),
            k.live.clone(),
            event_log_maxlen(self.keys.partitions().count()).to_string(),
            EVENT_WINDOW.as_secs().to_string(),
            new_epoch(),
            event.ts.to_string(),
            match self.fences.as_ref().map(|f| f.current()) {
                Some(s) if s.version > 0 => s.event_rules(id, &event.kind),
                _ => String::new(),
            },
            event.id.clone(),
            event.kind.clone(),
            if derived { "1" } else { "0" }.to_owned(),
        ];
        let keys = vec![
            k.device(id),
            k.devices.clone(),
            k.event_seen(id, &event.id),
            k.events.clone(),
            k.epoch.clone(),
            k.transitions.clone(),
        ];
        evalsha(pipe, &self.event, keys, args).await
    }

    /// [`Self::apply`], but items Redis refuses for their content are found
    /// by bisection and returned (as one-item batches) instead of failing
    /// the batch; the rest is applied. `Err` only for an outage.
    pub async fn apply_isolating(
        &self,
        batch: &Batch,
        metrics: &Metrics,
    ) -> Result<Vec<Batch>, RedisSinkError> {
        let first = match self.apply(batch, metrics).await {
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.is_permanent() => e,
            Err(e) => return Err(e),
        };
        tracing::warn!(error = %first, items = batch.len(), "redis refused a batch; isolating the items at fault");
        let mut bad = Vec::new();
        let mut work = vec![batch.clone()];
        while let Some(part) = work.pop() {
            if part.len() <= 1 {
                // A single item is retried to tell it from the rest.
                match self.apply(&part, metrics).await {
                    Ok(_) => {}
                    Err(e) if e.is_permanent() => bad.push(part),
                    Err(e) => return Err(e),
                }
                continue;
            }
            match self.apply(&part, metrics).await {
                Ok(_) => {}
                Err(e) if e.is_permanent() => {
                    let (a, b) = part.split();
                    work.extend([b, a]);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// Trims every partition's event log to the retained window (one
    /// pipeline; on a cluster fred sends each node its part); run once a
    /// minute.
    pub async fn trim_events(&self, now_ms: i64) -> Result<(), RedisSinkError> {
        let min_id = format!("{}-0", now_ms - EVENT_WINDOW.as_millis() as i64);
        let pipe = self.client.pipeline();
        for p in self.keys.all() {
            let args = vec![p.events.clone(), "MINID".into(), "~".into(), min_id.clone()];
            pipe.custom::<(), _>(CustomCommand::new_static("XTRIM", None, false), args)
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }
}

/// Queues `EVALSHA` on a pipeline (fred's pipelines have no typed Lua
/// commands, so it goes out as a custom command), routed on a cluster to
/// the slot of its keys (one slot: the layout's rule). fred would hash the
/// first argument, the script's SHA.
async fn evalsha(
    pipe: &Pipeline<Client>,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<(), fred::error::Error> {
    let slot = keys.first().map(|k| key_slot(k)).unwrap_or(0);
    let keys = keys.into_iter().map(Value::from).collect();
    let args = args.into_iter().map(Value::from).collect();
    evalsha_values(pipe, script, slot, keys, args).await
}

/// `EVALSHA` routed to `slot`, the slot of every key it names.
async fn evalsha_values(
    pipe: &Pipeline<Client>,
    script: &Script,
    slot: u16,
    keys: Vec<Value>,
    args: Vec<Value>,
) -> Result<(), fred::error::Error> {
    let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.sha1().clone().into());
    all.push((keys.len() as i64).into());
    all.extend(keys);
    all.extend(args);
    let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
    pipe.custom::<(), _>(command, all).await
}

/// The arguments of one script call written into one buffer, each handed
/// out as a slice of it (`Bytes` share the buffer): one allocation for
/// all of a call's small arguments instead of one each.
struct Args {
    buf: BytesMut,
    num: String,
}

impl Args {
    fn with_capacity(n: usize) -> Self {
        Args {
            buf: BytesMut::with_capacity(n),
            num: String::with_capacity(24),
        }
    }

    /// Writes the start of the next argument.
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Ends the argument being written with `bytes`.
    fn value(&mut self, bytes: &[u8]) -> Value {
        self.buf.extend_from_slice(bytes);
        Value::Bytes(self.buf.split().freeze())
    }

    /// A double as `fmt_f64` writes it.
    fn f64(&mut self, v: f64) -> Value {
        self.num.clear();
        live::push_f64(&mut self.num, v);
        self.finish_num()
    }

    /// The hash's packed `loc` field of `l`.
    fn packed_location(&mut self, l: &Location) -> Value {
        self.num.clear();
        live::push_packed_location(&mut self.num, l);
        self.finish_num()
    }

    /// Ends the argument being written with the text in `num`.
    fn finish_num(&mut self) -> Value {
        self.buf.extend_from_slice(self.num.as_bytes());
        Value::Bytes(self.buf.split().freeze())
    }
}

/// Each partition's share of [`EVENT_LOG_MAXLEN`], so that all the logs
/// together keep about the window PROTOCOL.md §4 states (devices spread
/// evenly over partitions by the hash of their ids).
pub fn event_log_maxlen(partitions: u16) -> u64 {
    EVENT_LOG_MAXLEN.div_ceil(u64::from(partitions.max(1)))
}

/// A candidate epoch for a partition's event log: only used when the log
/// has none, so it needs to be unique, not secret.
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn deadletter_json(d: &DeadLetter) -> String {
    serde_json::json!({
        "topic": d.topic,
        "reason": d.reason,
        "received_at": d.received_at,
        "payload": d.payload,
    })
    .to_string()
}
