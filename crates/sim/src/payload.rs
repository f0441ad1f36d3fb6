//! The JSON a simulated device publishes (PROTOCOL.md §2): location, status,
//! event, and the Last Will. Numbers are rounded to what a real tracker
//! reports (about 1 cm for coordinates), which also keeps payloads small.

use fieldcast_core::Severity;
use serde::Serialize;

use crate::route::{normalize_heading, Fix};

/// `devices/{id}/location`.
#[derive(Debug, Serialize)]
struct LocationPayload {
    lat: f64,
    lon: f64,
    ts: i64,
    speed: f64,
    heading: f64,
    accuracy: f64,
    alt: f64,
}

/// `devices/{id}/status`.
#[derive(Debug, Serialize)]
struct StatusPayload {
    online: bool,
    ts: i64,
    battery: f64,
    signal: f64,
}

/// `devices/{id}/events`.
#[derive(Debug, Serialize)]
struct EventPayload<'a> {
    id: &'a str,
    kind: &'a str,
    severity: &'static str,
    ts: i64,
    data: &'a serde_json::Value,
}

/// A location fix taken at `ts` (epoch ms).
pub fn location(fix: &Fix, ts: i64) -> Vec<u8> {
    to_vec(&LocationPayload {
        lat: round(fix.lat, 1e7),
        lon: round(fix.lon, 1e7),
        ts,
        speed: round(fix.speed, 100.0),
        // Rounding 359.97 gives 360.0, which is legal but reads oddly.
        heading: normalize_heading(round(fix.heading, 10.0)),
        accuracy: round(fix.accuracy, 10.0),
        alt: round(fix.alt, 10.0),
    })
}

/// A status report; `battery` in percent, `signal` in dBm.
pub fn status(online: bool, ts: i64, battery: f64, signal: f64) -> Vec<u8> {
    to_vec(&StatusPayload {
        online,
        ts,
        battery: round(battery.clamp(0.0, 100.0), 10.0),
        signal: round(signal, 1.0),
    })
}

/// The Last Will every device connection leaves on its status topic. It
/// carries no `ts`: it is fixed at connect time and published by the broker
/// later, so the receiver's clock is the right one.
pub fn will() -> Vec<u8> {
    br#"{"online":false}"#.to_vec()
}

/// An event. `data` must be a JSON object.
pub fn event(
    id: &str,
    kind: &str,
    severity: Severity,
    ts: i64,
    data: &serde_json::Value,
) -> Vec<u8> {
    to_vec(&EventPayload {
        id,
        kind,
        severity: severity.as_str(),
        ts,
        data,
    })
}

fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

fn to_vec(v: &impl Serialize) -> Vec<u8> {
    // Serialising these plain structs of finite numbers and strings cannot
    // fail; should a NaN ever sneak in, serde_json writes `null`, which the
    // bridge rejects and counts, so an empty fallback is never reached.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldcast_core::{Kind, Limits, Message, Topic};

    const NOW: i64 = 1_763_800_000_000;

    fn parse(kind: Kind, payload: &[u8]) -> Message {
        let topic = Topic::format("sim-1", kind);
        match Message::parse(&topic, payload, &Limits::default(), NOW) {
            Ok(m) => m,
            Err(e) => panic!("{topic} {}: {e}", String::from_utf8_lossy(payload)),
        }
    }

    #[test]
    fn location_parses_with_every_field() {
        let fix = Fix {
            lat: 51.507_412_345_6,
            lon: -0.127_812_345,
            speed: 12.345,
            heading: 359.97,
            accuracy: 4.56,
            alt: 31.24,
        };
        let Message::Location(device, loc) = parse(Kind::Location, &location(&fix, NOW)) else {
            panic!("not a location");
        };
        assert_eq!(device.as_str(), "sim-1");
        assert_eq!(
            (loc.lat, loc.lon, loc.ts),
            (51.507_412_3, -0.127_812_3, NOW)
        );
        assert_eq!(loc.speed, Some(12.35));
        assert_eq!(loc.heading, Some(0.0));
        assert_eq!(loc.accuracy, Some(4.6));
        assert_eq!(loc.alt, Some(31.2));
    }

    #[test]
    fn status_and_will_parse() {
        let Message::Status(_, s) = parse(Kind::Status, &status(true, NOW, 87.25, -71.4)) else {
            panic!("not a status");
        };
        assert!(s.online);
        assert_eq!((s.ts, s.battery, s.signal), (NOW, Some(87.3), Some(-71.0)));
        let Message::Status(_, w) = parse(Kind::Status, &will()) else {
            panic!("not a status");
        };
        assert!(!w.online);
        assert_eq!(w.ts, NOW, "the bridge stamps a will with its receive time");
        let Message::Status(_, s) = parse(Kind::Status, &status(false, NOW, 120.0, -60.0)) else {
            panic!("not a status");
        };
        assert_eq!(s.battery, Some(100.0));
    }

    #[test]
    fn event_parses_with_severity_and_data() {
        let data = serde_json::json!({"decel": 6.5, "speed": 14.2});
        let payload = event("sim-1-ab12-7", "harsh_brake", Severity::Warning, NOW, &data);
        let Message::Event(_, e) = parse(Kind::Event, &payload) else {
            panic!("not an event");
        };
        assert_eq!(
            (e.id.as_str(), e.kind.as_str(), e.ts),
            ("sim-1-ab12-7", "harsh_brake", NOW)
        );
        assert_eq!(e.severity, Severity::Warning);
        let data_back: serde_json::Value =
            serde_json::from_str(e.data.as_ref().map(|d| d.get()).unwrap_or("null"))
                .unwrap_or_default();
        assert_eq!(data_back, data);
    }
}
