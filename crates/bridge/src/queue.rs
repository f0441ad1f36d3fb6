//! The bounded queue between the MQTT reader and the sinks.
//!
//! Four lanes, one lock, no `await` while it is held:
//!
//! - **live**: the newest pending location per device. A location for a
//!   device that already has one pending replaces it (`coalesced`): the live
//!   path is latest-wins. At `live_capacity` devices the oldest pending one
//!   is dropped from the live path (`live_dropped`). The lane is split in
//!   shards, one per live worker ([`Queue::with_live_shards`]), a device
//!   always in the same one (CRC-16 of its id): one worker writes all of a
//!   device's locations, one batch after the other, so they reach Redis
//!   in the order they were taken, and a push wakes only the worker whose
//!   shard it went to. Each shard holds its share of `live_capacity`.
//! - **reliable**: status, events and the acknowledgements of every QoS 1
//!   message, FIFO, so PUBACKs leave in the order the PUBLISHes came. Never
//!   dropped: a producer waits for room. The broker's inflight window
//!   bounds it in practice, since nothing is acknowledged before the sink
//!   has stored it.
//! - **history**: every accepted location, for the PostgreSQL batcher. The
//!   producer waits for room; the batcher drains it continuously (spilling
//!   to disk while PostgreSQL is down), so this only fills if the disk does.
//! - **deadletters**: rejected messages for the Redis dead-letter list; at
//!   capacity the oldest is dropped and counted. The list is promised
//!   newest first, so one live worker at a time holds dead letters: the
//!   next worker gets the rest only after [`Queue::deadletters_written`].
//!
//! Three consumers: the live sink reads live + deadletters (Redis only, so
//! locations never wait for a PostgreSQL commit), the reliable sink reads
//! reliable (PostgreSQL, then Redis, then acks), the batcher reads history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use fieldcast_core::partition::crc16;
use fieldcast_core::DeviceId;

use crate::metrics::{LaneLabel, Metrics};
use crate::record::{DeadLetter, LiveLocation, LocationRow, Reliable};

/// What the Redis sink takes in one go.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub reliable: Vec<Reliable>,
    pub locations: Vec<LiveLocation>,
    pub deadletters: Vec<DeadLetter>,
    /// The events are the bridge's own (geofence transitions, alerts), not
    /// heard from the devices: they do not move `last_seen`.
    pub derived: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.reliable.is_empty() && self.locations.is_empty() && self.deadletters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.reliable.len() + self.locations.len() + self.deadletters.len()
    }

    /// Two halves, each keeping its items' order (to find the item a store
    /// refuses by bisection).
    pub fn split(mut self) -> (Batch, Batch) {
        let mut other = Batch {
            derived: self.derived,
            ..Batch::default()
        };
        let n = self.len() / 2;
        // Take from the back of the batch: dead letters, then locations,
        // then reliable items, so the first half keeps the front.
        let mut take = n;
        let d = take.min(self.deadletters.len());
        other.deadletters = self.deadletters.split_off(self.deadletters.len() - d);
        take -= d;
        let l = take.min(self.locations.len());
        other.locations = self.locations.split_off(self.locations.len() - l);
        take -= l;
        let r = take.min(self.reliable.len());
        other.reliable = self.reliable.split_off(self.reliable.len() - r);
        (self, other)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub live: usize,
    pub reliable: usize,
    pub history: usize,
    pub deadletters: usize,
}

/// The newest pending location per device, oldest device first. Every
/// operation is O(1): replacing keeps the device's place, and taking or
/// evicting the oldest pops the front. (An `IndexMap` shifted every entry
/// on each removal from its front: 0.45 ms per push once 100 000 devices
/// were pending.)
#[derive(Default)]
struct LiveLane {
    order: VecDeque<DeviceId>,
    pending: HashMap<DeviceId, LiveLocation>,
}

impl LiveLane {
    fn len(&self) -> usize {
        self.pending.len()
    }

    fn pop_oldest(&mut self) -> Option<LiveLocation> {
        let device = self.order.pop_front()?;
        self.pending.remove(&device)
    }
}

#[derive(Default)]
struct Inner {
    /// One per live worker (at least one).
    live: Vec<LiveLane>,
    reliable: VecDeque<Reliable>,
    history: Vec<LocationRow>,
    deadletters: VecDeque<DeadLetter>,
    /// A live worker holds dead letters it has not written yet; another
    /// worker writing later ones first would reorder the list.
    deadletters_out: bool,
    closed: bool,
}

/// The bounded, backpressured queue between the source and the sinks, in
/// four lanes with their own overflow policy (module doc): live locations
/// coalesce per device and drop the oldest device when full, reliable items
/// and history rows make the producer wait (the source holds back instead
/// of blocking its MQTT loop), dead letters drop the oldest. One mutex over
/// all four, so a location enters the live and history lanes together.
pub struct Queue {
    inner: Mutex<Inner>,
    cap: Capacity,
    /// Wakes the live worker of each shard (its only waiter).
    live_wake: Vec<Notify>,
    /// Wakes the reliable sink (its only waiter).
    reliable_wake: Notify,
    /// Wakes the history batcher (its only waiter), once the history lane
    /// holds `history_wake_rows` rows: it wants whole batches (and takes
    /// the rest at its flush tick, [`Queue::take_history`]), and a wake
    /// per location was a task switch per location.
    history_wake: Notify,
    history_wake_rows: usize,
    /// Wakes producers waiting for room in reliable/history.
    room: Notify,
    metrics: Arc<Metrics>,
    /// `queue_depth` per lane, resolved once: a labelled look-up on every
    /// push and take was the queue's largest cost.
    depth: [Gauge; 4],
}

impl Queue {
    pub fn new(cap: Capacity, metrics: Arc<Metrics>) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                live: vec![LiveLane::default()],
                ..Inner::default()
            }),
            cap,
            live_wake: vec![Notify::new()],
            reliable_wake: Notify::new(),
            history_wake: Notify::new(),
            history_wake_rows: 1,
            room: Notify::new(),
            depth: ["live", "reliable", "history", "deadletters"].map(|lane| {
                metrics
                    .queue_depth
                    .get_or_create(&LaneLabel { lane })
                    .clone()
            }),
            metrics,
        }
    }

    /// Splits the live lane in `shards` (at least 1), one per live worker:
    /// worker `i` takes shard `i` ([`Queue::next_live`]). Dead letters go
    /// with shard 0.
    pub fn with_live_shards(mut self, shards: usize) -> Self {
        let shards = shards.max(1);
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.live = (0..shards).map(|_| LiveLane::default()).collect();
        self.live_wake = (0..shards).map(|_| Notify::new()).collect();
        self
    }

    /// The shard of `device`'s live locations.
    fn shard_of(&self, device: &DeviceId) -> usize {
        usize::from(crc16(device.as_str().as_bytes())) % self.live_wake.len()
    }

    /// Devices one shard holds before its oldest is dropped.
    fn shard_capacity(&self) -> usize {
        self.cap.live.div_ceil(self.live_wake.len()).max(1)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data (plain
        // collections) is still consistent, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauges(&self, g: &Inner) {
        let lens = [
            g.live.iter().map(LiveLane::len).sum(),
            g.reliable.len(),
            g.history.len(),
            g.deadletters.len(),
        ];
        for (gauge, n) in self.depth.iter().zip(lens) {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Queues an accepted location for history and the live path. Waits
    /// only while the history lane is full.
    pub async fn push_location(&self, mut row: LocationRow) {
        loop {
            let room = self.room.notified();
            match self.try_push_location(row) {
                Ok(()) => return,
                Err(back) => row = back,
            }
            room.await;
        }
    }

    /// Queues `row` for history and the live path; the live shard it went
    /// to.
    fn insert_location(&self, g: &mut Inner, row: LocationRow) -> usize {
        let live = LiveLocation {
            device: row.device.clone(),
            loc: row.loc.clone(),
            rx: row.received_at,
        };
        g.history.push(row);
        let shard = self.shard_of(&live.device);
        let cap = self.shard_capacity();
        let lane = &mut g.live[shard];
        match lane.pending.get_mut(&live.device) {
            Some(slot) => {
                // Latest wins, by the device's own clock; on a tie the first
                // accepted stays, as in Redis.
                if live.loc.ts > slot.loc.ts {
                    *slot = live;
                }
                self.metrics.coalesced.inc();
            }
            None => {
                if lane.len() >= cap {
                    lane.pop_oldest();
                    self.metrics.live_dropped.inc();
                }
                lane.order.push_back(live.device.clone());
                lane.pending.insert(live.device.clone(), live);
            }
        }
        self.gauges(g);
        shard
    }

    /// Queues a reliable item, waiting for room.
    pub async fn push_reliable(&self, mut item: Reliable) {
        loop {
            let room = self.room.notified();
            match self.try_push_reliable(item) {
                Ok(()) => return,
                Err(back) => item = back,
            }
            room.await;
        }
    }

    /// [`Self::push_location`] without waiting: `Err` gives the row back
    /// when the history lane is full.
    pub fn try_push_location(&self, row: LocationRow) -> Result<(), LocationRow> {
        let mut g = self.lock();
        if g.history.len() >= self.cap.history && !g.closed {
            return Err(row);
        }
        let shard = self.insert_location(&mut g, row);
        let batch_ready = g.history.len() >= self.history_wake_rows;
        drop(g);
        self.live_wake[shard].notify_one();
        if batch_ready {
            self.history_wake.notify_one();
        }
        Ok(())
    }

    /// [`Self::push_reliable`] without waiting: `Err` gives the item back
    /// when the lane is full.
    // The item comes back to be held, not an error to box: boxing would
    // cost an allocation per message on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn try_push_reliable(&self, item: Reliable) -> Result<(), Reliable> {
        let mut g = self.lock();
        if g.reliable.len() >= self.cap.reliable && !g.closed {
            return Err(item);
        }
        if item.ack().is_some() {
            self.metrics.acks_pending.inc();
        }
        g.reliable.push_back(item);
        self.gauges(&g);
        drop(g);
        self.reliable_wake.notify_one();
        Ok(())
    }

    /// Resolves when a consumer has made room in a lane. Registered as soon
    /// as it is created, so create it before the attempt that found no room.
    pub fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Queues a dead letter; at capacity the oldest one is dropped.
    pub fn push_deadletter(&self, dl: DeadLetter) {
        let mut g = self.lock();
        if g.deadletters.len() >= self.cap.deadletters {
            g.deadletters.pop_front();
            self.metrics.deadletter_dropped.inc();
        }
        g.deadletters.push_back(dl);
        self.gauges(&g);
        drop(g);
        self.live_wake[0].notify_one();
    }

    /// Takes up to `max` live locations of `shard` (and, for shard 0, dead
    /// letters), waiting while there are none. `None` once the queue is
    /// closed and they are drained. `shard` is taken modulo the number of
    /// shards.
    pub async fn next_live(&self, shard: usize, max: usize) -> Option<Batch> {
        let shard = shard % self.live_wake.len();
        self.next(max, &self.live_wake[shard], |g, b, max| {
            let lane = &mut g.live[shard];
            while b.locations.len() < max {
                let Some(l) = lane.pop_oldest() else { break };
                b.locations.push(l);
            }
            if shard == 0 && !g.deadletters_out && !g.deadletters.is_empty() {
                let n = g.deadletters.len().min(max.saturating_sub(b.len()).max(1));
                b.deadletters.extend(g.deadletters.drain(..n));
                g.deadletters_out = true;
            }
        })
        .await
    }

    /// The dead letters of a batch from [`Queue::next_live`] are written (or
    /// given up on): the next worker may take the ones after them.
    pub fn deadletters_written(&self) {
        self.lock().deadletters_out = false;
        self.live_wake[0].notify_one();
    }

    /// Takes up to `max` reliable items, in order, waiting while there are
    /// none. `None` once the queue is closed and they are drained.
    pub async fn next_reliable(&self, max: usize) -> Option<Batch> {
        self.next(max, &self.reliable_wake, |g, b, max| {
            let n = g.reliable.len().min(max);
            b.reliable.extend(g.reliable.drain(..n));
        })
        .await
    }

    async fn next(
        &self,
        max: usize,
        wake: &Notify,
        take: impl Fn(&mut Inner, &mut Batch, usize),
    ) -> Option<Batch> {
        loop {
            let woken = wake.notified();
            {
                let mut g = self.lock();
                let mut b = Batch::default();
                take(&mut g, &mut b, max);
                if !b.is_empty() {
                    self.gauges(&g);
                    drop(g);
                    self.room.notify_waiters();
                    // No wake passed on: each lane (each live shard) has
                    // one worker, which looks again before it waits.
                    return Some(b);
                }
                if g.closed {
                    return None;
                }
            }
            woken.await;
        }
    }

    /// Wakes the history batcher only once `rows` history rows are pending
    /// (default 1: at every row). At most half the history lane, so the
    /// source never waits for room the batcher was not woken to make.
    pub fn wake_history_at(mut self, rows: usize) -> Self {
        self.history_wake_rows = rows.clamp(1, (self.cap.history / 2).max(1));
        self
    }

    /// Takes up to `max` pending history rows without waiting (the
    /// batcher's flush tick: what is below the wake threshold).
    pub fn take_history(&self, max: usize) -> Vec<LocationRow> {
        let g = self.lock();
        if g.history.is_empty() {
            return Vec::new();
        }
        self.take_history_locked(g, max)
    }

    /// Up to `max` history rows out of the lane, and room made.
    fn take_history_locked(&self, mut g: MutexGuard<'_, Inner>, max: usize) -> Vec<LocationRow> {
        let rows = if g.history.len() <= max {
            std::mem::take(&mut g.history)
        } else {
            g.history.drain(..max).collect()
        };
        self.gauges(&g);
        drop(g);
        self.room.notify_waiters();
        rows
    }

    /// Takes every pending history row (at most `max`), waiting while
    /// fewer than the wake threshold are pending (closed: while none are).
    /// `None` once closed and drained.
    pub async fn next_history(&self, max: usize) -> Option<Vec<LocationRow>> {
        loop {
            let wake = self.history_wake.notified();
            {
                let g = self.lock();
                let pending = g.history.len();
                if pending > 0 && (pending >= self.history_wake_rows || g.closed) {
                    return Some(self.take_history_locked(g, max));
                }
                if g.closed {
                    return None;
                }
            }
            wake.await;
        }
    }

    /// No more input: consumers drain what is left and then get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        for wake in
            self.live_wake
                .iter()
                .chain([&self.reliable_wake, &self.history_wake, &self.room])
        {
            wake.notify_waiters();
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ack::AckToken;

    fn q(live: usize, reliable: usize) -> Queue {
        Queue::new(
            Capacity {
                live,
                reliable,
                history: 100,
                deadletters: 2,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn row(dev: &str, ts: i64) -> LocationRow {
        LocationRow::at(dev, ts)
    }

    #[tokio::test]
    async fn live_coalesces_per_device_but_history_keeps_all() {
        let q = q(10, 10);
        for ts in [1, 3, 2] {
            q.push_location(row("a", ts)).await;
        }
        let mut same_ts = row("a", 3);
        same_ts.loc.lat = 9.0;
        q.push_location(same_ts).await;
        q.push_location(row("b", 1)).await;
        let b = q.next_live(0, 100).await.unwrap();
        let got: Vec<_> = b
            .locations
            .iter()
            .map(|l| (l.device.as_str().to_owned(), l.loc.ts))
            .collect();
        assert_eq!(got, vec![("a".to_owned(), 3), ("b".to_owned(), 1)]);
        assert_eq!(
            b.locations[0].loc.lat, 1.0,
            "a tie keeps the first accepted"
        );
        assert_eq!(q.metrics.coalesced.get(), 3);
        let h = q.next_history(100).await.unwrap();
        assert_eq!(
            h.iter().map(|r| r.loc.ts).collect::<Vec<_>>(),
            vec![1, 3, 2, 3, 1]
        );
    }

    /// With a wake threshold the batcher sleeps until a batch is pending;
    /// what is below it is taken at the flush tick, and at close.
    #[tokio::test]
    async fn history_wakes_the_batcher_for_a_whole_batch_only() {
        let q = Arc::new(q(10, 10).wake_history_at(3));
        q.push_location(row("a", 1)).await;
        q.push_location(row("a", 2)).await;
        let early = tokio::time::timeout(Duration::from_millis(50), q.next_history(100)).await;
        assert!(early.is_err(), "woken below the threshold");
        assert_eq!(q.take_history(1).len(), 1, "the tick takes what is there");
        let q2 = q.clone();
        let batcher = tokio::spawn(async move { q2.next_history(100).await });
        q.push_location(row("a", 3)).await;
        tokio::task::yield_now().await;
        assert!(!batcher.is_finished(), "woken with 2 rows pending");
        q.push_location(row("a", 4)).await;
        let rows = tokio::time::timeout(Duration::from_secs(5), batcher)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.loc.ts).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        q.push_location(row("a", 6)).await;
        q.close();
        assert_eq!(q.next_history(100).await.map(|r| r.len()), Some(1));
        assert!(q.next_history(100).await.is_none());
    }

    #[tokio::test]
    async fn full_live_lane_drops_oldest_device() {
        let q = q(2, 10);
        for d in ["a", "b", "c"] {
            q.push_location(row(d, 1)).await;
        }
        let b = q.next_live(0, 100).await.unwrap();
        let devs: Vec<_> = b.locations.iter().map(|l| l.device.as_str()).collect();
        assert_eq!(devs, vec!["b", "c"]);
        assert_eq!(q.metrics.live_dropped.get(), 1);
    }

    #[tokio::test]
    async fn reliable_is_fifo_and_waits_for_room() {
        let q = Arc::new(q(10, 2));
        for pkid in 1..=2 {
            q.push_reliable(Reliable::AckOnly(AckToken::Mqtt { pkid }))
                .await;
        }
        let q2 = q.clone();
        let producer = tokio::spawn(async move {
            q2.push_reliable(Reliable::AckOnly(AckToken::Mqtt { pkid: 3 }))
                .await;
        });
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        let b = q.next_reliable(1).await.unwrap();
        assert_eq!(b.reliable[0].ack(), Some(&AckToken::Mqtt { pkid: 1 }));
        producer.await.unwrap();
        let b = q.next_reliable(10).await.unwrap();
        let acks: Vec<_> = b.reliable.iter().filter_map(|r| r.ack().cloned()).collect();
        assert_eq!(
            acks,
            vec![AckToken::Mqtt { pkid: 2 }, AckToken::Mqtt { pkid: 3 }]
        );
    }

    /// Pins the sharded live lane: with a worker per shard, each taking a
    /// batch and writing it in its own time, every device's locations are
    /// taken by one worker and written in increasing `ts`, and its newest
    /// one is written last; dead letters come only with shard 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_device_stays_on_one_worker_and_its_locations_in_order() {
        const SHARDS: usize = 4;
        let cap = Capacity {
            live: 10_000,
            reliable: 10,
            // Every row of the run: nothing drains history here.
            history: 10_000,
            deadletters: 10,
        };
        let q = Arc::new(Queue::new(cap, Arc::new(Metrics::new())).with_live_shards(SHARDS));
        let written = Arc::new(Mutex::new(Vec::<(usize, String, i64)>::new()));
        let workers: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let (q, written) = (q.clone(), written.clone());
                tokio::spawn(async move {
                    let mut dead = 0;
                    while let Some(b) = q.next_live(shard, 7).await {
                        dead += b.deadletters.len();
                        // A write of its own length, as Redis takes.
                        let pause = rand::random::<u64>() % 1_500;
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                        let mut w = written.lock().unwrap();
                        for l in &b.locations {
                            w.push((shard, l.device.to_string(), l.loc.ts));
                        }
                        drop(w);
                        if !b.deadletters.is_empty() {
                            q.deadletters_written();
                        }
                    }
                    (shard, dead)
                })
            })
            .collect();
        for ts in 1..=60 {
            for d in 0..40 {
                q.push_location(row(&format!("dev-{d}"), ts)).await;
            }
            if ts % 10 == 0 {
                q.push_deadletter(DeadLetter::new("t", "bad_json", ts, b"x"));
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        q.close();
        for w in workers {
            let (shard, dead) = w.await.unwrap();
            if shard != 0 {
                assert_eq!(dead, 0, "dead letters on shard {shard}");
            }
        }
        let written = written.lock().unwrap();
        let mut per_device: HashMap<&str, (usize, i64)> = HashMap::new();
        for (shard, device, ts) in written.iter() {
            match per_device.get_mut(device.as_str()) {
                Some((s, last)) => {
                    assert_eq!(s, shard, "{device} on two workers");
                    assert!(ts > last, "{device}: {ts} written after {last}");
                    *last = *ts;
                }
                None => {
                    per_device.insert(device, (*shard, *ts));
                }
            }
        }
        assert_eq!(per_device.len(), 40);
        assert!(per_device.values().all(|&(_, last)| last == 60));
        let shards: std::collections::HashSet<usize> =
            per_device.values().map(|&(s, _)| s).collect();
        assert_eq!(shards.len(), SHARDS, "40 devices spread over every shard");
    }

    /// The CI failure this pins: two live workers each took dead letters
    /// and the later ones reached the list first.
    #[tokio::test(start_paused = true)]
    async fn one_worker_at_a_time_holds_dead_letters() {
        let q = q(10, 10);
        for i in 0..2 {
            q.push_deadletter(DeadLetter::new("t", "bad_json", i, b"x"));
        }
        let first = q.next_live(0, 1).await.unwrap();
        assert_eq!(first.deadletters.len(), 1);
        q.push_location(row("a", 1)).await;
        let second = q.next_live(0, 2).await.unwrap();
        assert!(
            second.deadletters.is_empty(),
            "taken while the first are out"
        );
        assert_eq!(second.locations.len(), 1);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_secs(1), q.next_live(0, 2)).await;
        assert!(
            waiting.is_err(),
            "nothing else to take until they are written"
        );
        q.deadletters_written();
        let third = q.next_live(0, 2).await.unwrap();
        let at: Vec<i64> = third.deadletters.iter().map(|d| d.received_at).collect();
        assert_eq!(at, vec![1]);
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_and_close_drains() {
        let q = q(10, 10);
        for i in 0..3 {
            q.push_deadletter(DeadLetter::new("t", "bad_json", i, b"x"));
        }
        assert_eq!(q.metrics.deadletter_dropped.get(), 1);
        q.close();
        let b = q.next_live(0, 10).await.unwrap();
        assert_eq!(b.deadletters.len(), 2);
        assert!(q.next_live(0, 10).await.is_none());
        assert!(q.next_reliable(10).await.is_none());
        assert!(q.next_history(10).await.is_none());
    }

    #[test]
    fn dead_letter_payload_is_cut_and_lossy() {
        let mut p = vec![0xffu8];
        p.extend(std::iter::repeat_n(b'a', 2000));
        let dl = DeadLetter::new("t", "bad_utf8", 1, &p);
        assert!(dl.payload.starts_with('\u{fffd}'));
        assert_eq!(dl.payload.chars().count(), 1024);
    }
}
