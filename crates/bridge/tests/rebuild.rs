//! `fieldcast-bridge rebuild-redis` (docs/redis-rebuild.md) against the
//! real PostgreSQL and Redis: each test with its own database (the bridge's
//! schema) and key prefix, one on a private 3-primary Redis Cluster.
//!
//! The yardstick is the live write path: a fleet's history is also applied
//! message by message, in time order, through the bridge's `RedisSink`
//! under a second prefix, and the rebuilt hot state must equal it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fred::prelude::*;
use fred::types::config::Config as RedisConfig;
use fred::types::geo::GeoValue;
use fred::types::{CustomCommand, Value};
use tokio_util::sync::CancellationToken;

use fieldcast_bridge::metrics::Metrics;
use fieldcast_bridge::queue::Batch;
use fieldcast_bridge::rebuild::{self, RebuildArgs, Report, SourceKind};
use fieldcast_bridge::record::{LiveLocation, Reliable};
use fieldcast_bridge::store::redis::RedisSink;
use fieldcast_core::geo::index_cell;
use fieldcast_core::live::add_location_fields;
use fieldcast_core::partition::key_slot;
use fieldcast_core::time::now_ms;
use fieldcast_core::{DeviceId, Keys, Location, Partitions, Status, Topology};
use fieldcast_service::StoreArgs;
use fieldcast_testkit::{shared_redis_url, unique, PgDb, PrefixGuard, RedisCluster};

const BIN: &str = env!("CARGO_BIN_EXE_fieldcast-bridge");
/// Small, so that every fleet below spans several pages of the sources.
const BATCH: u32 = 5;

/// An hour ago: inside the partitions the bridge's schema creates.
fn t0() -> i64 {
    now_ms() - 3_600_000
}

/// One history row, as a device sent it.
#[derive(Debug, Clone)]
enum Row {
    Loc(String, Location),
    Sts(String, Status),
}

impl Row {
    fn loc(device: &str, l: Location) -> Row {
        Row::Loc(device.to_owned(), l)
    }

    fn sts(device: &str, s: Status) -> Row {
        Row::Sts(device.to_owned(), s)
    }

    fn ts(&self) -> i64 {
        match self {
            Row::Loc(_, l) => l.ts,
            Row::Sts(_, s) => s.ts,
        }
    }

    fn device(&self) -> &str {
        match self {
            Row::Loc(d, _) | Row::Sts(d, _) => d,
        }
    }
}

fn loc(ts: i64, lat: f64, lon: f64) -> Location {
    Location::point(ts, lat, lon)
}

fn sts(ts: i64, online: bool, battery: Option<f64>, signal: Option<f64>) -> Status {
    Status {
        ts,
        device_ts: true,
        online,
        battery,
        signal,
    }
}

/// A fleet's history, rows deliberately not in time order: devices with
/// several locations and statuses whose optional fields come and go, one
/// with locations only (newest beyond Redis geo's latitude range), one
/// with statuses only, and 20 more spread over the partitions.
fn fleet(t: i64) -> Vec<Row> {
    let mut rows = vec![
        Row::loc(
            "truck-1",
            Location {
                speed: Some(12.5),
                heading: Some(270.0),
                ..loc(t + 3_000, 51.507351, -0.127758)
            },
        ),
        Row::loc(
            "truck-1",
            Location {
                alt: Some(35.0),
                accuracy: Some(4.0),
                ..loc(t + 1_000, 51.5, -0.12)
            },
        ),
        Row::loc("truck-1", loc(t + 2_000, 51.501, -0.121)),
        Row::sts("truck-1", sts(t + 2_500, true, None, Some(-71.0))),
        Row::sts("truck-1", sts(t + 500, true, Some(80.0), Some(-90.0))),
        Row::sts("truck-1", sts(t + 1_500, false, Some(64.5), None)),
        Row::loc("truck-2", loc(t + 4_000, 89.5, 10.0)),
        Row::loc("truck-2", loc(t + 100, 45.0, 9.0)),
        Row::sts("van.3", sts(t + 7_000, false, Some(12.0), None)),
        Row::sts("van.3", sts(t + 6_000, true, Some(13.0), Some(-60.0))),
        Row::loc("drone_4", loc(t + 9_000, -33.9, 151.2)),
        Row::sts("drone_4", sts(t + 8_000, true, Some(99.0), Some(-50.0))),
    ];
    for i in 0..20 {
        let id = &format!("f-{i}");
        let (lat, lon) = (40.0 + f64::from(i) / 10.0, 2.0 + f64::from(i) / 7.0);
        for k in [2, 0, 1] {
            rows.push(Row::loc(
                id,
                loc(t + 100 * k + i64::from(i), lat + k as f64, lon),
            ));
        }
        rows.push(Row::sts(
            id,
            sts(t + 50, i % 2 == 0, Some(f64::from(i)), None),
        ));
        rows.push(Row::sts(id, sts(t + 250, true, None, Some(-f64::from(i)))));
    }
    rows
}

fn ids(rows: &[Row]) -> BTreeSet<String> {
    rows.iter().map(|r| r.device().to_owned()).collect()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// A test's stores: its own database with the bridge's schema, its own
/// prefix (deleted at the end on the shared Redis), a partition count.
struct World {
    db: Arc<PgDb>,
    pg: tokio_postgres::Client,
    prefix: String,
    redis_url: String,
    redis: Client,
    partitions: u16,
    _keys: Option<PrefixGuard>,
}

impl World {
    async fn new(redis_url: &str, partitions: u16) -> World {
        fieldcast_testkit::init_tracing();
        let db = PgDb::create().await.unwrap();
        let mut pg = db.client().await.unwrap();
        fieldcast_bridge::store::schema::prepare(&mut pg, Duration::from_secs(90 * 86_400))
            .await
            .unwrap();
        World::on(Arc::new(db), pg, redis_url, partitions).await
    }

    /// Another prefix on the same Redis and database, for the live path's
    /// yardstick.
    async fn beside(&self) -> World {
        let pg = self.db.client().await.unwrap();
        World::on(self.db.clone(), pg, &self.redis_url, self.partitions).await
    }

    async fn on(
        db: Arc<PgDb>,
        pg: tokio_postgres::Client,
        redis_url: &str,
        partitions: u16,
    ) -> World {
        let prefix = format!("{}:", unique("rb"));
        World {
            _keys: (redis_url == shared_redis_url()).then(|| PrefixGuard::new(redis_url, &prefix)),
            db,
            pg,
            prefix,
            redis_url: redis_url.to_owned(),
            redis: redis_client(redis_url).await,
            partitions,
        }
    }

    fn keys(&self) -> Keys {
        Keys::new(
            &self.prefix,
            Partitions::new(u64::from(self.partitions)).unwrap(),
            Topology::of_url(&self.redis_url),
        )
    }

    fn args(&self, from: SourceKind, delete_old: bool) -> RebuildArgs {
        let mut store = StoreArgs::new(&self.redis_url, &self.prefix, &self.db.url);
        store.redis_partitions = self.partitions;
        RebuildArgs {
            store,
            from,
            delete_old,
            batch: BATCH,
        }
    }

    async fn rebuild(&self, from: SourceKind, delete_old: bool) -> Report {
        rebuild::run(&self.args(from, delete_old), &CancellationToken::new())
            .await
            .expect("rebuild runs to the end")
    }

    async fn insert(&self, rows: &[Row]) {
        for r in rows {
            match r {
                Row::Loc(d, l) => {
                    self.pg
                        .execute(
                            "INSERT INTO locations VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $2)",
                            &[
                                d,
                                &at(l.ts),
                                &l.lat,
                                &l.lon,
                                &l.alt,
                                &l.speed,
                                &l.heading,
                                &l.accuracy,
                            ],
                        )
                        .await
                        .unwrap();
                }
                Row::Sts(d, s) => {
                    self.pg
                        .execute(
                            "INSERT INTO device_status VALUES ($1, $2, $3, $4, $5, $2)",
                            &[d, &at(s.ts), &s.online, &s.battery, &s.signal],
                        )
                        .await
                        .unwrap();
                }
            }
        }
    }

    /// The bridge's writer of this world's layout.
    fn sink(&self) -> RedisSink {
        RedisSink::new(self.redis.clone(), self.keys())
    }

    /// `rows` through the live write path, one message at a time in time
    /// order, as a bridge receiving them would apply them.
    async fn live_write(&self, rows: &[Row]) {
        let (sink, metrics) = (self.sink(), Metrics::new());
        let mut rows = rows.to_vec();
        rows.sort_by_key(Row::ts);
        for r in rows {
            let device = DeviceId::parse(r.device()).unwrap();
            let mut batch = Batch::default();
            match r {
                Row::Loc(_, loc) => batch.locations.push(LiveLocation { device, loc, rx: 1 }),
                Row::Sts(_, status) => batch.reliable.push(Reliable::Status {
                    device,
                    status,
                    rx: 1,
                    ack: None,
                }),
            }
            sink.apply(&batch, &metrics).await.unwrap();
        }
    }

    /// The device's hash field by field as the old keys laid it out: the
    /// packed `loc` read into its fields, without `loc` and the geo cell.
    async fn state_as_old_keys(&self, device: &str) -> HashMap<String, String> {
        let mut h = self.state(device).await;
        assert!(
            h.remove("gc").is_some() == h.remove("loc").is_some(),
            "{h:?}"
        );
        h
    }

    async fn state(&self, device: &str) -> HashMap<String, String> {
        let mut h = self
            .redis
            .hgetall(self.keys().device(device))
            .await
            .unwrap();
        add_location_fields(&mut h);
        h
    }

    /// Every partition's device set, geo set and device hashes, as text:
    /// the whole hot state, to compare before and after.
    async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for part in self.keys().all() {
            let ids: BTreeSet<String> = self.redis.smembers(&part.devices).await.unwrap();
            let geo: Value = self
                .redis
                .zrange(&part.geo, 0, -1, None, false, None, true)
                .await
                .unwrap();
            for id in &ids {
                let hash: BTreeMap<String, String> =
                    self.redis.hgetall(self.keys().device(id)).await.unwrap();
                all.insert(self.keys().device(id), format!("{hash:?}"));
            }
            if !ids.is_empty() {
                all.insert(part.devices.clone(), format!("{ids:?}"));
                all.insert(part.geo.clone(), format!("{geo:?}"));
            }
        }
        all
    }

    /// The devices of every partition's set, and the partition each is in.
    async fn members(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for part in self.keys().all() {
            let ids: Vec<String> = self.redis.smembers(&part.devices).await.unwrap();
            for id in ids {
                assert!(all.insert(id, part.devices.clone()).is_none());
            }
        }
        all
    }

    /// The device's (lon, lat) in its partition's geo set.
    async fn geopos(&self, device: &str) -> Option<(f64, f64)> {
        let keys = self.keys();
        let (_, part) = keys.of(device);
        let v: Value = self.redis.geopos(&part.geo, device).await.unwrap();
        let Value::Array(outer) = v else {
            return None;
        };
        let pair = match outer.first() {
            Some(Value::Array(p)) => p.clone(),
            Some(Value::Null) | None => return None,
            Some(_) => outer,
        };
        match &pair[..] {
            [lon, lat] => Some((lon.clone().convert().ok()?, lat.clone().convert().ok()?)),
            _ => None,
        }
    }

    /// Every key under this world's prefix (one Redis).
    async fn keys_under_prefix(&self) -> BTreeSet<String> {
        let pattern = format!("{}*", self.prefix);
        let (mut cursor, mut all) = ("0".to_owned(), BTreeSet::new());
        loop {
            let page: Value = self
                .redis
                .custom(
                    CustomCommand::new_static("SCAN", None, false),
                    vec![cursor.as_str(), "MATCH", &pattern, "COUNT", "1000"],
                )
                .await
                .unwrap();
            let (next, keys): (String, Vec<String>) = page.convert().unwrap();
            all.extend(keys);
            if next == "0" {
                return all;
            }
            cursor = next;
        }
    }

    fn old(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A device hash of the layout before partitions, with its set and geo
    /// entries, as the old bridge wrote them.
    async fn old_device(&self, id: &str, fields: &[(&str, &str)]) {
        let _: () = self
            .redis
            .hset(self.old(&format!("dev:{id}")), fields.to_vec())
            .await
            .unwrap();
        let _: () = self.redis.sadd(self.old("devices"), id).await.unwrap();
        let f: HashMap<&str, &str> = fields.iter().copied().collect();
        let pos = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
        if let (Some(lat), Some(lon)) = (pos("lat"), pos("lon")) {
            let lat = lat.clamp(-85.05112878, 85.05112878);
            let _: () = self
                .redis
                .geoadd(
                    self.old("geo"),
                    None,
                    false,
                    GeoValue::try_from((lon, lat, id)).unwrap(),
                )
                .await
                .unwrap();
        }
    }

    async fn exists(&self, key: &str) -> bool {
        self.redis.exists::<i64, _>(key).await.unwrap() == 1
    }
}

async fn redis_client(url: &str) -> Client {
    let c = Builder::from_config(RedisConfig::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The command line, end to end: the binary with the bridge's environment
/// variables rebuilds a fleet from PostgreSQL, and every device's hash,
/// partition set and geo entry equals what the live write path made of the
/// same messages; nothing else is written (no event log, no old key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_postgres_the_command_writes_what_the_live_bridge_wrote() {
    let w = World::new(&shared_redis_url(), 8).await;
    let t = t0();
    let rows = fleet(t);
    w.insert(&rows).await;
    let live = w.beside().await;
    live.live_write(&rows).await;

    let out = tokio::process::Command::new(BIN)
        .args(["rebuild-redis", "--from", "postgres", "--batch", "5"])
        .env("FIELDCAST_REDIS_URL", &w.redis_url)
        .env("FIELDCAST_REDIS_PREFIX", &w.prefix)
        .env("FIELDCAST_REDIS_PARTITIONS", "8")
        .env("FIELDCAST_DATABASE_URL", &w.db.url)
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = ids(&rows).len();
    assert!(
        stdout.contains(&format!("{n} devices: {n} written, 0 skipped, 0 failed")),
        "{stdout}"
    );

    for id in ids(&rows) {
        assert_eq!(w.state(&id).await, live.state(&id).await, "{id}");
        assert_eq!(w.geopos(&id).await, live.geopos(&id).await, "{id}");
    }
    let members = w.members().await;
    assert_eq!(members.keys().cloned().collect::<BTreeSet<_>>(), ids(&rows));
    let partitions = Partitions::new(8).unwrap();
    for (id, set) in &members {
        assert_eq!(
            *set,
            format!("{}{{{}}}:devices", w.prefix, partitions.of(id))
        );
    }

    // The newest location and status, field by field: battery from the
    // newest status that reported one; alt and accuracy of an older
    // location gone.
    let p = partitions.of("truck-1");
    // The hash exactly as it is laid out (docs/redis-layout.md).
    let truck: HashMap<String, String> = w
        .redis
        .hgetall(format!("{}{{{p}}}:dev:truck-1", w.prefix))
        .await
        .unwrap();
    assert_eq!(
        truck,
        fields(&[
            ("ts", &(t + 3_000).to_string()),
            ("loc", "51.507351,-0.127758,,12.5,270,"),
            ("gc", &index_cell(51.507351, -0.127758).to_string()),
            ("sts", &(t + 2_500).to_string()),
            ("online", "1"),
            ("battery", "64.5"),
            ("signal", "-71"),
            ("last_seen", &(t + 3_000).to_string()),
        ])
    );
    assert_eq!(w.state("van.3").await.get("ts"), None, "statuses only");
    assert_eq!(
        w.state("truck-2").await.get("lat").map(String::as_str),
        Some("89.5")
    );
    let (_, lat) = w.geopos("truck-2").await.unwrap();
    assert!(
        (lat - 85.05112878).abs() < 1e-6,
        "geo clamps the pole: {lat}"
    );

    let layout: BTreeSet<String> = w
        .keys()
        .all()
        .iter()
        .flat_map(|p| [p.devices.clone(), p.geo.clone()])
        .chain(ids(&rows).iter().map(|id| w.keys().device(id)))
        .collect();
    let written = w.keys_under_prefix().await;
    assert!(
        written.is_subset(&layout),
        "only the hot state: {:?}",
        written.difference(&layout).collect::<Vec<_>>()
    );
}

/// A second run, from either source, finds everything in place: nothing
/// written, every device skipped, the hot state unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_the_rebuild_changes_nothing() {
    let w = World::new(&shared_redis_url(), 64).await;
    let rows = fleet(t0());
    w.insert(&rows).await;
    let n = ids(&rows).len() as u64;

    let first = w.rebuild(SourceKind::Postgres, false).await;
    assert_eq!((first.devices, first.written, first.failed), (n, n, 0));
    let before = w.snapshot().await;
    assert_eq!(w.members().await.len() as u64, n);

    let again = w.rebuild(SourceKind::Postgres, false).await;
    assert_eq!(
        again,
        Report {
            devices: n,
            skipped: n,
            ..Report::default()
        }
    );
    assert_eq!(w.snapshot().await, before);
}

/// The old layout's hashes move with every field (the scripts set
/// `last_seen` again; `swill` stays behind). With `--delete-old` and one
/// malformed hash, nothing old is deleted; once it is fixed, a second run
/// copies it and deletes every old key, and the dead-letter list (the same
/// key in both layouts) stays. A third run has nothing left to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_old_keys_fields_are_kept_and_old_keys_go_only_after_success() {
    let w = World::new(&shared_redis_url(), 64).await;
    let t = t0();
    let (ts, sts) = ((t + 1_000).to_string(), (t + 2_000).to_string());
    let full = [
        ("ts", ts.as_str()),
        ("lat", "48.8566"),
        ("lon", "2.3522"),
        ("alt", "35.5"),
        ("speed", "3.25"),
        ("heading", "90"),
        ("accuracy", "4"),
        ("sts", sts.as_str()),
        ("online", "1"),
        ("battery", "77.5"),
        ("signal", "-67"),
        ("last_seen", sts.as_str()),
    ];
    w.old_device("full-1", &full).await;
    let willed = [
        ("ts", sts.as_str()),
        ("lat", "-12.5"),
        ("lon", "130.25"),
        ("sts", ts.as_str()),
        ("online", "0"),
        ("swill", ts.as_str()),
        ("last_seen", sts.as_str()),
    ];
    w.old_device("will.2", &willed).await;
    w.old_device(
        "status_3",
        &[("sts", &ts), ("online", "1"), ("last_seen", &ts)],
    )
    .await;
    for i in 0..8 {
        let (lat, lon) = (format!("{}.5", 10 + i), format!("{}.25", 20 + i));
        w.old_device(
            &format!("more-{i}"),
            &[
                ("ts", &ts),
                ("lat", &lat),
                ("lon", &lon),
                ("last_seen", &ts),
            ],
        )
        .await;
    }
    let malformed = [
        ("ts", ts.as_str()),
        ("lat", "north"),
        ("lon", "2"),
        ("last_seen", ts.as_str()),
    ];
    w.old_device("bad-9", &malformed).await;
    let _: () = w.redis.sadd(w.old("devices"), "ghost").await.unwrap();
    let _: () = w
        .redis
        .set(w.old("events:epoch"), "00000000000000aa", None, None, false)
        .await
        .unwrap();
    let _: Value = w
        .redis
        .custom(
            CustomCommand::new_static("XADD", None, false),
            vec![
                w.old("events"),
                "*".into(),
                "d".into(),
                "full-1".into(),
                "j".into(),
                "{}".into(),
            ],
        )
        .await
        .unwrap();
    let _: () = w.redis.lpush(w.old("deadletter"), "{}").await.unwrap();
    let old_keys = w.keys_under_prefix().await;

    let r = w.rebuild(SourceKind::OldKeys, true).await;
    assert_eq!(
        (r.devices, r.written, r.skipped, r.failed),
        (13, 11, 1, 1),
        "{r:?}"
    );
    assert!(!r.complete());
    assert_eq!((r.old_deleted, r.old_kept), (0, 13));
    assert!(
        old_keys.is_subset(&w.keys_under_prefix().await),
        "a failure deletes nothing old"
    );
    assert_eq!(w.state_as_old_keys("full-1").await, fields(&full));
    let mut moved = fields(&willed);
    moved.remove("swill");
    assert_eq!(w.state_as_old_keys("will.2").await, moved);
    assert_eq!(
        w.state("more-3").await.get("lat").map(String::as_str),
        Some("13.5")
    );
    assert!(w.state("bad-9").await.is_empty());

    let _: () = w
        .redis
        .hset(w.old("dev:bad-9"), ("lat", "12.75"))
        .await
        .unwrap();
    let r = w.rebuild(SourceKind::OldKeys, true).await;
    assert_eq!(
        (r.devices, r.written, r.skipped, r.failed),
        (13, 1, 12, 0),
        "{r:?}"
    );
    assert!(r.complete());
    assert_eq!((r.old_deleted, r.old_kept), (12, 0));
    assert_eq!(
        w.state("bad-9").await.get("lat").map(String::as_str),
        Some("12.75")
    );
    let left = w.keys_under_prefix().await;
    for old in [
        "devices",
        "geo",
        "events",
        "events:epoch",
        "dev:full-1",
        "dev:bad-9",
    ] {
        assert!(!left.contains(&w.old(old)), "{old} deleted");
    }
    assert!(w.exists(&w.old("deadletter")).await, "not an old key");
    assert_eq!(
        w.members().await.len(),
        12,
        "every real device, in its partition"
    );

    let before = w.snapshot().await;
    assert_eq!(
        w.rebuild(SourceKind::OldKeys, true).await,
        Report::default()
    );
    assert_eq!(w.snapshot().await, before);
}

/// A hot state already further than the source, as a running bridge
/// leaves it, is not taken back: an older location or status is skipped,
/// whichever source brings it; a newer part of the same device is still
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_hot_state_is_not_overwritten_by_an_older_source() {
    let w = World::new(&shared_redis_url(), 64).await;
    let t = t0();
    w.insert(&[
        Row::loc("ahead", loc(t, 1.0, 1.0)),
        Row::sts("ahead", sts(t, true, Some(50.0), None)),
        Row::loc("half", loc(t, 2.0, 2.0)),
        Row::sts("half", sts(t + 10, false, Some(40.0), None)),
        Row::loc("behind", loc(t, 3.0, 3.0)),
    ])
    .await;
    w.live_write(&[
        Row::loc("ahead", loc(t + 60_000, 9.0, 9.0)),
        Row::sts("ahead", sts(t + 60_000, false, Some(10.0), Some(-80.0))),
        Row::loc("half", loc(t + 60_000, 8.0, 8.0)),
        Row::sts("half", sts(t - 60_000, true, Some(90.0), None)),
    ])
    .await;
    let ahead = w.state("ahead").await;
    let ahead_pos = w.geopos("ahead").await;

    let r = w.rebuild(SourceKind::Postgres, false).await;
    assert_eq!(
        (r.devices, r.written, r.skipped, r.failed),
        (3, 2, 1, 0),
        "{r:?}"
    );
    assert_eq!(w.state("ahead").await, ahead);
    assert_eq!(w.geopos("ahead").await, ahead_pos);
    let half = w.state("half").await;
    assert_eq!(half["ts"], (t + 60_000).to_string(), "newer location kept");
    assert_eq!(half["lat"], "8");
    assert_eq!(half["sts"], (t + 10).to_string(), "older status replaced");
    assert_eq!(
        (half["online"].as_str(), half["battery"].as_str()),
        ("0", "40")
    );
    assert_eq!(w.state("behind").await["ts"], t.to_string());

    let (older, older_sts) = ((t + 1).to_string(), (t + 2).to_string());
    w.old_device(
        "ahead",
        &[
            ("ts", &older),
            ("lat", "5"),
            ("lon", "5"),
            ("sts", &older_sts),
            ("online", "1"),
        ],
    )
    .await;
    let r = w.rebuild(SourceKind::OldKeys, false).await;
    assert_eq!((r.devices, r.written, r.skipped), (1, 0, 1), "{r:?}");
    assert_eq!(w.state("ahead").await, ahead);
}

/// On a 3-primary Redis Cluster: a fleet spread over every primary is
/// rebuilt from PostgreSQL into its partitions' slots, and old-layout
/// hashes (each in a slot of its own) are moved and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_on_a_three_primary_cluster() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let w = World::new(cluster.url(), 64).await;
    let t = t0();
    let ids: Vec<String> = (0..48).map(|i| format!("c-{i}")).collect();
    let mut primaries = BTreeSet::new();
    for id in &ids {
        primaries.insert(
            cluster
                .primary_for_slot(key_slot(&w.keys().device(id)))
                .await
                .unwrap(),
        );
    }
    assert_eq!(primaries.len(), 3, "the fleet spans every primary");
    let rows: Vec<Row> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            let (lat, lon) = (50.0 + i as f64 / 100.0, 4.0 + i as f64 / 100.0);
            [
                Row::loc(id, loc(t + i as i64, lat, lon)),
                Row::loc(id, loc(t - 1_000, 0.0, 0.0)),
                Row::sts(id, sts(t, i % 3 == 0, Some(i as f64), None)),
            ]
        })
        .collect();
    w.insert(&rows).await;

    let r = w.rebuild(SourceKind::Postgres, false).await;
    assert_eq!((r.devices, r.written, r.failed), (48, 48, 0), "{r:?}");
    assert_eq!(w.members().await.len(), 48);
    for (i, id) in ids.iter().enumerate() {
        let s = w.state(id).await;
        assert_eq!(s["ts"], (t + i as i64).to_string(), "{id}");
        assert_eq!(s["battery"], i.to_string(), "{id}");
        let (lon, lat) = w.geopos(id).await.unwrap();
        assert!(
            (lat - (50.0 + i as f64 / 100.0)).abs() < 1e-5
                && (lon - (4.0 + i as f64 / 100.0)).abs() < 1e-5
        );
    }
    assert_eq!(w.rebuild(SourceKind::Postgres, false).await.skipped, 48);

    let ts = (t + 5_000).to_string();
    for id in ["old-a", "old-b", "old-c", "old-d", "old-e", "old-f"] {
        w.old_device(
            id,
            &[
                ("ts", &ts),
                ("lat", "1.5"),
                ("lon", "2.5"),
                ("last_seen", &ts),
            ],
        )
        .await;
    }
    let r = w.rebuild(SourceKind::OldKeys, true).await;
    assert_eq!(
        (r.devices, r.written, r.old_deleted, r.old_kept),
        (6, 6, 6, 0),
        "{r:?}"
    );
    assert_eq!(w.state("old-e").await["lon"], "2.5");
    for old in ["devices", "geo", "dev:old-a", "dev:old-f"] {
        assert!(!w.exists(&w.old(old)).await, "{old} deleted");
    }
    assert_eq!(w.members().await.len(), 54);
}

/// What stops the command is said in one line, with its exit status: bad
/// flags (2), a database without the bridge's tables, an unreachable Redis
/// (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_says_what_stops_it() {
    let db = PgDb::create().await.unwrap();
    let prefix = format!("{}:", unique("rb"));
    let _keys = PrefixGuard::new(&shared_redis_url(), &prefix);
    let run = |args: Vec<String>| {
        let prefix = prefix.clone();
        async move {
            let out = tokio::process::Command::new(BIN)
                .arg("rebuild-redis")
                .args(args)
                .env("FIELDCAST_REDIS_PREFIX", &prefix)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let db_url = db.url.clone();
    let arg = |s: &[&str]| s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    let (code, err) = run(arg(&["--from", "postgres", "--delete-old"])).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--delete-old only goes with --from old-keys"),
        "{err}"
    );

    let redis = shared_redis_url();
    let (code, err) = run(arg(&[
        "--from",
        "postgres",
        "--redis-url",
        &redis,
        "--database-url",
        &db_url,
    ]))
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("relation \"locations\" does not exist"),
        "{err}"
    );

    let nowhere = format!("redis://127.0.0.1:{}", fieldcast_testkit::free_port());
    let (code, err) = run(arg(&["--from", "old-keys", "--redis-url", &nowhere])).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect to Redis"), "{err}");
}
