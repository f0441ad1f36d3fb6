//! The `/ws` frames of PROTOCOL.md §4: client commands parsed into types,
//! server replies built as text.

use fieldcast_core::{DeviceId, DeviceState};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cursor::{Cursor, SentCursor};
use crate::live::hub::Selection;
use fieldcast_core::geo::BBox;

/// A client's `ref`, echoed back verbatim (a string or a number).
pub type Ref = Option<Box<RawValue>>;

/// One parsed client frame.
#[derive(Debug)]
pub enum Command {
    Subscribe {
        r: Ref,
        selection: Selection,
        since: Option<Since>,
    },
    Unsubscribe {
        r: Ref,
        selection: Selection,
    },
    Ping {
        r: Ref,
    },
}

/// The `since` of a subscribe: a cursor, or text that is not one (which
/// gets `cursor_expired`, the subscription still going ahead), such as a
/// cursor of the single event log before partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    Cursor(SentCursor),
    Malformed,
}

/// A frame that cannot be obeyed, with the `ref` when it could be read.
#[derive(Debug)]
pub struct BadFrame {
    pub r: Ref,
    pub message: String,
}

#[derive(Deserialize)]
struct Raw {
    op: Option<String>,
    #[serde(rename = "ref")]
    r: Option<Box<RawValue>>,
    devices: Option<Vec<String>>,
    fleet: Option<bool>,
    bbox: Option<serde_json::Value>,
    channels: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    since: Option<String>,
}

const MAX_CHANNEL_LEN: usize = 256;

impl Command {
    pub fn parse(text: &str) -> Result<Command, BadFrame> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| BadFrame {
            r: None,
            message: format!("not a command: {e}"),
        })?;
        let r = raw.r.filter(|v| {
            v.get().starts_with('"')
                || v.get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        });
        let bad = |r: Ref, m: &str| BadFrame {
            r,
            message: m.to_owned(),
        };
        let op = raw.op.unwrap_or_default();
        match op.as_str() {
            "ping" => Ok(Command::Ping { r }),
            "subscribe" | "unsubscribe" => {
                let unsubscribe = op == "unsubscribe";
                let named = Named {
                    fleet: raw.fleet,
                    devices: raw.devices,
                    channels: raw.channels,
                    groups: raw.groups,
                    bbox: raw.bbox,
                };
                let selection = match selection(unsubscribe, named) {
                    Ok(s) => s,
                    Err(m) => return Err(bad(r, &m)),
                };
                if unsubscribe {
                    return Ok(Command::Unsubscribe { r, selection });
                }
                let since = raw.since.map(|s| match s.parse::<SentCursor>() {
                    Ok(c) => Since::Cursor(c),
                    Err(_) => Since::Malformed,
                });
                Ok(Command::Subscribe {
                    r,
                    selection,
                    since,
                })
            }
            "" => Err(bad(r, "missing op")),
            other => Err(bad(r, &format!("unknown op {other:?}"))),
        }
    }
}

/// The selectors of a subscribe or unsubscribe frame, as sent.
struct Named {
    fleet: Option<bool>,
    devices: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    bbox: Option<serde_json::Value>,
}

/// What a subscribe or unsubscribe names, each device id and group name
/// checked, or why it cannot be obeyed.
fn selection(unsubscribe: bool, named: Named) -> Result<Selection, String> {
    let Named {
        fleet,
        devices,
        channels,
        groups,
        bbox,
    } = named;
    let mut selection = Selection {
        fleet: fleet.unwrap_or(false),
        ..Default::default()
    };
    if let Some(g) = groups {
        // A subscription names a few groups; the cap is a device's.
        selection.groups = crate::live::groups::parse_groups(&g).map_err(|e| e.to_string())?;
    }
    for d in devices.unwrap_or_default() {
        match DeviceId::parse(&d) {
            Ok(id) => selection.devices.push(id),
            Err(e) => return Err(format!("device {d:?}: {e}")),
        }
    }
    selection.devices.sort();
    selection.devices.dedup();
    for c in channels.unwrap_or_default() {
        if c.is_empty() || c.len() > MAX_CHANNEL_LEN {
            return Err("a channel is 1..256 bytes".to_owned());
        }
        selection.channels.push(c);
    }
    selection.channels.sort();
    selection.channels.dedup();
    if let Some(b) = bbox {
        match parse_bbox(&b) {
            Ok(bbox) => selection.bbox = Some(bbox),
            // `unsubscribe` takes any bbox value to mean "the bbox".
            Err(_) if unsubscribe => {
                selection.bbox = Some(BBox {
                    min_lon: 0.0,
                    min_lat: 0.0,
                    max_lon: 0.0,
                    max_lat: 0.0,
                })
            }
            Err(m) => return Err(m),
        }
    }
    if selection.is_empty() {
        return Err("name devices, fleet, bbox, groups or channels".to_owned());
    }
    Ok(selection)
}

/// `[minLon,minLat,maxLon,maxLat]`, numbers only.
fn parse_bbox(b: &serde_json::Value) -> Result<BBox, String> {
    let nums: Option<Vec<f64>> = b
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect());
    nums.filter(|n| b.as_array().is_some_and(|a| a.len() == n.len()))
        .ok_or_else(|| "bbox must be [minLon,minLat,maxLon,maxLat]".to_owned())
        .and_then(|n| BBox::from_slice(&n).map_err(|e| e.to_string()))
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<&'a [DeviceState]>,
    /// `true` on every frame of a large snapshot but its last (§4).
    #[serde(skip_serializing_if = "Option::is_none")]
    more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl<'a> Reply<'a> {
    fn new(ty: &'static str, r: &'a Ref) -> Self {
        Reply {
            ty,
            r: r.as_deref(),
            devices: None,
            more: None,
            cursor: None,
            code: None,
            message: None,
        }
    }

    fn text(&self) -> String {
        // Only strings, finite numbers and valid raw JSON: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One frame of a snapshot sent in parts: `"more":true` on all but the
/// last (PROTOCOL.md §4); a snapshot of one part is just the last.
pub fn snapshot_part(r: &Ref, devices: &[DeviceState], more: bool) -> String {
    Reply {
        devices: Some(devices),
        more: more.then_some(true),
        ..Reply::new("snapshot", r)
    }
    .text()
}

pub fn subscribed(r: &Ref, cursor: &Cursor) -> String {
    Reply {
        cursor: Some(cursor.encode()),
        ..Reply::new("subscribed", r)
    }
    .text()
}

pub fn unsubscribed(r: &Ref) -> String {
    Reply::new("unsubscribed", r).text()
}

pub fn pong(r: &Ref) -> String {
    Reply::new("pong", r).text()
}

/// The `code` of an `error` frame (PROTOCOL.md §4), as HTTP has
/// `ApiError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// The frame is not a valid command.
    BadRequest,
    /// A device or channel outside the token's scope.
    Forbidden,
    /// The token expired; the connection closes after this frame.
    TokenExpired,
    /// More subscriptions than `FIELDCAST_WS_MAX_SUBSCRIPTIONS`.
    TooManySubscriptions,
    /// Redis or the live feed is away; try again.
    Unavailable,
    /// The cursor cannot be replayed; reload history over HTTP.
    CursorExpired,
}

impl WsError {
    pub fn code(self) -> &'static str {
        match self {
            WsError::BadRequest => "bad_request",
            WsError::Forbidden => "forbidden",
            WsError::TokenExpired => "token_expired",
            WsError::TooManySubscriptions => "too_many_subscriptions",
            WsError::Unavailable => "unavailable",
            WsError::CursorExpired => "cursor_expired",
        }
    }
}

pub fn error(r: &Ref, code: WsError, message: &str) -> String {
    Reply {
        code: Some(code.code()),
        message: Some(message),
        ..Reply::new("error", r)
    }
    .text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_commands() {
        let c = Command::parse(r#"{"op":"subscribe","ref":"1","devices":["truck-7","truck-9"]}"#)
            .unwrap();
        let Command::Subscribe {
            r,
            selection,
            since,
        } = c
        else {
            panic!()
        };
        assert_eq!(r.unwrap().get(), "\"1\"");
        assert_eq!(selection.devices.len(), 2);
        assert_eq!(since, None);
        let cursor = crate::cursor::Cursor::new(vec![crate::cursor::Position::new(
            "00000000000000ab".parse().unwrap(),
            "1-2".parse().unwrap(),
        )])
        .encode();
        let c = Command::parse(&format!(
            r#"{{"op":"subscribe","ref":"5","fleet":true,"since":"{cursor}"}}"#
        ))
        .unwrap();
        let Command::Subscribe { since, .. } = c else {
            panic!()
        };
        assert_eq!(since, Some(Since::Cursor(cursor.parse().unwrap())));
        // A bare stream id (the format before epochs) or a cursor of the
        // single log before partitions is not a cursor.
        for old in ["1-2", "garbage", "00000000000000ab:1-2"] {
            let c = Command::parse(&format!(
                r#"{{"op":"subscribe","ref":"5","fleet":true,"since":"{old}"}}"#
            ))
            .unwrap();
            let Command::Subscribe { since, .. } = c else {
                panic!()
            };
            assert_eq!(since, Some(Since::Malformed), "{old}");
        }
        let c = Command::parse(r#"{"op":"subscribe","ref":"3","bbox":[-1,50,1,52]}"#).unwrap();
        let Command::Subscribe { selection, .. } = c else {
            panic!()
        };
        assert!(selection.bbox.is_some());
        // minLon > maxLon: a box across the 180° meridian (§4).
        let c =
            Command::parse(r#"{"op":"subscribe","ref":"3","bbox":[170,-10,-170.5,10]}"#).unwrap();
        let Command::Subscribe { selection, .. } = c else {
            panic!()
        };
        let b = selection.bbox.unwrap();
        assert!(b.wraps());
        assert!(b.contains(-175.0, 0.0) && b.contains(175.0, 0.0) && !b.contains(0.0, 0.0));
        assert!(matches!(
            Command::parse(r#"{"op":"ping","ref":"7"}"#),
            Ok(Command::Ping { .. })
        ));
        assert!(matches!(
            Command::parse(r#"{"op":"unsubscribe","ref":"6","devices":["truck-9"]}"#),
            Ok(Command::Unsubscribe { .. })
        ));
        let c =
            Command::parse(r#"{"op":"subscribe","ref":"8","groups":["north","night"]}"#).unwrap();
        let Command::Subscribe { selection, .. } = c else {
            panic!()
        };
        assert_eq!(
            selection.groups,
            vec![Box::from("night"), Box::from("north")]
        );
        assert!(selection.has_device_selector());
    }

    #[test]
    fn bad_frames_keep_their_ref() {
        for bad in [
            r#"{"op":"subscribe","ref":"x"}"#,
            r#"{"op":"subscribe","ref":"x","devices":["a b"]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[1,2,3]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[1,4,3,2]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[-181,0,0,1]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[0,0,180.5,1]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[0,-91,1,1]}"#,
            r#"{"op":"subscribe","ref":"x","bbox":[0,0,"1",1]}"#,
            r#"{"op":"jump","ref":"x"}"#,
            r#"{"op":"subscribe","ref":"x","groups":["a b"]}"#,
            r#"{"op":"subscribe","ref":"x","groups":[""]}"#,
        ] {
            let e = Command::parse(bad).unwrap_err();
            assert_eq!(e.r.unwrap().get(), "\"x\"", "{bad}");
        }
        assert!(Command::parse("nope").is_err());
        assert!(Command::parse("[]").is_err());
    }

    #[test]
    fn replies() {
        let r: Ref = Some(RawValue::from_string("\"2\"".into()).unwrap());
        assert_eq!(pong(&r), r#"{"type":"pong","ref":"2"}"#);
        assert_eq!(
            error(&r, WsError::Forbidden, "no"),
            r#"{"type":"error","ref":"2","code":"forbidden","message":"no"}"#
        );
        assert_eq!(
            snapshot_part(&r, &[], true),
            r#"{"type":"snapshot","ref":"2","devices":[],"more":true}"#
        );
        assert_eq!(
            snapshot_part(&r, &[], false),
            r#"{"type":"snapshot","ref":"2","devices":[]}"#
        );
        let c = Cursor::new(vec!["0123456789abcdef:3-4".parse().unwrap()]);
        assert_eq!(
            subscribed(&None, &c),
            format!(r#"{{"type":"subscribed","cursor":"{}"}}"#, c.encode())
        );
    }
}
