//! Geofences in the bridge (docs/geofences.md): the fences every bridge
//! holds in memory ([`Fences`], a [`Snapshot`] kept current by [`load`]),
//! the membership each location is given before `location.lua` decides,
//! atomically with the hot state, whether it changed, and the [`drain`]
//! that turns each decided change into `geofence_enter`/`geofence_exit`
//! events on the existing event path.

pub mod alerts;
pub mod drain;
pub mod load;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use fieldcast_core::rule::{Condition, Rule};
use fieldcast_core::{Location, Partition, Severity};
use fieldcast_geofence::{FenceId, FenceIndex};
use tokio::sync::Notify;

/// What an event of a fence needs, kept also for deleted fences: a
/// device inside a fence that is then deleted gets its exit, with the name.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceInfo {
    pub name: String,
    pub severity: Severity,
}

/// One consistent view of the configuration: fences, device groups, and
/// the configuration version they were read at.
pub struct Snapshot {
    /// `config_version` when read; 0 = nothing loaded yet, and then the
    /// location step leaves every membership as it is.
    pub version: i64,
    index: FenceIndex,
    info: HashMap<FenceId, FenceInfo>,
    /// Device id -> its groups, sorted.
    groups: HashMap<Box<str>, Vec<Box<str>>>,
    /// Whether some live fence is limited to groups: if none is, the
    /// lookup needs no device groups.
    grouped: bool,
    /// Live alert rules, by id.
    rules: Vec<Rule>,
    /// Webhooks of fences (live and deleted), by fence id.
    hooks: HashMap<FenceId, fieldcast_core::webhook::Webhook>,
}

impl Snapshot {
    /// Nothing loaded.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            index: FenceIndex::new(Vec::new()),
            info: HashMap::new(),
            groups: HashMap::new(),
            grouped: false,
            rules: Vec::new(),
            hooks: HashMap::new(),
        }
    }

    pub fn new(
        version: i64,
        live: Vec<fieldcast_geofence::Fence>,
        deleted: impl IntoIterator<Item = (FenceId, FenceInfo)>,
        groups: HashMap<Box<str>, Vec<Box<str>>>,
    ) -> Snapshot {
        let mut info: HashMap<FenceId, FenceInfo> = deleted.into_iter().collect();
        let mut grouped = false;
        let mut hooks = HashMap::new();
        for f in &live {
            grouped |= !f.groups().is_empty();
            if let Some(w) = f.webhook() {
                hooks.insert(f.id(), w.clone());
            }
            info.insert(
                f.id(),
                FenceInfo {
                    name: f.name().to_owned(),
                    severity: Severity::parse(f.severity().as_str()).unwrap_or(Severity::Info),
                },
            );
        }
        Snapshot {
            version,
            index: FenceIndex::new(live),
            info,
            groups,
            grouped,
            rules: Vec::new(),
            hooks,
        }
    }

    /// The snapshot with these live alert rules.
    pub fn with_rules(mut self, mut rules: Vec<Rule>) -> Snapshot {
        rules.sort_by_key(Rule::id);
        self.rules = rules;
        self
    }

    pub fn rule(&self, id: u64) -> Option<&Rule> {
        self.rules
            .binary_search_by_key(&id, Rule::id)
            .ok()
            .map(|i| &self.rules[i])
    }

    pub fn fence_webhook(&self, id: FenceId) -> Option<&fieldcast_core::webhook::Webhook> {
        self.hooks.get(&id)
    }

    fn device_groups(&self, device: &str) -> &[Box<str>] {
        self.groups.get(device).map_or(&[], Vec::as_slice)
    }

    /// The live rules of `device`, in id order.
    pub fn rules_of<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        let groups = if self.rules.is_empty() {
            &[][..]
        } else {
            self.device_groups(device)
        };
        self.rules
            .iter()
            .filter(move |r| r.applies_to(device, groups))
    }

    /// `location.lua`'s overspeed argument for `device` at `loc` into `out`
    /// (cleared first): `<rule>:<for ms>` for each overspeed rule of the
    /// device whose speed limit the location is above, comma-separated.
    pub fn overspeed_into(&self, device: &str, loc: &Location, out: &mut String) {
        out.clear();
        let Some(speed) = loc.speed else { return };
        if self.rules.is_empty() {
            return;
        }
        for r in self.rules_of(device) {
            if let Condition::Overspeed {
                speed: limit,
                for_ms,
            } = r.condition()
            {
                if speed > *limit {
                    if !out.is_empty() {
                        out.push(',');
                    }
                    let _ = write!(out, "{}:{for_ms}", r.id());
                }
            }
        }
    }

    /// `status.lua`'s rule arguments for `device`: the low-battery rules as
    /// `<rule>:<level>` and the offline rules' ids, each comma-separated.
    pub fn status_rules(&self, device: &str) -> (String, String) {
        let (mut low, mut offline) = (String::new(), String::new());
        for r in self.rules_of(device) {
            match r.condition() {
                Condition::LowBattery { battery } => {
                    if !low.is_empty() {
                        low.push(',');
                    }
                    let _ = write!(
                        low,
                        "{}:{}",
                        r.id(),
                        fieldcast_core::live::fmt_f64(*battery)
                    );
                }
                Condition::Offline => {
                    if !offline.is_empty() {
                        offline.push(',');
                    }
                    let _ = write!(offline, "{}", r.id());
                }
                _ => {}
            }
        }
        (low, offline)
    }

    /// `event.lua`'s rule argument: the ids of `device`'s `event` rules
    /// naming `kind`, comma-separated.
    pub fn event_rules(&self, device: &str, kind: &str) -> String {
        let mut out = String::new();
        if self.rules.is_empty() {
            return out;
        }
        for r in self.rules_of(device) {
            if matches!(r.condition(), Condition::Event { event_kind } if event_kind == kind) {
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "{}", r.id());
            }
        }
        out
    }

    /// The inactive rules: (rule, silence in ms).
    pub fn inactive_rules(&self) -> impl Iterator<Item = (&Rule, u64)> {
        self.rules.iter().filter_map(|r| match r.condition() {
            Condition::Inactive { after_ms } => Some((r, *after_ms)),
            _ => None,
        })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn fences(&self) -> usize {
        self.index.len()
    }

    pub fn info(&self, id: FenceId) -> Option<&FenceInfo> {
        self.info.get(&id)
    }

    /// Writes the membership of `device` at `loc` into `out` (cleared
    /// first) as `location.lua` stores it: the ids of the fences holding
    /// it, ascending, comma-separated; empty for none. `ids` is scratch.
    pub fn membership_into(
        &self,
        device: &str,
        loc: &Location,
        ids: &mut Vec<FenceId>,
        out: &mut String,
    ) {
        out.clear();
        if self.index.is_empty() {
            return;
        }
        let groups: &[Box<str>] = if self.grouped {
            self.device_groups(device)
        } else {
            &[]
        };
        self.index
            .containing_into(loc.lat, loc.lon, loc.ts, groups, ids);
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{id}");
        }
    }
}

/// Parses a stored membership; ids that do not parse are skipped (they
/// cannot come from this code).
pub fn parse_membership(s: &str) -> Vec<FenceId> {
    let mut ids: Vec<FenceId> = s
        .split(',')
        .filter_map(|p| p.parse().ok().map(FenceId))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The bridge's current [`Snapshot`], swapped whole on reload, and the
/// signal that a location step recorded membership changes.
pub struct Fences {
    current: RwLock<Arc<Snapshot>>,
    changed: Notify,
    /// Partitions whose transitions stream has new entries, for the drain
    /// to read those alone (at most one entry per partition).
    dirty: Mutex<Vec<Partition>>,
}

impl Default for Fences {
    fn default() -> Self {
        Fences {
            current: RwLock::new(Arc::new(Snapshot::empty())),
            changed: Notify::new(),
            dirty: Mutex::new(Vec::new()),
        }
    }
}

impl Fences {
    pub fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc:
        // the value is still a whole snapshot.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, s: Snapshot) {
        let s = Arc::new(s);
        match self.current.write() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }

    /// Called after a Redis step recorded changes in the streams of
    /// `partitions`: the drain reads those now rather than at its poll.
    pub fn wake_drain(&self, partitions: &[Partition]) {
        {
            let mut dirty = match self.dirty.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for p in partitions {
                if !dirty.contains(p) {
                    dirty.push(*p);
                }
            }
        }
        self.changed.notify_one();
    }

    /// Waits for a wake-up and takes the partitions it named.
    pub(crate) async fn changed(&self) -> Vec<Partition> {
        self.changed.notified().await;
        let mut dirty = match self.dirty.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldcast_geofence::Fence;
    use serde_json::json;

    fn square(id: u64, lon: f64, lat: f64, groups: &[&str]) -> Fence {
        let mut props = json!({"name": format!("f{id}")});
        if !groups.is_empty() {
            props["groups"] = json!(groups);
        }
        let v = json!({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [[
            [lon, lat], [lon + 1.0, lat], [lon + 1.0, lat + 1.0], [lon, lat + 1.0], [lon, lat]
        ]]}});
        Fence::from_feature(FenceId(id), &v).unwrap()
    }

    fn at(lat: f64, lon: f64) -> Location {
        Location::point(1_700_000_000_000, lat, lon)
    }

    #[test]
    fn membership_is_sorted_ids_and_follows_groups() {
        let mut groups = HashMap::new();
        groups.insert("v1".into(), vec!["north".into()]);
        let s = Snapshot::new(
            7,
            vec![
                square(12, 0.0, 0.0, &[]),
                square(3, 0.5, 0.5, &[]),
                square(9, 0.0, 0.0, &["north"]),
            ],
            [],
            groups,
        );
        let (mut ids, mut out) = (Vec::new(), String::new());
        s.membership_into("v1", &at(0.7, 0.7), &mut ids, &mut out);
        assert_eq!(out, "3,9,12");
        s.membership_into("v2", &at(0.7, 0.7), &mut ids, &mut out);
        assert_eq!(out, "3,12", "v2 is in no group");
        s.membership_into("v1", &at(10.0, 10.0), &mut ids, &mut out);
        assert_eq!(out, "");
        assert_eq!(
            parse_membership("3,9,12"),
            vec![FenceId(3), FenceId(9), FenceId(12)]
        );
        assert_eq!(parse_membership(""), vec![]);
    }
}
