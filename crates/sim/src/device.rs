//! One simulated device: its id and topics, its route, battery and radio,
//! and its event counter. It turns "time passed, publish now" into payload
//! bytes; when and over which connection they go is `fleet`'s business.

use fieldcast_core::{Kind, Severity, Topic};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::payload;
use crate::route::{Area, Fix, Route};

/// Event kinds a device reports, with severity and relative frequency.
/// `panic` is rare and critical.
const EVENT_KINDS: [(&str, Severity, u32); 8] = [
    ("door_open", Severity::Info, 28),
    ("door_close", Severity::Info, 26),
    ("harsh_brake", Severity::Warning, 14),
    ("harsh_accel", Severity::Warning, 9),
    ("speeding", Severity::Warning, 10),
    ("geofence_enter", Severity::Info, 6),
    ("geofence_exit", Severity::Info, 6),
    ("panic", Severity::Critical, 1),
];

/// The topics of one device, formatted once.
#[derive(Debug, Clone)]
pub struct Topics {
    pub location: String,
    pub status: String,
    pub events: String,
}

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub id: String,
    pub kind: &'static str,
    pub severity: Severity,
    pub payload: Vec<u8>,
}

/// The state of one simulated device.
#[derive(Debug)]
pub struct Device {
    id: String,
    topics: Topics,
    route: Route,
    /// Percent.
    battery: f64,
    /// Percent per second.
    drain: f64,
    /// dBm.
    signal: f64,
    /// Makes event ids unique across runs of the simulator: the bridge
    /// deduplicates on (device, id), so a restarted fleet must not reuse ids.
    nonce: String,
    events_sent: u64,
    rng: SmallRng,
}

impl Device {
    /// `seed` fixes the route and readings; `nonce` (one per simulator run)
    /// goes into event ids.
    pub fn new(id: String, area: Area, seed: u64, nonce: &str) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let route = Route::new(area, &mut rng);
        Device {
            topics: Topics {
                location: Topic::format(&id, Kind::Location),
                status: Topic::format(&id, Kind::Status),
                events: Topic::format(&id, Kind::Event),
            },
            id,
            route,
            battery: rng.random_range(55.0..100.0),
            // 1.2 to 3.6 % an hour: a tracker on vehicle power, slowly.
            drain: rng.random_range(1.2..3.6) / 3600.0,
            signal: rng.random_range(-100.0..-60.0),
            nonce: nonce.to_owned(),
            events_sent: 0,
            rng,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Drives on for `dt` seconds and reports the position at `ts`.
    pub fn location(&mut self, dt: f64, ts: i64) -> Vec<u8> {
        self.route.advance(dt, &mut self.rng);
        payload::location(&self.route.fix(), ts)
    }

    /// [`Device::location`], reporting `speed` (m/s) instead of the
    /// route's: the bench's overspeed bursts. The position moves as the
    /// route drives.
    pub fn location_reporting(&mut self, dt: f64, ts: i64, speed: f64) -> Vec<u8> {
        self.route.advance(dt, &mut self.rng);
        payload::location(
            &Fix {
                speed,
                ..self.route.fix()
            },
            ts,
        )
    }

    /// Drains the battery for `dt` seconds, lets the signal wander, and
    /// reports both with `online`.
    pub fn status(&mut self, online: bool, dt: f64, ts: i64) -> Vec<u8> {
        if dt.is_finite() && dt > 0.0 {
            self.battery = (self.battery - self.drain * dt).max(0.0);
        }
        self.signal = (self.signal + self.rng.random_range(-4.0..4.0)).clamp(-115.0, -50.0);
        payload::status(online, ts, self.battery, self.signal)
    }

    /// The next event, with an id no other event of this device shares.
    pub fn event(&mut self, ts: i64) -> SimEvent {
        self.events_sent += 1;
        let id = format!("{}-{}-{}", self.id, self.nonce, self.events_sent);
        let total: u32 = EVENT_KINDS.iter().map(|k| k.2).sum();
        let mut pick = self.rng.random_range(0..total);
        let (kind, severity) = EVENT_KINDS
            .iter()
            .find(|(_, _, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or(("door_open", Severity::Info), |(k, s, _)| (*k, *s));
        let data = self.event_data(kind);
        SimEvent {
            payload: payload::event(&id, kind, severity, ts, &data),
            id,
            kind,
            severity,
        }
    }

    fn event_data(&mut self, kind: &str) -> serde_json::Value {
        let fix = self.route.fix();
        let rng = &mut self.rng;
        let here = json!({"lat": round7(fix.lat), "lon": round7(fix.lon)});
        let mut data = match kind {
            "door_open" | "door_close" => {
                let door = ["rear", "side", "cab"][rng.random_range(0..3)];
                json!({ "door": door })
            }
            "harsh_brake" => {
                json!({"decel": round1(rng.random_range(4.0..9.0)), "speed": round1(fix.speed)})
            }
            "harsh_accel" => {
                json!({"accel": round1(rng.random_range(3.0..6.0)), "speed": round1(fix.speed)})
            }
            "speeding" => {
                let limit = [8.9, 13.4, 17.9][rng.random_range(0..3)];
                json!({"speed": round1(fix.speed), "limit": limit})
            }
            "geofence_enter" | "geofence_exit" => {
                json!({"zone": format!("zone-{}", rng.random_range(1..=12))})
            }
            _ => json!({"battery": round1(self.battery)}),
        };
        if let (Some(d), Some(h)) = (data.as_object_mut(), here.as_object()) {
            d.extend(h.clone());
        }
        data
    }
}

fn round7(v: f64) -> f64 {
    (v * 1e7).round() / 1e7
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::LatLon;
    use fieldcast_core::{Limits, Message};
    use std::collections::HashSet;

    const NOW: i64 = 1_763_800_000_000;

    fn device(n: u64) -> Device {
        let area = Area {
            center: LatLon {
                lat: 51.5074,
                lon: -0.1278,
            },
            radius_m: 10_000.0,
        };
        Device::new(format!("sim-{n}"), area, n, "k3x9")
    }

    #[test]
    fn every_payload_parses_on_its_topic() {
        let mut d = device(1);
        let limits = Limits::default();
        for i in 0..200 {
            let loc = d.location(1.0, NOW);
            assert!(matches!(
                Message::parse(&d.topics().location, &loc, &limits, NOW),
                Ok(Message::Location(..))
            ));
            let st = d.status(i % 2 == 0, 30.0, NOW);
            assert!(matches!(
                Message::parse(&d.topics().status, &st, &limits, NOW),
                Ok(Message::Status(..))
            ));
            let ev = d.event(NOW);
            match Message::parse(&d.topics().events, &ev.payload, &limits, NOW) {
                Ok(Message::Event(_, e)) => {
                    assert_eq!((e.id.as_str(), e.kind.as_str()), (ev.id.as_str(), ev.kind));
                    assert_eq!(e.severity, ev.severity);
                    assert!(e.data.is_some());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_reported_speed_replaces_only_the_speed() {
        let (mut a, mut b) = (device(4), device(4));
        let plain: serde_json::Value =
            serde_json::from_slice(&a.location(1.0, NOW)).unwrap_or_default();
        let fast: serde_json::Value =
            serde_json::from_slice(&b.location_reporting(1.0, NOW, 35.0)).unwrap_or_default();
        assert_eq!(fast["speed"], 35.0);
        assert_ne!(plain["speed"], 35.0);
        for same in ["lat", "lon", "ts", "heading", "alt"] {
            assert_eq!(plain[same], fast[same], "{same}");
        }
    }

    #[test]
    fn event_ids_are_unique_and_kinds_vary() {
        let mut d = device(2);
        let events: Vec<SimEvent> = (0..2_000).map(|_| d.event(NOW)).collect();
        let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
        assert!(events[0].id.starts_with("sim-2-k3x9-"));
        let kinds: HashSet<&str> = events.iter().map(|e| e.kind).collect();
        assert!(kinds.len() >= 6, "{kinds:?}");
        let panics = events.iter().filter(|e| e.kind == "panic").count();
        assert!(panics < 60, "panic should be rare, got {panics}/2000");
        assert!(events
            .iter()
            .filter(|e| e.kind == "panic")
            .all(|e| e.severity == Severity::Critical));
    }

    #[test]
    fn battery_drains_slowly() {
        let mut d = device(3);
        let start = d.battery;
        d.status(true, 3_600.0, NOW);
        let used = start - d.battery;
        assert!((1.0..4.0).contains(&used), "used {used}% in an hour");
        assert!((-115.0..=-50.0).contains(&d.signal));
    }
}
