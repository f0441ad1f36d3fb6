//! The JSON that leaves Fieldcast for dispatchers (PROTOCOL.md §4): live
//! `location`/`status`/`event` messages and `DeviceState`. Each update is
//! serialised here exactly once; the bridge publishes those bytes and the
//! gateway forwards them unchanged.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::payload::{Event, Location, Status};

#[derive(Serialize)]
struct LiveLocation<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    device: &'a str,
    ts: i64,
    lat: f64,
    lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt: Option<f64>,
}

#[derive(Serialize)]
struct LiveStatus<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    device: &'a str,
    ts: i64,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<f64>,
}

#[derive(Serialize)]
struct LiveEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    device: &'a str,
    id: &'a str,
    ts: i64,
    kind: &'a str,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

// Serialising these plain structs into a String cannot fail: every field is a
// string, integer, bool, finite f64 or already-valid raw JSON.
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `{"type":"location",...}`; optional fields the device did not send are
/// omitted.
pub fn location_json(device: &str, l: &Location) -> String {
    to_json(&LiveLocation::of(device, l))
}

impl<'a> LiveLocation<'a> {
    fn of(device: &'a str, l: &Location) -> Self {
        LiveLocation {
            ty: "location",
            device,
            ts: l.ts,
            lat: l.lat,
            lon: l.lon,
            speed: l.speed,
            heading: l.heading,
            accuracy: l.accuracy,
            alt: l.alt,
        }
    }
}

/// Appends the location's live envelope to `out`: the bytes of
/// `envelope(rx_ms, &location_json(device, l))`, without building the two
/// strings (the bridge writes a call's envelopes into one buffer).
pub fn write_location_envelope(out: &mut Vec<u8>, rx_ms: i64, device: &str, l: &Location) {
    out.extend_from_slice(b"{\"rx\":");
    out.extend_from_slice(itoa::Buffer::new().format(rx_ms).as_bytes());
    out.extend_from_slice(b",\"msg\":");
    let start = out.len();
    let written = serde_json::to_writer(&mut *out, &LiveLocation::of(device, l));
    // As `to_json`: cannot fail for these fields; were it to, the message
    // is what `location_json` would give, an empty one.
    if written.is_err() {
        out.truncate(start);
    }
    out.push(b'}');
}

/// `{"type":"status",...}`.
pub fn status_json(device: &str, s: &Status) -> String {
    to_json(&LiveStatus {
        ty: "status",
        device,
        ts: s.ts,
        online: s.online,
        battery: s.battery,
        signal: s.signal,
    })
}

/// `{"type":"event",...}` without its `cursor`: the bridge publishes the
/// event's position in its partition's log beside it (the envelope's
/// `pos`), and the gateway, which alone knows the position in every
/// partition a cursor needs, adds the `cursor` with [`with_cursor`].
pub fn event_json(device: &str, e: &Event) -> String {
    to_json(&LiveEvent {
        ty: "event",
        device,
        id: &e.id,
        ts: e.ts,
        kind: &e.kind,
        severity: e.severity.as_str(),
        data: e.data.as_deref(),
    })
}

/// Appends `"cursor":"<cursor>"` to a JSON object produced by [`event_json`].
pub fn with_cursor(json: &str, cursor: &str) -> String {
    let body = json.strip_suffix('}').unwrap_or(json);
    let mut out = String::with_capacity(json.len() + cursor.len() + 12);
    out.push_str(body);
    out.push_str(",\"cursor\":\"");
    out.push_str(cursor);
    out.push_str("\"}");
    out
}

/// What the bridge publishes on the live channel: the receive time (for the
/// gateway's broadcast-latency histogram) and the §4 message itself, whose
/// bytes the gateway forwards untouched (an event's plus its `cursor`).
#[derive(Deserialize)]
pub struct LiveEnvelope<'a> {
    /// Bridge receive time, epoch ms.
    pub rx: i64,
    #[serde(borrow)]
    pub msg: &'a RawValue,
    /// An event's position in its partition's log, `<epoch>:<stream id>`
    /// (written by the bridge's `event.lua`).
    #[serde(default, borrow)]
    pub pos: Option<&'a str>,
}

/// Builds the envelope text around an already serialised message.
pub fn envelope(rx_ms: i64, msg_json: &str) -> String {
    format!("{{\"rx\":{rx_ms},\"msg\":{msg_json}}}")
}

/// A status envelope cut around its `ts` value: `(before, after)`, so that
/// the Redis script can publish it with the `ts` it decides (a status
/// without a device `ts` takes one after the stored status, PROTOCOL.md §3).
pub fn status_envelope_around_ts(rx_ms: i64, device: &str, s: &Status) -> (String, String) {
    let env = envelope(rx_ms, &status_json(device, s));
    // `device` matches `[A-Za-z0-9_.-]`, so the first `"ts":` is the field.
    let Some(at) = env.find("\"ts\":").map(|i| i + 5) else {
        return (env, String::new());
    };
    let end = env[at..]
        .find(|c: char| c != '-' && !c.is_ascii_digit())
        .map_or(env.len(), |n| at + n);
    (env[..at].to_owned(), env[end..].to_owned())
}

/// The routing fields of a live message, read by the gateway without
/// touching the rest.
#[derive(Debug, Deserialize)]
pub struct LiveHeader<'a> {
    #[serde(rename = "type")]
    pub ty: &'a str,
    pub device: &'a str,
    pub ts: i64,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// An event's id: with `device`, what a re-published event repeats.
    /// Owned only when the JSON escapes a character in it.
    #[serde(default, borrow)]
    pub id: Option<std::borrow::Cow<'a, str>>,
}

/// The current state of one device (PROTOCOL.md §4). Fields unknown so far
/// are `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub device: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub ts: Option<i64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub accuracy: Option<f64>,
    pub alt: Option<f64>,
    pub online: Option<bool>,
    pub battery: Option<f64>,
    pub signal: Option<f64>,
    pub last_seen: Option<i64>,
    /// The device's groups (issue #16), sorted; `[]` when it has none, so
    /// the field is always there. Not part of the Redis hash: the gateway
    /// fills it from its copy of `device_groups` (docs/gateway.md).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl DeviceState {
    /// Builds the state from the field/value pairs of the device's hot-state
    /// hash (docs/redis-layout.md). Unparseable fields read as `null`.
    ///
    /// The position is the packed [`LOC_FIELD`]; a hash the bridge has not
    /// written since before it was packed still has one field per value
    /// (`lat`, `lon`, ...), read the same way. Should a hash hold both
    /// (never after the bridge's next location), the packed one wins.
    pub fn from_hash<'a>(
        device: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut s = DeviceState {
            device: device.to_owned(),
            ..Default::default()
        };
        let mut packed = None;
        for (k, v) in fields {
            match k {
                LOC_FIELD => packed = Some(v),
                "ts" => s.ts = v.parse().ok(),
                "online" => s.online = Some(v == "1" || v == "true"),
                "battery" => s.battery = v.parse().ok(),
                "signal" => s.signal = v.parse().ok(),
                "last_seen" => s.last_seen = v.parse().ok(),
                _ => s.set_location_part(k, v),
            }
        }
        if let Some(v) = packed {
            for (name, part) in LOC_PARTS.iter().zip(unpack_location(v)) {
                s.set_location_part(name, part);
            }
        }
        s
    }

    fn set_location_part(&mut self, name: &str, v: &str) {
        let slot = match name {
            "lat" => &mut self.lat,
            "lon" => &mut self.lon,
            "alt" => &mut self.alt,
            "speed" => &mut self.speed,
            "heading" => &mut self.heading,
            "accuracy" => &mut self.accuracy,
            _ => return,
        };
        *slot = v.parse().ok();
    }
}

/// The device hash's field holding its newest position and measurements,
/// packed as [`LOC_PARTS`] comma-separated, each as [`push_f64`] writes it
/// and an absent one empty: `51.5,-0.12,,12.5,,`. One field instead of six
/// is most of what made `location.lua` cost half as much Redis CPU
/// (docs/benchmarks.md, "Cost per message").
pub const LOC_FIELD: &str = "loc";

/// The values of [`LOC_FIELD`], in order (also the names of the fields the
/// hash had before they were packed).
pub const LOC_PARTS: [&str; 6] = ["lat", "lon", "alt", "speed", "heading", "accuracy"];

/// Appends the [`LOC_FIELD`] value of `l`.
pub fn push_packed_location(out: &mut String, l: &Location) {
    push_f64(out, l.lat);
    out.push(',');
    push_f64(out, l.lon);
    for v in [l.alt, l.speed, l.heading, l.accuracy] {
        out.push(',');
        if let Some(v) = v {
            push_f64(out, v);
        }
    }
}

/// Adds the values a hash's [`LOC_FIELD`] packs to it as fields of their
/// own (`lat`, `lon`, and those of `alt`, `speed`, `heading`, `accuracy`
/// present), as the hash had them before they were packed; `loc` stays.
/// For tests and tools that compare a hash field by field.
pub fn add_location_fields(h: &mut std::collections::HashMap<String, String>) {
    let Some(packed) = h.get(LOC_FIELD).cloned() else {
        return;
    };
    for (name, v) in LOC_PARTS.iter().zip(unpack_location(&packed)) {
        if !v.is_empty() {
            h.insert((*name).to_owned(), v.to_owned());
        }
    }
}

/// The six values of a [`LOC_FIELD`] in [`LOC_PARTS`] order, an absent
/// one (or one missing from a short value) as `""`.
pub fn unpack_location(v: &str) -> [&str; 6] {
    let mut out = [""; 6];
    for (slot, part) in out.iter_mut().zip(v.split(',')) {
        *slot = part;
    }
    out
}

/// Formats a double so that parsing it back gives the same bits: `f64`'s
/// `Display` is the shortest string that round-trips.
pub fn fmt_f64(v: f64) -> String {
    let mut s = String::with_capacity(24);
    push_f64(&mut s, v);
    s
}

/// Appends `v` exactly as `Display` writes it (the shortest digits that
/// round-trip, never an exponent), through ryu: `format!` was most of
/// the bridge's formatting cost (several doubles per location).
pub fn push_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let mut buf = ryu::Buffer::new();
        let s = buf.format_finite(v);
        // ryu writes `1.0` where Display writes `1`, and an exponent
        // (`1e-7`, `1e16`) where Display writes every digit: the rare
        // latter goes through Display.
        if !s.as_bytes().contains(&b'e') {
            out.push_str(s.strip_suffix(".0").unwrap_or(s));
            return;
        }
    }
    use std::fmt::Write;
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A location with every optional field.
    fn full_location() -> Location {
        Location {
            ts: 1_700_000_000_123,
            lat: 51.507_350_9,
            lon: -0.127_758,
            alt: Some(12.5),
            speed: Some(0.0),
            heading: Some(359.9),
            accuracy: Some(3.0),
        }
    }

    #[test]
    fn packed_location_reads_back_as_the_location() {
        let full = Location {
            accuracy: Some(1e-7),
            ..full_location()
        };
        let bare = Location {
            alt: None,
            speed: Some(3.25),
            heading: None,
            accuracy: None,
            ..full.clone()
        };
        for l in [full, bare] {
            let mut packed = String::new();
            push_packed_location(&mut packed, &l);
            let ts = l.ts.to_string();
            let s = DeviceState::from_hash("d", [("ts", ts.as_str()), (LOC_FIELD, &packed)]);
            assert_eq!(
                (s.ts, s.lat, s.lon, s.alt, s.speed, s.heading, s.accuracy),
                (
                    Some(l.ts),
                    Some(l.lat),
                    Some(l.lon),
                    l.alt,
                    l.speed,
                    l.heading,
                    l.accuracy
                ),
                "{packed}"
            );
        }
        assert_eq!(unpack_location("1,2,,4,,"), ["1", "2", "", "4", "", ""]);
    }

    /// A hash written before the location was packed reads as before, and
    /// the packed field wins over stale separate ones whatever their order.
    #[test]
    fn from_hash_reads_the_separate_fields_and_prefers_the_packed_one() {
        let old = [("ts", "5"), ("lat", "1.5"), ("lon", "2.5"), ("speed", "3")];
        let s = DeviceState::from_hash("d", old);
        assert_eq!(
            (s.lat, s.lon, s.speed, s.alt),
            (Some(1.5), Some(2.5), Some(3.0), None)
        );
        let both = [
            ("loc", "7,8,,,,"),
            ("lat", "1.5"),
            ("lon", "2.5"),
            ("speed", "3"),
        ];
        let s = DeviceState::from_hash("d", both);
        assert_eq!((s.lat, s.lon, s.speed), (Some(7.0), Some(8.0), None));
    }

    /// The fast path must write what `Display` writes, byte for byte: the
    /// hash fields are read back by the gateway and compared by tests.
    #[test]
    fn fmt_f64_writes_what_display_writes() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            51.507_350_9,
            -0.127_758,
            1e-7,
            1.5e-5,
            1e15,
            1e16,
            1.234_567_890_123_456_7e20,
            9_007_199_254_740_993.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(fmt_f64(v), format!("{v}"), "{v:e}");
        }
    }

    #[test]
    fn write_location_envelope_writes_what_envelope_gives() {
        let full = full_location();
        let bare = Location {
            alt: None,
            speed: None,
            heading: None,
            accuracy: None,
            ..full.clone()
        };
        for l in [full, bare] {
            let mut out = b"[".to_vec();
            write_location_envelope(&mut out, -5, "dev-1", &l);
            let want = format!("[{}", envelope(-5, &location_json("dev-1", &l)));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    proptest::proptest! {
        #[test]
        fn fmt_f64_matches_display_for_any_bits(bits: u64) {
            let v = f64::from_bits(bits);
            proptest::prop_assert_eq!(fmt_f64(v), format!("{v}"));
        }

        #[test]
        fn fmt_f64_matches_display_for_coordinates(v in -180.0f64..180.0) {
            proptest::prop_assert_eq!(fmt_f64(v), format!("{v}"));
        }
    }
    use crate::payload::Severity;

    #[test]
    fn location_omits_what_was_not_sent() {
        let l = Location {
            ts: 5,
            lat: 51.50735090123456,
            lon: -0.12,
            alt: None,
            speed: Some(1.5),
            heading: None,
            accuracy: None,
        };
        assert_eq!(
            location_json("t", &l),
            r#"{"type":"location","device":"t","ts":5,"lat":51.50735090123456,"lon":-0.12,"speed":1.5}"#
        );
    }

    #[test]
    fn status_envelope_splits_around_its_ts() {
        let s = Status {
            ts: 1_763_800_000_123,
            device_ts: false,
            online: false,
            battery: Some(5.0),
            signal: None,
        };
        let (a, b) = status_envelope_around_ts(7, "truck-7", &s);
        assert_eq!(
            format!("{a}1763800000123{b}"),
            envelope(7, &status_json("truck-7", &s))
        );
        let again = format!("{a}99{b}");
        let v: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(v["msg"]["ts"], 99);
        assert_eq!(v["msg"]["online"], false);
    }

    #[test]
    fn event_gets_its_cursor_appended() {
        let e = Event {
            id: "ev\"1".into(),
            ts: 1,
            kind: "panic".into(),
            severity: Severity::Critical,
            data: Some(RawValue::from_string("{\"x\":1}".into()).unwrap()),
        };
        let j = with_cursor(&event_json("t", &e), "1-0");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["id"], "ev\"1");
        assert_eq!(v["cursor"], "1-0");
        assert_eq!(v["data"]["x"], 1);
    }

    #[test]
    fn envelope_round_trips_the_message_bytes() {
        let msg = r#"{"type":"status","device":"a","ts":1,"online":true}"#;
        let env = envelope(42, msg);
        let e: LiveEnvelope = serde_json::from_str(&env).unwrap();
        assert_eq!(e.rx, 42);
        assert_eq!(e.msg.get(), msg);
        let h: LiveHeader = serde_json::from_str(e.msg.get()).unwrap();
        assert_eq!((h.ty, h.device, h.ts), ("status", "a", 1));
    }

    #[test]
    fn doubles_round_trip_through_text() {
        for v in [
            51.50735090123456,
            -0.1,
            1e-300,
            179.99999999999997,
            0.1 + 0.2,
        ] {
            assert_eq!(fmt_f64(v).parse::<f64>().unwrap(), v);
        }
    }
}
