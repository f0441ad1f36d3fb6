//! A fence and its GeoJSON Feature, in and out.
//!
//! In (`POST`/`PUT /api/geofences`):
//!
//! ```json
//! {"type": "Feature",
//!  "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
//!  "properties": {"name": "Depot", "radius": 250, "groups": ["vans"],
//!                 "schedule": {"days": ["mon", "fri"], "from": "07:00", "to": "19:00"},
//!                 "severity": "warning"}}
//! ```
//!
//! `geometry` is a `Polygon` (holes allowed), a `Point` with `radius`
//! (metres) or a `LineString` with `width` (metres, the corridor's whole
//! width). `name` is required; `groups` (absent = every device),
//! `schedule` (see [`crate::schedule`]), `severity` (`info` default) and
//! `webhook` (`{"url", "secret"}`, see [`fieldcast_core::webhook`]: where
//! the bridge POSTs this fence's transitions) are optional. Any other member of `properties`, the Feature or its geometry
//! is refused (`bbox` is accepted and recomputed). An `id` in the input is
//! ignored: the store assigns it (`POST`) or the path names it (`PUT`).
//!
//! Out: the same Feature with `id`, in canonical form (severity always
//! written, schedule days in week order, altitudes dropped). The webhook is
//! written whole, secret included: this is what the store keeps for the
//! bridge. An API answer must drop `properties.webhook.secret`.

use crate::error::{FenceError, Problem};
use crate::geometry::{Position, Shape};
use crate::json::Obj;
use crate::schedule::Schedule;
use fieldcast_core::webhook::Webhook;
use fieldcast_core::Severity;
use serde_json::{json, Map, Value};
use std::fmt;

/// Longest fence name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most groups one fence may name.
pub const MAX_GROUPS: usize = 100;
/// Longest group name, in characters.
pub const MAX_GROUP_CHARS: usize = 64;

/// A fence's id: the store's key (a PostgreSQL `bigint` identity) and the
/// Feature's `id`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct FenceId(pub u64);

impl fmt::Display for FenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated fence.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    id: FenceId,
    name: String,
    shape: Shape,
    /// Sorted, no repeats; empty = every device.
    groups: Vec<Box<str>>,
    schedule: Option<Schedule>,
    severity: Severity,
    /// Where the bridge POSTs this fence's transitions.
    webhook: Option<Webhook>,
}

impl Fence {
    /// Parses and validates a GeoJSON Feature given as text.
    pub fn from_json(id: FenceId, text: &str) -> Result<Fence, FenceError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| FenceError::new("", Problem::Json(e.to_string())))?;
        Fence::from_feature(id, &v)
    }

    /// Parses and validates a GeoJSON Feature.
    pub fn from_feature(id: FenceId, v: &Value) -> Result<Fence, FenceError> {
        let feature = Obj::new(v, "", &["type", "id", "geometry", "properties", "bbox"])?;
        if feature.require("type")?.as_str() != Some("Feature") {
            return Err(feature.err("type", Problem::NotFeature));
        }
        let props = Obj::new(
            feature.require("properties")?,
            "properties",
            &[
                "name", "groups", "schedule", "severity", "radius", "width", "webhook",
            ],
        )?;
        let name = props
            .require("name")?
            .as_str()
            .map(str::trim)
            .filter(|n| valid_text(n, MAX_NAME_CHARS))
            .ok_or_else(|| {
                props.err(
                    "name",
                    Problem::Text(
                        "a non-empty string of at most 200 characters, without control characters",
                    ),
                )
            })?
            .to_string();
        let groups = match props.get("groups") {
            None => Vec::new(),
            Some(g) => parse_groups(g, &props.path("groups"))?,
        };
        let schedule = props
            .get("schedule")
            .map(|s| Schedule::parse(s, &props.path("schedule")))
            .transpose()?;
        let severity = match props.get("severity") {
            None => Severity::Info,
            Some(s) => s
                .as_str()
                .and_then(Severity::parse)
                .ok_or_else(|| props.err("severity", Problem::Severity))?,
        };
        let webhook = props
            .get("webhook")
            .map(|w| {
                Webhook::from_json(w).map_err(|e| {
                    let path = props.path("webhook");
                    let field = if e.member.is_empty() {
                        path
                    } else {
                        format!("{path}.{}", e.member)
                    };
                    FenceError::new(field, Problem::Webhook(e.problem))
                })
            })
            .transpose()?;
        let metres = |key: &str| -> Result<Option<(f64, String)>, FenceError> {
            match props.get(key) {
                None => Ok(None),
                Some(v) => {
                    let path = props.path(key);
                    // A non-number gets the same message as a bad number.
                    let m = v.as_f64().unwrap_or(f64::NAN);
                    Ok(Some((m, path)))
                }
            }
        };
        let shape = Shape::parse(
            feature.require("geometry")?,
            metres("radius")?,
            metres("width")?,
        )?;
        Ok(Fence {
            id,
            name,
            shape,
            groups,
            schedule,
            severity,
            webhook,
        })
    }

    /// The Feature, with `id`, as the API answers it.
    pub fn to_feature(&self) -> Value {
        let (geometry, extent) = self.shape.to_json();
        let mut props = Map::new();
        props.insert("name".into(), json!(self.name));
        if let Some((key, m)) = extent {
            props.insert(key.into(), json!(m));
        }
        if !self.groups.is_empty() {
            props.insert("groups".into(), json!(self.groups));
        }
        if let Some(s) = &self.schedule {
            props.insert("schedule".into(), s.to_json());
        }
        props.insert("severity".into(), json!(self.severity.as_str()));
        if let Some(w) = &self.webhook {
            props.insert("webhook".into(), w.to_json());
        }
        json!({
            "type": "Feature",
            "id": self.id,
            "geometry": geometry,
            "properties": props,
        })
    }

    pub fn id(&self) -> FenceId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The groups it applies to; empty = every device.
    pub fn groups(&self) -> &[Box<str>] {
        &self.groups
    }

    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// The severity of its enter/exit events.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// Where the bridge POSTs this fence's transitions, if anywhere.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// Whether the schedule (if any) is on at `at_ms`.
    pub fn is_active(&self, at_ms: i64) -> bool {
        self.schedule.as_ref().is_none_or(|s| s.is_active(at_ms))
    }

    /// Whether the fence applies to a device in `device_groups`: it names
    /// no groups, or one of the device's.
    pub fn applies_to<S: AsRef<str>>(&self, device_groups: &[S]) -> bool {
        self.groups.is_empty()
            || device_groups.iter().any(|g| {
                self.groups
                    .binary_search_by(|x| (**x).cmp(g.as_ref()))
                    .is_ok()
            })
    }

    /// The whole test, without an index: active, applies, and the point is
    /// inside. [`crate::FenceIndex::containing`] answers the same for
    /// every fence at once.
    pub fn contains<S: AsRef<str>>(
        &self,
        lat: f64,
        lon: f64,
        at_ms: i64,
        device_groups: &[S],
    ) -> bool {
        self.is_active(at_ms)
            && self.applies_to(device_groups)
            && self.shape.contains_any_part(pos(lat, lon))
    }
}

/// The fences as a GeoJSON FeatureCollection (`GET /api/geofences`).
pub fn feature_collection<'a>(fences: impl IntoIterator<Item = &'a Fence>) -> Value {
    let features: Vec<Value> = fences.into_iter().map(Fence::to_feature).collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// `[lon, lat]` from the (lat, lon) order the rest of Fieldcast uses.
pub(crate) fn pos(lat: f64, lon: f64) -> Position {
    [lon, lat]
}

fn valid_text(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

fn parse_groups(v: &Value, path: &str) -> Result<Vec<Box<str>>, FenceError> {
    let list = v
        .as_array()
        .filter(|l| !l.is_empty() && l.len() <= MAX_GROUPS)
        .ok_or_else(|| {
            FenceError::new(
                path,
                Problem::Text("a list of 1 to 100 group names (omit it for every device)"),
            )
        })?;
    let mut groups = Vec::with_capacity(list.len());
    for (i, g) in list.iter().enumerate() {
        let g = g
            .as_str()
            .filter(|g| valid_text(g, MAX_GROUP_CHARS))
            .ok_or_else(|| {
                FenceError::new(
                    format!("{path}[{i}]"),
                    Problem::Text(
                        "a non-empty string of at most 64 characters, without control characters",
                    ),
                )
            })?;
        groups.push(Box::from(g));
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}
