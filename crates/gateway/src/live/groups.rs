//! Device groups (issue #16) as the gateway holds them: a copy of
//! PostgreSQL's `device_groups` (the authority), kept current by
//! [`crate::store::groups`] and read by the hub (group subscriptions,
//! group-scoped tokens) and the HTTP API (`DeviceState.groups`, `?group=`).
//!
//! The copy is an immutable [`Memberships`] behind an `Arc`, swapped by the
//! hub on each change: changes are rare (an admin's PUT), reads are on
//! every live update and every snapshot, so readers clone an `Arc` and
//! never wait on a writer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One device's groups: sorted, no repeats; shared by every reader.
pub type Groups = Arc<[Box<str>]>;

/// Most groups one device may be in.
pub const MAX_GROUPS_PER_DEVICE: usize = 32;
/// Longest group name, in bytes (as a fence's or a rule's group names).
pub const MAX_GROUP_LEN: usize = 64;

/// Why a group name or list is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group {0:?}: a group name is 1 to 64 characters of A-Z a-z 0-9 _ . -")]
    Name(String),
    #[error("a device is in at most {MAX_GROUPS_PER_DEVICE} groups")]
    TooMany,
}

/// Checks one group name: the device-id charset, so a name is safe in a
/// URL query, a JWT claim and a log line without escaping.
pub fn parse_group(name: &str) -> Result<Box<str>, GroupError> {
    let ok = (1..=MAX_GROUP_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(name.into())
    } else {
        Err(GroupError::Name(name.chars().take(80).collect()))
    }
}

/// Checks a device's list of groups: each name, then the count after
/// repeats are dropped. Sorted.
pub fn parse_groups<S: AsRef<str>>(names: &[S]) -> Result<Vec<Box<str>>, GroupError> {
    let mut out = names
        .iter()
        .map(|n| parse_group(n.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    if out.len() > MAX_GROUPS_PER_DEVICE {
        return Err(GroupError::TooMany);
    }
    Ok(out)
}

/// Every device's groups, and every group's devices.
#[derive(Debug, Clone)]
pub struct Memberships {
    by_device: HashMap<Box<str>, Groups>,
    by_group: HashMap<Box<str>, BTreeSet<Box<str>>>,
    /// Handed out for a device without groups, so a lookup never allocates.
    empty: Groups,
}

impl Default for Memberships {
    fn default() -> Self {
        Memberships {
            by_device: HashMap::new(),
            by_group: HashMap::new(),
            empty: Arc::from(Vec::new()),
        }
    }
}

impl Memberships {
    /// From `(device, group)` rows in any order.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut lists: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        for (d, g) in rows {
            lists.entry(d.into()).or_default().push(g.into());
        }
        let mut m = Memberships::default();
        for (d, mut gs) in lists {
            gs.sort();
            gs.dedup();
            m.set(&d, Arc::from(gs));
        }
        m
    }

    /// The groups of `device` (empty when none).
    pub fn of(&self, device: &str) -> &Groups {
        self.by_device.get(device).unwrap_or(&self.empty)
    }

    /// The groups of `device` as `DeviceState.groups` carries them.
    pub fn names_of(&self, device: &str) -> Vec<String> {
        self.of(device).iter().map(|g| g.to_string()).collect()
    }

    /// The devices in `group`, sorted.
    pub fn members(&self, group: &str) -> impl Iterator<Item = &str> {
        self.by_group
            .get(group)
            .into_iter()
            .flat_map(|s| s.iter().map(|d| &**d))
    }

    /// Gives `device` exactly `groups`; returns the groups it had.
    pub fn set(&mut self, device: &str, groups: Groups) -> Groups {
        let old = if groups.is_empty() {
            self.by_device.remove(device)
        } else {
            self.by_device.insert(device.into(), groups.clone())
        }
        .unwrap_or_else(|| self.empty.clone());
        for g in old.iter() {
            if let Some(s) = self.by_group.get_mut(g) {
                s.remove(device);
                if s.is_empty() {
                    self.by_group.remove(g);
                }
            }
        }
        for g in groups.iter() {
            self.by_group
                .entry(g.clone())
                .or_default()
                .insert(device.into());
        }
        old
    }

    /// The devices whose groups differ in `new`, with their groups there.
    pub fn changes_to(&self, new: &Memberships) -> Vec<(Box<str>, Groups)> {
        let mut out: Vec<(Box<str>, Groups)> = new
            .by_device
            .iter()
            .filter(|(d, g)| self.of(d) != *g)
            .map(|(d, g)| (d.clone(), g.clone()))
            .collect();
        out.extend(
            self.by_device
                .keys()
                .filter(|d| !new.by_device.contains_key(*d))
                .map(|d| (d.clone(), new.empty.clone())),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Whether the two sorted lists share a name.
pub fn overlap<A: AsRef<str>, B: AsRef<str>>(a: &[A], b: &[B]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.as_ref() == y.as_ref()))
}

/// The live frame of a membership change (README, "Device groups"):
/// `{"type":"groups","device":"truck-7","groups":["north"]}`.
pub fn groups_json(device: &str, groups: &[Box<str>]) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        device: &'a str,
        groups: &'a [Box<str>],
    }
    // Strings only: cannot fail.
    serde_json::to_string(&Frame {
        ty: "groups",
        device,
        groups,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(names: &[&str]) -> Groups {
        names.iter().map(|n| Box::<str>::from(*n)).collect()
    }

    #[test]
    fn names_keep_to_their_charset_and_lists_to_their_count() {
        assert_eq!(
            parse_groups(&["night", "north", "night"]).unwrap(),
            vec![Box::from("night"), Box::from("north")]
        );
        for bad in ["", "a b", "nörd", "x,y", &"a".repeat(65)] {
            assert!(parse_group(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_GROUPS_PER_DEVICE)
            .map(|i| format!("g{i}"))
            .collect();
        assert_eq!(parse_groups(&many), Err(GroupError::TooMany));
        assert!(parse_groups(&many[1..]).is_ok());
    }

    #[test]
    fn set_keeps_both_directions_and_changes_name_the_movers() {
        let mut m = Memberships::from_rows([
            ("a".to_owned(), "north".to_owned()),
            ("b".to_owned(), "north".to_owned()),
            ("a".to_owned(), "night".to_owned()),
        ]);
        assert_eq!(m.of("a"), &g(&["night", "north"]));
        assert_eq!(m.members("north").collect::<Vec<_>>(), ["a", "b"]);
        let old = m.set("a", g(&["south"]));
        assert_eq!(old, g(&["night", "north"]));
        assert_eq!(m.members("north").collect::<Vec<_>>(), ["b"]);
        assert_eq!(m.members("night").count(), 0);
        let mut next = m.clone();
        next.set("b", g(&[]));
        next.set("c", g(&["north"]));
        let changes = m.changes_to(&next);
        assert_eq!(
            changes,
            vec![(Box::from("b"), g(&[])), (Box::from("c"), g(&["north"]))]
        );
        assert!(next.changes_to(&next).is_empty());
    }

    #[test]
    fn the_frame_names_device_and_groups() {
        assert_eq!(
            groups_json("t-1", &g(&["north"])),
            r#"{"type":"groups","device":"t-1","groups":["north"]}"#
        );
    }
}
