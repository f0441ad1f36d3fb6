//! Alert rules (issue #15), without I/O: what `POST /api/rules` takes, what
//! PostgreSQL's `alert_rules.rule` holds and what the bridge evaluates.
//!
//! ```json
//! {"kind": "overspeed", "devices": ["truck-*"], "groups": ["north"],
//!  "severity": "critical", "speed": 27.8, "for": "30s",
//!  "webhook": {"url": "https://hooks.example/fleet", "secret": "s3cret"}}
//! ```
//!
//! | `kind` | its own fields | trips when |
//! | --- | --- | --- |
//! | `overspeed` | `speed` (m/s, > 0), `for` (duration > 0) | a device's speed stays above `speed` for at least `for` |
//! | `low_battery` | `battery` (0 < b ≤ 100) | a status reports `battery` below it |
//! | `inactive` | `after` (duration > 0) | no message from the device for `after` |
//! | `offline` | none | a status says `online: false` (the Last Will) |
//! | `event` | `event_kind` (1..64 characters) | a device event of that kind arrives; re-raised with the rule's severity |
//!
//! Every kind also takes `devices` (glob patterns, `*` and `?`; absent =
//! every device), `groups` (absent = no group needed), `severity` (default
//! [`RuleKind::default_severity`]) and `webhook` (see [`crate::webhook`]).
//! A rule applies to a device that matches one of `devices` **and**, when
//! `groups` is given, belongs to one of them. Durations are strings such
//! as `"30s"`, `"5m"`, `"1h 30m"` (humantime), in whole milliseconds, up
//! to 365 days.
//!
//! Anything else is refused with a [`RuleError`] naming its field: an
//! unknown member, a member of another kind (`speed` on a `low_battery`
//! rule), a missing one, a value out of range. An `id` in the input is
//! ignored: the store assigns it. [`Rule::to_json`] writes the canonical
//! form (with `id`, `severity` always, durations as humantime strings,
//! `devices`/`groups` only when given).
//!
//! An alert is an event of `kind` [`Rule::alert_kind`] (`alert.<kind>`).

use std::fmt;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::glob::Glob;
use crate::payload::Severity;
use crate::webhook::{Webhook, WebhookProblem};

/// Most device patterns one rule may name.
pub const MAX_PATTERNS: usize = 1000;
/// Longest device pattern, in characters (an id is at most 64; the
/// wildcards may come on top).
pub const MAX_PATTERN_CHARS: usize = 128;
/// Most groups one rule may name.
pub const MAX_GROUPS: usize = 100;
/// Longest group name, in characters (as fences').
pub const MAX_GROUP_CHARS: usize = 64;
/// Longest `event_kind`, in characters (PROTOCOL.md §2's event `kind`).
pub const MAX_EVENT_KIND_CHARS: usize = 64;
/// Longest `for`/`after`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The members every kind takes.
const COMMON: &[&str] = &["id", "kind", "devices", "groups", "severity", "webhook"];

/// What a rule watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Overspeed,
    LowBattery,
    Inactive,
    Offline,
    Event,
}

impl RuleKind {
    pub const ALL: [RuleKind; 5] = [
        RuleKind::Overspeed,
        RuleKind::LowBattery,
        RuleKind::Inactive,
        RuleKind::Offline,
        RuleKind::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Overspeed => "overspeed",
            RuleKind::LowBattery => "low_battery",
            RuleKind::Inactive => "inactive",
            RuleKind::Offline => "offline",
            RuleKind::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        RuleKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The `kind` of the events its alerts are.
    pub fn alert_kind(self) -> &'static str {
        match self {
            RuleKind::Overspeed => "alert.overspeed",
            RuleKind::LowBattery => "alert.low_battery",
            RuleKind::Inactive => "alert.inactive",
            RuleKind::Offline => "alert.offline",
            RuleKind::Event => "alert.event",
        }
    }

    /// `warning` for every kind: an alert is the server pointing a
    /// dispatcher at something, more than `info` (the default of device
    /// events, which no one is asked to act on) and less than `critical`,
    /// which the map pins and beeps for, so that is the operator's choice.
    pub fn default_severity(self) -> Severity {
        Severity::Warning
    }

    /// The members only this kind takes.
    fn own_fields(self) -> &'static [&'static str] {
        match self {
            RuleKind::Overspeed => &["speed", "for"],
            RuleKind::LowBattery => &["battery"],
            RuleKind::Inactive => &["after"],
            RuleKind::Offline => &[],
            RuleKind::Event => &["event_kind"],
        }
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind with its thresholds. Durations are whole milliseconds, the unit
/// of every `ts`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Speed above `speed` m/s for at least `for_ms`.
    Overspeed { speed: f64, for_ms: u64 },
    /// Battery below `battery` (percent).
    LowBattery { battery: f64 },
    /// No message for `after_ms`.
    Inactive { after_ms: u64 },
    /// A status `online: false`.
    Offline,
    /// A device event of `event_kind`.
    Event { event_kind: String },
}

impl Condition {
    pub fn kind(&self) -> RuleKind {
        match self {
            Condition::Overspeed { .. } => RuleKind::Overspeed,
            Condition::LowBattery { .. } => RuleKind::LowBattery,
            Condition::Inactive { .. } => RuleKind::Inactive,
            Condition::Offline => RuleKind::Offline,
            Condition::Event { .. } => RuleKind::Event,
        }
    }
}

/// A validated alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    id: u64,
    condition: Condition,
    /// As given (for [`Rule::to_json`]); empty = every device.
    devices: Vec<String>,
    /// `devices` compiled, same order.
    globs: Vec<Glob>,
    /// Sorted, no repeats; empty = no group needed.
    groups: Vec<Box<str>>,
    severity: Severity,
    webhook: Option<Webhook>,
}

impl Rule {
    /// Parses and validates a rule; `id` is the store's.
    pub fn from_json(id: u64, v: &Value) -> Result<Rule, RuleError> {
        let map = v
            .as_object()
            .ok_or_else(|| RuleError::new("", RuleProblem::NotObject))?;
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());
        let kind = get("kind")
            .ok_or_else(|| RuleError::new("kind", RuleProblem::Missing))?
            .as_str()
            .and_then(RuleKind::parse)
            .ok_or_else(|| RuleError::new("kind", RuleProblem::Kind))?;
        for key in map.keys() {
            if COMMON.contains(&key.as_str()) || kind.own_fields().contains(&key.as_str()) {
                continue;
            }
            let problem = if RuleKind::ALL
                .iter()
                .any(|k| k.own_fields().contains(&key.as_str()))
            {
                RuleProblem::NotForKind(kind)
            } else {
                RuleProblem::Unknown
            };
            return Err(RuleError::new(key, problem));
        }
        let require = |key: &str| get(key).ok_or_else(|| RuleError::new(key, RuleProblem::Missing));
        let condition = match kind {
            RuleKind::Overspeed => Condition::Overspeed {
                speed: require("speed")?
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| RuleError::new("speed", RuleProblem::Speed))?,
                for_ms: duration_ms("for", require("for")?)?,
            },
            RuleKind::LowBattery => Condition::LowBattery {
                battery: require("battery")?
                    .as_f64()
                    .filter(|b| *b > 0.0 && *b <= 100.0)
                    .ok_or_else(|| RuleError::new("battery", RuleProblem::Battery))?,
            },
            RuleKind::Inactive => Condition::Inactive {
                after_ms: duration_ms("after", require("after")?)?,
            },
            RuleKind::Offline => Condition::Offline,
            RuleKind::Event => Condition::Event {
                event_kind: require("event_kind")?
                    .as_str()
                    .filter(|k| {
                        let n = k.chars().count();
                        (1..=MAX_EVENT_KIND_CHARS).contains(&n)
                            && !k.chars().any(char::is_control)
                            // A rule on its own alerts would re-raise each
                            // alert as a new one, without end.
                            && !k.starts_with("alert.")
                    })
                    .ok_or_else(|| RuleError::new("event_kind", RuleProblem::EventKind))?
                    .to_owned(),
            },
        };
        let devices = match get("devices") {
            None => Vec::new(),
            Some(d) => patterns(d)?,
        };
        let groups = match get("groups") {
            None => Vec::new(),
            Some(g) => groups(g)?,
        };
        let severity = match get("severity") {
            None => kind.default_severity(),
            Some(s) => s
                .as_str()
                .and_then(Severity::parse)
                .ok_or_else(|| RuleError::new("severity", RuleProblem::Severity))?,
        };
        let webhook = get("webhook")
            .map(|w| {
                Webhook::from_json(w).map_err(|e| {
                    let field = if e.member.is_empty() {
                        "webhook".to_owned()
                    } else {
                        format!("webhook.{}", e.member)
                    };
                    RuleError::new(field, RuleProblem::Webhook(e.problem))
                })
            })
            .transpose()?;
        Ok(Rule {
            id,
            condition,
            globs: devices.iter().map(|d| Glob::new(d)).collect(),
            devices,
            groups,
            severity,
            webhook,
        })
    }

    /// The canonical JSON, with `id` and the webhook's secret: what the
    /// store keeps. An API answer must leave `webhook.secret` out.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("kind".into(), json!(self.kind().as_str()));
        if !self.devices.is_empty() {
            m.insert("devices".into(), json!(self.devices));
        }
        if !self.groups.is_empty() {
            m.insert("groups".into(), json!(self.groups));
        }
        m.insert("severity".into(), json!(self.severity.as_str()));
        match &self.condition {
            Condition::Overspeed { speed, for_ms } => {
                m.insert("speed".into(), json!(speed));
                m.insert("for".into(), json!(format_ms(*for_ms)));
            }
            Condition::LowBattery { battery } => {
                m.insert("battery".into(), json!(battery));
            }
            Condition::Inactive { after_ms } => {
                m.insert("after".into(), json!(format_ms(*after_ms)));
            }
            Condition::Offline => {}
            Condition::Event { event_kind } => {
                m.insert("event_kind".into(), json!(event_kind));
            }
        }
        if let Some(w) = &self.webhook {
            m.insert("webhook".into(), w.to_json());
        }
        Value::Object(m)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn kind(&self) -> RuleKind {
        self.condition.kind()
    }

    /// The kind with its thresholds.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// `alert.<kind>`, the `kind` of the events this rule raises.
    pub fn alert_kind(&self) -> &'static str {
        self.kind().alert_kind()
    }

    /// The device patterns as given; empty = every device.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// The groups a device must be in (one of); empty = none needed.
    pub fn groups(&self) -> &[Box<str>] {
        &self.groups
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// Whether the rule watches `device`, a member of `device_groups`.
    pub fn applies_to<S: AsRef<str>>(&self, device: &str, device_groups: &[S]) -> bool {
        (self.globs.is_empty() || self.globs.iter().any(|g| g.matches(device)))
            && (self.groups.is_empty()
                || device_groups.iter().any(|g| {
                    self.groups
                        .binary_search_by(|x| (**x).cmp(g.as_ref()))
                        .is_ok()
                }))
    }
}

/// A humantime string (`"30s"`) as whole milliseconds, > 0 and at most
/// [`MAX_DURATION`].
fn duration_ms(field: &str, v: &Value) -> Result<u64, RuleError> {
    let bad = || RuleError::new(field, RuleProblem::Duration);
    let d = v
        .as_str()
        .and_then(|s| humantime::parse_duration(s).ok())
        .ok_or_else(bad)?;
    if d.is_zero() || d > MAX_DURATION || d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad());
    }
    // At most 365 days: fits u64 milliseconds many times over.
    u64::try_from(d.as_millis()).map_err(|_| bad())
}

/// `30000` ms as `"30s"`: the form [`duration_ms`] reads back.
fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn patterns(v: &Value) -> Result<Vec<String>, RuleError> {
    let list = v
        .as_array()
        .filter(|l| !l.is_empty() && l.len() <= MAX_PATTERNS)
        .ok_or_else(|| RuleError::new("devices", RuleProblem::Patterns))?;
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        // A device id's characters (PROTOCOL.md §2) and the two wildcards:
        // anything else could never match a device.
        let p = p
            .as_str()
            .filter(|p| {
                let n = p.chars().count();
                (1..=MAX_PATTERN_CHARS).contains(&n)
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-*?".contains(c))
            })
            .ok_or_else(|| RuleError::new(format!("devices[{i}]"), RuleProblem::Pattern))?;
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

fn groups(v: &Value) -> Result<Vec<Box<str>>, RuleError> {
    let list = v
        .as_array()
        .filter(|l| !l.is_empty() && l.len() <= MAX_GROUPS)
        .ok_or_else(|| RuleError::new("groups", RuleProblem::Groups))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, g) in list.iter().enumerate() {
        let g = g
            .as_str()
            .filter(|g| {
                let n = g.chars().count();
                (1..=MAX_GROUP_CHARS).contains(&n) && !g.chars().any(char::is_control)
            })
            .ok_or_else(|| RuleError::new(format!("groups[{i}]"), RuleProblem::Group))?;
        out.push(Box::from(g));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A rejected rule: the field (`""` for the whole document) and what is
/// wrong with it. `Display` is fit for an HTTP 400 as is.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    field: String,
    problem: RuleProblem,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleProblem {
    #[error("must be a JSON object")]
    NotObject,
    #[error("is required")]
    Missing,
    #[error("is not a known field")]
    Unknown,
    #[error("is not a field of a {0} rule")]
    NotForKind(RuleKind),
    #[error("must be one of overspeed, low_battery, inactive, offline, event")]
    Kind,
    #[error("must be a number of m/s greater than 0")]
    Speed,
    #[error("must be a battery level greater than 0 and at most 100")]
    Battery,
    #[error(
        "must be a duration such as \"30s\" or \"5m\", greater than 0, at most 365 days, in \
         whole milliseconds"
    )]
    Duration,
    #[error("must be one of info, warning, critical")]
    Severity,
    #[error("must be a list of 1 to 1000 device patterns (omit it for every device)")]
    Patterns,
    #[error("must be 1 to 128 characters of A-Z, a-z, 0-9, _ . - and the wildcards * ?")]
    Pattern,
    #[error("must be a list of 1 to 100 group names (omit it for no group condition)")]
    Groups,
    #[error("must be a non-empty string of at most 64 characters, without control characters")]
    Group,
    #[error(
        "must be an event kind of 1 to 64 characters, without control characters, not starting \
         with \"alert.\" (a rule on alerts would re-raise its own)"
    )]
    EventKind,
    #[error("{0}")]
    Webhook(WebhookProblem),
}

impl RuleError {
    fn new(field: impl Into<String>, problem: RuleProblem) -> Self {
        RuleError {
            field: field.into(),
            problem,
        }
    }

    /// The offending field's path (`""` for the whole document).
    pub fn field(&self) -> &str {
        &self.field
    }

    pub fn problem(&self) -> &RuleProblem {
        &self.problem
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "the rule {}", self.problem)
        } else {
            write!(f, "{} {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for RuleError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(v: Value) -> Rule {
        Rule::from_json(7, &v).unwrap()
    }

    fn reject(v: Value) -> RuleError {
        Rule::from_json(7, &v).unwrap_err()
    }

    #[test]
    fn every_kind_parses_with_its_defaults_and_round_trips() {
        let cases = [
            (
                json!({"kind": "overspeed", "speed": 27.5, "for": "30s"}),
                Condition::Overspeed {
                    speed: 27.5,
                    for_ms: 30_000,
                },
            ),
            (
                json!({"kind": "low_battery", "battery": 15}),
                Condition::LowBattery { battery: 15.0 },
            ),
            (
                json!({"kind": "inactive", "after": "1h 30m"}),
                Condition::Inactive {
                    after_ms: 5_400_000,
                },
            ),
            (json!({"kind": "offline"}), Condition::Offline),
            (
                json!({"kind": "event", "event_kind": "panic"}),
                Condition::Event {
                    event_kind: "panic".into(),
                },
            ),
        ];
        for (v, condition) in cases {
            let r = rule(v.clone());
            assert_eq!(r.condition(), &condition, "{v}");
            assert_eq!(r.id(), 7);
            assert_eq!(r.severity(), Severity::Warning);
            assert_eq!(r.alert_kind(), format!("alert.{}", r.kind()));
            assert!(r.devices().is_empty() && r.groups().is_empty() && r.webhook().is_none());
            // Canonical out, and the same rule back in.
            let out = r.to_json();
            assert_eq!(out["id"], 7);
            assert_eq!(out["severity"], "warning");
            assert_eq!(Rule::from_json(7, &out).unwrap(), r);
        }
        assert_eq!(
            rule(json!({"kind": "inactive", "after": "90m"})).to_json()["after"],
            "1h 30m"
        );
    }

    #[test]
    fn canonical_form_keeps_everything_given() {
        let r = rule(json!({
            "id": 99, "kind": "overspeed", "speed": 30, "for": "1500ms",
            "devices": ["truck-*", "van-?", "truck-*"], "groups": ["south", "north", "south"],
            "severity": "critical",
            "webhook": {"url": "https://hooks.example/x", "secret": "k"}
        }));
        assert_eq!(
            r.to_json(),
            json!({
                "id": 7, "kind": "overspeed", "speed": 30.0, "for": "1s 500ms",
                "devices": ["truck-*", "van-?"], "groups": ["north", "south"],
                "severity": "critical",
                "webhook": {"url": "https://hooks.example/x", "secret": "k"}
            })
        );
        assert_eq!(r.webhook().unwrap().secret(), "k");
        assert_eq!(
            r.condition(),
            &Condition::Overspeed {
                speed: 30.0,
                for_ms: 1500
            }
        );
    }

    #[test]
    fn applies_to_devices_and_groups() {
        let all = rule(json!({"kind": "offline"}));
        assert!(all.applies_to::<&str>("anything", &[]));
        let trucks = rule(json!({"kind": "offline", "devices": ["truck-*", "van-1"]}));
        assert!(trucks.applies_to::<&str>("truck-7", &[]));
        assert!(trucks.applies_to::<&str>("van-1", &[]));
        assert!(!trucks.applies_to::<&str>("van-2", &[]));
        let north_trucks =
            rule(json!({"kind": "offline", "devices": ["truck-*"], "groups": ["north"]}));
        assert!(north_trucks.applies_to("truck-7", &["south", "north"]));
        assert!(!north_trucks.applies_to("truck-7", &["south"]));
        assert!(!north_trucks.applies_to("van-1", &["north"]));
    }

    #[test]
    fn every_problem_names_its_field() {
        use RuleProblem::*;
        let cases: Vec<(Value, &str, RuleProblem)> = vec![
            (json!([]), "", NotObject),
            (json!({}), "kind", Missing),
            (json!({"kind": "fast"}), "kind", Kind),
            (json!({"kind": "offline", "color": "red"}), "color", Unknown),
            (
                json!({"kind": "low_battery", "battery": 5, "speed": 3}),
                "speed",
                NotForKind(RuleKind::LowBattery),
            ),
            (
                json!({"kind": "offline", "after": "5m"}),
                "after",
                NotForKind(RuleKind::Offline),
            ),
            (json!({"kind": "overspeed", "for": "30s"}), "speed", Missing),
            (json!({"kind": "overspeed", "speed": 20}), "for", Missing),
            (
                json!({"kind": "overspeed", "speed": 0, "for": "30s"}),
                "speed",
                Speed,
            ),
            (
                json!({"kind": "overspeed", "speed": "9", "for": "30s"}),
                "speed",
                Speed,
            ),
            (
                json!({"kind": "overspeed", "speed": 9, "for": "0s"}),
                "for",
                Duration,
            ),
            (
                json!({"kind": "overspeed", "speed": 9, "for": 30}),
                "for",
                Duration,
            ),
            (
                json!({"kind": "overspeed", "speed": 9, "for": "30"}),
                "for",
                Duration,
            ),
            (
                json!({"kind": "overspeed", "speed": 9, "for": "1500us"}),
                "for",
                Duration,
            ),
            (
                json!({"kind": "inactive", "after": "0ms"}),
                "after",
                Duration,
            ),
            (
                json!({"kind": "inactive", "after": "366days"}),
                "after",
                Duration,
            ),
            (json!({"kind": "inactive"}), "after", Missing),
            (
                json!({"kind": "low_battery", "battery": 0}),
                "battery",
                Battery,
            ),
            (
                json!({"kind": "low_battery", "battery": 100.5}),
                "battery",
                Battery,
            ),
            (json!({"kind": "event"}), "event_kind", Missing),
            (
                json!({"kind": "event", "event_kind": ""}),
                "event_kind",
                EventKind,
            ),
            (
                json!({"kind": "event", "event_kind": "alert.overspeed"}),
                "event_kind",
                EventKind,
            ),
            (
                json!({"kind": "event", "event_kind": "x".repeat(65)}),
                "event_kind",
                EventKind,
            ),
            (
                json!({"kind": "offline", "severity": "high"}),
                "severity",
                Severity,
            ),
            (
                json!({"kind": "offline", "devices": []}),
                "devices",
                Patterns,
            ),
            (
                json!({"kind": "offline", "devices": "truck-*"}),
                "devices",
                Patterns,
            ),
            (
                json!({"kind": "offline", "devices": ["ok", "a b"]}),
                "devices[1]",
                Pattern,
            ),
            (json!({"kind": "offline", "groups": []}), "groups", Groups),
            (
                json!({"kind": "offline", "groups": ["a", 1]}),
                "groups[1]",
                Group,
            ),
            (
                json!({"kind": "offline", "webhook": "https://x"}),
                "webhook",
                Webhook(WebhookProblem::NotObject),
            ),
            (
                json!({"kind": "offline", "webhook": {"url": "https://x"}}),
                "webhook.secret",
                Webhook(WebhookProblem::Missing),
            ),
            (
                json!({"kind": "offline", "webhook": {"url": "gopher://x", "secret": "s"}}),
                "webhook.url",
                Webhook(WebhookProblem::Url),
            ),
        ];
        for (v, field, problem) in cases {
            let e = reject(v.clone());
            assert_eq!((e.field(), e.problem()), (field, &problem), "{v}");
        }
        assert_eq!(
            reject(json!({"kind": "overspeed", "speed": 9, "for": "0s"})).to_string(),
            "for must be a duration such as \"30s\" or \"5m\", greater than 0, at most 365 days, \
             in whole milliseconds"
        );
        assert_eq!(
            reject(json!({"kind": "low_battery", "battery": 5, "speed": 3})).to_string(),
            "speed is not a field of a low_battery rule"
        );
    }

    #[test]
    fn null_is_absent() {
        let r = rule(json!({"kind": "offline", "devices": null, "webhook": null}));
        assert!(r.devices().is_empty() && r.webhook().is_none());
        // A member the kind does not take is refused even when null, as
        // an unknown one is: the client meant something by it.
        assert_eq!(
            reject(json!({"kind": "offline", "speed": null})).field(),
            "speed"
        );
    }
}
