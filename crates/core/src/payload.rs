//! Device payloads: parsed once, validated against PROTOCOL.md §2, or
//! rejected with a reason that becomes the `reason` label of
//! `fieldcast_bridge_rejected_total` and the dead-letter entry.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::id::DeviceId;
use crate::topic::{Kind, Topic, TopicError};

/// Why a message was rejected. The string forms are the metric labels and
/// are part of the operator-facing contract (README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Topic is not `devices/{id}/(location|status|events)`.
    BadTopic,
    /// Device id outside `[A-Za-z0-9_.-]{1,64}`.
    BadDeviceId,
    /// Payload larger than the configured limit (16 KiB by default).
    Oversize,
    /// Payload is not UTF-8.
    BadUtf8,
    /// Payload is not JSON.
    BadJson,
    /// JSON value that is not an object.
    NotObject,
    /// NaN, Infinity or a number too large for a double.
    NonFinite,
    /// A required field is absent (or `null`).
    MissingField,
    /// A field has the wrong JSON type.
    BadType,
    /// A field is outside its range (lat, lon, battery, lengths, ...).
    OutOfRange,
    /// `ts` is neither epoch ms nor RFC 3339.
    BadTs,
    /// `ts` is more than the allowed skew in the future.
    TsFuture,
    /// `ts` is older than the retention window.
    TsTooOld,
    /// A string (a key of `data` included) holds U+0000 or an unpaired
    /// surrogate, which PostgreSQL text and jsonb cannot store.
    BadText,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::BadTopic,
        RejectReason::BadDeviceId,
        RejectReason::Oversize,
        RejectReason::BadUtf8,
        RejectReason::BadJson,
        RejectReason::NotObject,
        RejectReason::NonFinite,
        RejectReason::MissingField,
        RejectReason::BadType,
        RejectReason::OutOfRange,
        RejectReason::BadTs,
        RejectReason::TsFuture,
        RejectReason::TsTooOld,
        RejectReason::BadText,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::BadDeviceId => "bad_device_id",
            RejectReason::Oversize => "oversize",
            RejectReason::BadUtf8 => "bad_utf8",
            RejectReason::BadJson => "bad_json",
            RejectReason::NotObject => "not_object",
            RejectReason::NonFinite => "non_finite",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadType => "bad_type",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::BadTs => "bad_ts",
            RejectReason::TsFuture => "ts_future",
            RejectReason::TsTooOld => "ts_too_old",
            RejectReason::BadText => "bad_text",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection: the reason plus a human detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Reject {}

/// The validation limits; `Limits::default()` is PROTOCOL.md's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted payload in bytes (16 KiB).
    pub max_payload: usize,
    /// How far in the future a `ts` may be (10 minutes).
    pub max_future_ms: i64,
    /// How old a `ts` may be: the retention window (90 days).
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 16 * 1024,
            max_future_ms: 10 * 60 * 1000,
            max_age_ms: 90 * 24 * 3600 * 1000,
        }
    }
}

/// A location fix. Optional fields a device did not send stay `None` and are
/// omitted from live messages ([`crate::live::location_json`]). Serialized
/// as is, every field in this order and a missing one as `null`: one point
/// of the gateway's history API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Location {
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub accuracy: Option<f64>,
}

impl Location {
    /// A position alone, every optional field `None`.
    pub fn point(ts: i64, lat: f64, lon: f64) -> Self {
        Location {
            ts,
            lat,
            lon,
            alt: None,
            speed: None,
            heading: None,
            accuracy: None,
        }
    }
}

/// A status report (online/offline, battery, signal).
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub ts: i64,
    /// `false` when the device sent no `ts` (the Last Will): `ts` is then the
    /// receive time, and the status is applied as the device's newest even
    /// if a stored one is later (PROTOCOL.md §3).
    pub device_ts: bool,
    pub online: bool,
    pub battery: Option<f64>,
    pub signal: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// A device event. `data` keeps the device's JSON text exactly.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub ts: i64,
    pub kind: String,
    pub severity: Severity,
    pub data: Option<Box<RawValue>>,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
            && self.ts == o.ts
            && self.kind == o.kind
            && self.severity == o.severity
            && self.data.as_ref().map(|d| d.get()) == o.data.as_ref().map(|d| d.get())
    }
}

/// One accepted device message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Location(DeviceId, Location),
    Status(DeviceId, Status),
    Event(DeviceId, Event),
}

impl Message {
    pub fn device(&self) -> &DeviceId {
        match self {
            Message::Location(d, _) | Message::Status(d, _) | Message::Event(d, _) => d,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Message::Location(..) => Kind::Location,
            Message::Status(..) => Kind::Status,
            Message::Event(..) => Kind::Event,
        }
    }

    pub fn ts(&self) -> i64 {
        match self {
            Message::Location(_, l) => l.ts,
            Message::Status(_, s) => s.ts,
            Message::Event(_, e) => e.ts,
        }
    }

    /// Parses and validates one MQTT message. `now_ms` stands in for a
    /// missing `ts` and anchors the future/age checks.
    pub fn parse(
        topic: &str,
        payload: &[u8],
        limits: &Limits,
        now_ms: i64,
    ) -> Result<Self, Reject> {
        let topic = Topic::parse(topic).map_err(|e| match e {
            TopicError::Unknown => Reject::new(RejectReason::BadTopic, e.to_string()),
            TopicError::DeviceId(_) => Reject::new(RejectReason::BadDeviceId, e.to_string()),
        })?;
        Self::parse_payload(topic, payload, limits, now_ms)
    }

    /// Validates the payload of an already parsed topic: the envelope
    /// (size, UTF-8, a JSON object, storable text) once, then the fields of
    /// the topic's kind.
    pub fn parse_payload(
        topic: Topic,
        payload: &[u8],
        limits: &Limits,
        now_ms: i64,
    ) -> Result<Self, Reject> {
        let text = json_object_text(payload, limits)?;
        let clock = Clock { limits, now_ms };
        let device = topic.device;
        Ok(match topic.kind {
            Kind::Location => {
                Message::Location(device, from_json::<RawLocation>(text)?.check(clock)?)
            }
            Kind::Status => Message::Status(device, from_json::<RawStatus>(text)?.check(clock)?),
            Kind::Event => Message::Event(device, from_json::<RawEvent>(text)?.check(clock)?),
        })
    }
}

/// The envelope every payload shares: within the size limit, UTF-8, a JSON
/// object, and no string PostgreSQL cannot store. Returns the text.
fn json_object_text<'a>(payload: &'a [u8], limits: &Limits) -> Result<&'a str, Reject> {
    if payload.len() > limits.max_payload {
        return Err(Reject::new(
            RejectReason::Oversize,
            format!(
                "{} bytes > {} byte limit",
                payload.len(),
                limits.max_payload
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Reject::new(RejectReason::BadUtf8, e.to_string()))?;
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Reject::new(RejectReason::NotObject, "payload is not a JSON object"),
            Err(e) => json_reject(text, &e),
        });
    }
    if let Some(what) = unstorable_text(text) {
        return Err(Reject::new(
            RejectReason::BadText,
            format!("a string holds {what}, which PostgreSQL cannot store"),
        ));
    }
    Ok(text)
}

fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, Reject> {
    serde_json::from_str(text).map_err(|e| json_reject(text, &e))
}

/// What a `ts` is checked against: the receive time and the limits.
#[derive(Clone, Copy)]
struct Clock<'a> {
    limits: &'a Limits,
    now_ms: i64,
}

impl Clock<'_> {
    /// A missing `ts` is the receive time; a given one must lie between
    /// retention and the allowed skew into the future.
    fn ts(self, ts: Option<Ts>) -> Result<i64, Reject> {
        let ts = match ts {
            None => return Ok(self.now_ms),
            Some(Ts::Ms(ms)) => ms,
            Some(Ts::Bad) => {
                return Err(Reject::new(
                    RejectReason::BadTs,
                    "ts is neither epoch ms nor RFC 3339",
                ))
            }
        };
        if ts > self.now_ms.saturating_add(self.limits.max_future_ms) {
            return Err(Reject::new(
                RejectReason::TsFuture,
                format!("ts {ts} is in the future"),
            ));
        }
        if ts < self.now_ms.saturating_sub(self.limits.max_age_ms) {
            return Err(Reject::new(
                RejectReason::TsTooOld,
                format!("ts {ts} is older than retention"),
            ));
        }
        Ok(ts)
    }
}

impl RawLocation {
    fn check(self, clock: Clock<'_>) -> Result<Location, Reject> {
        let lat = required(self.lat, "lat")?;
        let lon = required(self.lon, "lon")?;
        in_range("lat", lat, -90.0, 90.0)?;
        in_range("lon", lon, -180.0, 180.0)?;
        opt_range("speed", self.speed, 0.0, f64::MAX)?;
        opt_range("heading", self.heading, 0.0, 360.0)?;
        opt_range("accuracy", self.accuracy, 0.0, f64::MAX)?;
        opt_range("alt", self.alt, f64::MIN, f64::MAX)?;
        Ok(Location {
            ts: clock.ts(self.ts)?,
            lat,
            lon,
            alt: self.alt,
            speed: self.speed,
            heading: self.heading,
            accuracy: self.accuracy,
        })
    }
}

impl RawStatus {
    fn check(self, clock: Clock<'_>) -> Result<Status, Reject> {
        let online = required(self.online, "online")?;
        opt_range("battery", self.battery, 0.0, 100.0)?;
        opt_range("signal", self.signal, f64::MIN, f64::MAX)?;
        Ok(Status {
            device_ts: self.ts.is_some(),
            ts: clock.ts(self.ts)?,
            online,
            battery: self.battery,
            signal: self.signal,
        })
    }
}

impl RawEvent {
    fn check(self, clock: Clock<'_>) -> Result<Event, Reject> {
        let id = required(self.id, "id")?;
        let kind = required(self.kind, "kind")?;
        len_range("id", &id, 128)?;
        len_range("kind", &kind, 64)?;
        let severity = match self.severity.as_deref() {
            None => Severity::Info,
            Some(s) => Severity::parse(s).ok_or_else(|| {
                Reject::new(
                    RejectReason::OutOfRange,
                    "severity must be info, warning or critical",
                )
            })?,
        };
        if let Some(d) = &self.data {
            if !d.get().starts_with('{') {
                return Err(Reject::new(
                    RejectReason::BadType,
                    "data must be a JSON object",
                ));
            }
        }
        Ok(Event {
            id,
            ts: clock.ts(self.ts)?,
            kind,
            severity,
            data: self.data,
        })
    }
}

/// Finds a `\u0000` or an unpaired surrogate escape anywhere in a JSON
/// text. Valid UTF-8 JSON can hold neither raw (control characters must be
/// escaped, and UTF-8 has no surrogates), and a backslash only occurs inside
/// strings, so one scan of the escapes covers every string, keys included.
fn unstorable_text(text: &str) -> Option<&'static str> {
    let b = text.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let h = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u32::from_str_radix(h, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'\\') {
        let at = i + off;
        match b.get(at + 1) {
            Some(b'u') => {
                let Some(cp) = hex4(at + 2) else {
                    // Not an escape serde accepts; the JSON parser names it.
                    i = at + 2;
                    continue;
                };
                match cp {
                    0 => return Some("U+0000"),
                    0xD800..=0xDBFF => {
                        let low = (b.get(at + 6) == Some(&b'\\') && b.get(at + 7) == Some(&b'u'))
                            .then(|| hex4(at + 8))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Some("an unpaired surrogate");
                        }
                        i = at + 12;
                    }
                    0xDC00..=0xDFFF => return Some("an unpaired surrogate"),
                    _ => i = at + 6,
                }
            }
            Some(_) => i = at + 2,
            None => break,
        }
    }
    None
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, Reject> {
    v.ok_or_else(|| Reject::new(RejectReason::MissingField, format!("{name} is required")))
}

fn in_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), Reject> {
    if !v.is_finite() {
        return Err(Reject::new(
            RejectReason::NonFinite,
            format!("{name} is not finite"),
        ));
    }
    if v < lo || v > hi {
        return Err(Reject::new(
            RejectReason::OutOfRange,
            format!("{name} {v} outside {lo}..{hi}"),
        ));
    }
    Ok(())
}

fn opt_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), Reject> {
    v.map_or(Ok(()), |v| in_range(name, v, lo, hi))
}

fn len_range(name: &str, s: &str, max: usize) -> Result<(), Reject> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(Reject::new(
            RejectReason::OutOfRange,
            format!("{name} must be 1..{max} characters"),
        ));
    }
    Ok(())
}

fn json_reject(text: &str, e: &serde_json::Error) -> Reject {
    use serde_json::error::Category;
    let reason = match e.classify() {
        Category::Data => RejectReason::BadType,
        // serde_json refuses NaN/Infinity and overflowing numbers as syntax;
        // name them for the operator, who will look for exactly that.
        _ if text.contains("NaN") || text.contains("Infinity") => RejectReason::NonFinite,
        _ if e.to_string().contains("number out of range") => RejectReason::NonFinite,
        _ => RejectReason::BadJson,
    };
    Reject::new(reason, e.to_string())
}

/// A `ts` as sent: a number of epoch ms (fraction truncated) or RFC 3339.
enum Ts {
    Ms(i64),
    Bad,
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                Ok(Ts::Ms(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                Ok(i64::try_from(v).map_or(Ts::Bad, Ts::Ms))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts, E> {
                // i64 range check before the cast: `as` saturates silently.
                if v.is_finite() && v.abs() < 9.0e15 {
                    Ok(Ts::Ms(v.trunc() as i64))
                } else {
                    Ok(Ts::Bad)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                Ok(crate::time::parse_rfc3339_ms(v).map_or(Ts::Bad, Ts::Ms))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Ts, E> {
                Ok(Ts::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawLocation {
    lat: Option<f64>,
    lon: Option<f64>,
    ts: Option<Ts>,
    alt: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    accuracy: Option<f64>,
}

#[derive(Deserialize)]
struct RawStatus {
    online: Option<bool>,
    ts: Option<Ts>,
    battery: Option<f64>,
    signal: Option<f64>,
}

#[derive(Deserialize)]
struct RawEvent {
    id: Option<String>,
    kind: Option<String>,
    ts: Option<Ts>,
    severity: Option<String>,
    data: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    fn parse(topic: &str, payload: &str) -> Result<Message, Reject> {
        Message::parse(topic, payload.as_bytes(), &Limits::default(), NOW)
    }

    fn reason(topic: &str, payload: &[u8]) -> RejectReason {
        Message::parse(topic, payload, &Limits::default(), NOW)
            .expect_err("must be rejected")
            .reason
    }

    #[test]
    fn location_keeps_every_field_exactly() {
        let m = parse(
            "devices/t1/location",
            r#"{"lat":51.50735090123456,"lon":-0.1277583,"ts":1763800000000.9,"alt":30,"speed":12.5,"heading":90,"accuracy":5,"extra":[1]}"#,
        )
        .unwrap();
        let Message::Location(d, l) = m else {
            panic!("not a location")
        };
        assert_eq!(d.as_str(), "t1");
        assert_eq!(l.lat, 51.50735090123456);
        assert_eq!(l.lon, -0.1277583);
        assert_eq!(l.ts, 1_763_800_000_000);
        assert_eq!(
            (l.alt, l.speed, l.heading, l.accuracy),
            (Some(30.0), Some(12.5), Some(90.0), Some(5.0))
        );
    }

    #[test]
    fn missing_ts_is_receive_time_and_rfc3339_is_accepted() {
        let Message::Status(_, s) = parse("devices/t1/status", r#"{"online":true}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.ts, NOW);
        let Message::Status(_, s) = parse(
            "devices/t1/status",
            r#"{"online":false,"ts":"2025-11-22T08:26:40Z","battery":81,"signal":-70.5}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.ts, s.online, s.battery, s.signal),
            (NOW, false, Some(81.0), Some(-70.5))
        );
    }

    #[test]
    fn event_defaults_and_keeps_data_text() {
        let Message::Event(_, e) = parse(
            "devices/t1/events",
            r#"{"id":"ev-1","kind":"panic","data":{"a": 1.0}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.severity, Severity::Info);
        assert_eq!(e.data.unwrap().get(), r#"{"a": 1.0}"#);
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        use RejectReason::*;
        let loc = "devices/t1/location";
        let cases: &[(&str, &[u8], RejectReason)] = &[
            ("devices/t1/other", b"{}", BadTopic),
            ("foo", b"{}", BadTopic),
            ("devices/t 1/location", b"{}", BadDeviceId),
            (loc, b"\xff\xfe{", BadUtf8),
            (loc, b"{lat:1", BadJson),
            (loc, b"", BadJson),
            (loc, b"[1,2]", NotObject),
            (loc, b"42", NotObject),
            (loc, b"\"x\"", NotObject),
            (loc, br#"{"lat":NaN,"lon":0}"#, NonFinite),
            (loc, br#"{"lat":Infinity,"lon":0}"#, NonFinite),
            (loc, br#"{"lat":1e999,"lon":0}"#, NonFinite),
            (loc, br#"{"lon":0}"#, MissingField),
            (loc, br#"{"lat":null,"lon":0}"#, MissingField),
            (loc, br#"{"lat":"1","lon":0}"#, BadType),
            (loc, br#"{"lat":91,"lon":0}"#, OutOfRange),
            (loc, br#"{"lat":0,"lon":-180.5}"#, OutOfRange),
            (loc, br#"{"lat":0,"lon":0,"speed":-1}"#, OutOfRange),
            (loc, br#"{"lat":0,"lon":0,"heading":361}"#, OutOfRange),
            (loc, br#"{"lat":0,"lon":0,"accuracy":-0.1}"#, OutOfRange),
            (loc, br#"{"lat":0,"lon":0,"ts":"soon"}"#, BadTs),
            (loc, br#"{"lat":0,"lon":0,"ts":true}"#, BadTs),
            (loc, br#"{"lat":0,"lon":0,"ts":1763800600001}"#, TsFuture),
            (loc, br#"{"lat":0,"lon":0,"ts":1000}"#, TsTooOld),
            ("devices/t1/status", br#"{"battery":5}"#, MissingField),
            ("devices/t1/status", br#"{"online":"yes"}"#, BadType),
            (
                "devices/t1/status",
                br#"{"online":true,"battery":101}"#,
                OutOfRange,
            ),
            ("devices/t1/events", br#"{"id":"","kind":"x"}"#, OutOfRange),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","severity":"bad"}"#,
                OutOfRange,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":[1]}"#,
                BadType,
            ),
            ("devices/t1/events", br#"{"id":"a"}"#, MissingField),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":{"k":"\u0000"}}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":{"k\u0000":1}}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a\u0000","kind":"x"}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"\u0000"}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":{"k":"\ud800"}}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":{"k":"\udc00\ud800"}}"#,
                BadText,
            ),
            (
                "devices/t1/events",
                br#"{"id":"a","kind":"x","data":{"k":"\ud83d"}}"#,
                BadText,
            ),
            (
                "devices/t1/status",
                br#"{"online":true,"note":"\u0000"}"#,
                BadText,
            ),
        ];
        for (topic, payload, want) in cases {
            assert_eq!(
                reason(topic, payload),
                *want,
                "{topic} {}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = format!(r#"{{"lat":0,"lon":0,"pad":"{}"}}"#, "x".repeat(16 * 1024));
        assert_eq!(reason(loc, big.as_bytes()), Oversize);
        let long_id = format!(r#"{{"id":"{}","kind":"x"}}"#, "i".repeat(129));
        assert_eq!(reason("devices/t1/events", long_id.as_bytes()), OutOfRange);
    }

    #[test]
    fn storable_escapes_are_accepted() {
        for data in [
            r#"{"k":"\\u0000"}"#,
            r#"{"k":"\ud83d\ude00 and \u00e9 \u0001"}"#,
            r#"{"k\"\\":"\\\\"}"#,
        ] {
            let p = format!(r#"{{"id":"a","kind":"x","data":{data}}}"#);
            let Message::Event(_, e) = parse("devices/t1/events", &p).unwrap() else {
                panic!("not an event")
            };
            assert_eq!(e.data.unwrap().get(), data);
        }
    }

    #[test]
    fn a_status_says_whether_the_device_gave_its_ts() {
        let Message::Status(_, s) = parse("devices/t1/status", r#"{"online":false}"#).unwrap()
        else {
            panic!()
        };
        assert!(!s.device_ts);
        let Message::Status(_, s) =
            parse("devices/t1/status", r#"{"online":true,"ts":1763800000000}"#).unwrap()
        else {
            panic!()
        };
        assert!(s.device_ts);
    }

    proptest::proptest! {
        /// Pins: no byte string on any topic panics the parser.
        #[test]
        fn never_panics_on_bytes(topic in "\\PC{0,40}", payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Message::parse(&topic, &payload, &Limits::default(), NOW);
            for t in ["devices/x/location", "devices/x/status", "devices/x/events"] {
                let _ = Message::parse(t, &payload, &Limits::default(), NOW);
            }
        }

        /// Pins: JSON-shaped input with any field values never panics.
        #[test]
        fn never_panics_on_json(lat in proptest::num::f64::ANY, s in "\\PC{0,20}", n in proptest::num::i64::ANY) {
            let payload = format!(r#"{{"lat":{lat},"lon":{n},"ts":{n},"id":"{s}","kind":"{s}","online":true,"severity":"{s}"}}"#);
            for t in ["devices/x/location", "devices/x/status", "devices/x/events"] {
                let _ = Message::parse(t, payload.as_bytes(), &Limits::default(), NOW);
            }
        }
    }
}
