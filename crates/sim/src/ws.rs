//! The client side of the gateway's WebSocket protocol (PROTOCOL.md §4), as
//! much as `bench` and `probe` need: connect with a token, subscribe and wait
//! for `subscribed`, and read the handful of fields they look at in server
//! frames without building a JSON tree.

use fieldcast_core::geo::BBox;
use std::borrow::Cow;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connected gateway socket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{url}: {source}")]
    Connect {
        url: String,
        source: Box<tungstenite::Error>,
    },
    #[error("socket: {0}")]
    Socket(#[from] Box<tungstenite::Error>),
    #[error("the gateway closed the socket")]
    Closed,
    #[error("subscribe refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("no `subscribed` within {0:?}")]
    Timeout(Duration),
}

/// What a subscribe asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Fleet,
    Devices(Vec<String>),
    Bbox(BBox),
}

impl Selector {
    /// The subscribe frame for this selector.
    pub fn subscribe_frame(&self, reference: &str) -> String {
        let frame = match self {
            Selector::Fleet => serde_json::json!({"op":"subscribe","ref":reference,"fleet":true}),
            Selector::Devices(d) => {
                serde_json::json!({"op":"subscribe","ref":reference,"devices":d})
            }
            Selector::Bbox(b) => {
                serde_json::json!({"op":"subscribe","ref":reference,"bbox":b.to_array()})
            }
        };
        frame.to_string()
    }
}

/// The fields of a server frame that the bench and the probe read; the
/// rest (a snapshot's device list included) is skipped by the parser.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, rename = "ref")]
    pub reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub device: Option<Cow<'a, str>>,
    #[serde(default)]
    pub ts: Option<i64>,
    /// An event's id.
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    /// An event's `kind` (`door_open`, `alert.overspeed`, `geofence_enter`, ...).
    #[serde(default, borrow, rename = "kind")]
    pub event_kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub lat: Option<f64>,
    #[serde(default)]
    pub lon: Option<f64>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Option<Frame<'a>> {
        serde_json::from_str(text).ok()
    }
}

/// `url` with `token=` added to its query.
pub fn url_with_token(url: &str, token: Option<&str>) -> String {
    match token {
        // JWTs are base64url and dots: nothing to escape.
        Some(t) if url.contains('?') => format!("{url}&token={t}"),
        Some(t) => format!("{url}?token={t}"),
        None => url.to_owned(),
    }
}

/// Opens a socket to `url` (Nagle off: the bench measures latency).
pub async fn connect(url: &str, token: Option<&str>) -> Result<WsStream, WsError> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url_with_token(url, token), None, true)
            .await
            .map_err(|e| WsError::Connect {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
    Ok(ws)
}

/// Sends a subscribe and reads until its `subscribed` (the snapshot before
/// it is skipped); an `error` with the same `ref` is a refusal.
pub async fn subscribe(
    ws: &mut WsStream,
    selector: &Selector,
    reference: &str,
    timeout: Duration,
) -> Result<(), WsError> {
    ws.send(Message::text(selector.subscribe_frame(reference)))
        .await
        .map_err(Box::new)?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            let text = match msg.map_err(Box::new)? {
                Message::Text(t) => t,
                Message::Close(_) => return Err(WsError::Closed),
                _ => continue,
            };
            let Some(frame) = Frame::parse(&text) else {
                continue;
            };
            if frame.reference.as_deref() != Some(reference) {
                continue;
            }
            match frame.kind.as_ref() {
                "subscribed" => return Ok(()),
                "error" => {
                    return Err(WsError::Refused {
                        code: frame.code.unwrap_or_default().into_owned(),
                        message: frame.message.unwrap_or_default().into_owned(),
                    })
                }
                _ => {}
            }
        }
        Err(WsError::Closed)
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| WsError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_the_fields_we_read() {
        let f = Frame::parse(
            r#"{"type":"location","device":"sim-7","ts":1763800000000,"lat":51.5,"lon":-0.12,"speed":3}"#,
        );
        let f = f.as_ref();
        assert_eq!(f.map(|f| f.kind.as_ref()), Some("location"));
        assert_eq!(f.and_then(|f| f.device.as_deref()), Some("sim-7"));
        assert_eq!(f.and_then(|f| f.ts), Some(1_763_800_000_000));
        assert_eq!(f.and_then(|f| f.lon), Some(-0.12));
        let s =
            Frame::parse(r#"{"type":"snapshot","ref":"1","devices":[{"device":"a","ts":null}]}"#);
        assert_eq!(s.and_then(|f| f.reference).as_deref(), Some("1"));
        assert!(Frame::parse("not json").is_none());
    }

    #[test]
    fn event_frames_parse_their_kind_id_and_ts() {
        // As the gateway sends an alert (crates/core/src/live.rs `event_json`
        // plus the cursor); `data` has fields of its own that must not leak.
        let text = r#"{"type":"event","device":"bench-3","id":"alert-overspeed-7-1763800000000","ts":1763800000500,"kind":"alert.overspeed","severity":"warning","data":{"rule":7,"speed":35,"limit":30,"since":1763800000000,"kind":"x","ts":1},"cursor":"0:1-0"}"#;
        let f = Frame::parse(text);
        let f = f.as_ref();
        assert_eq!(f.map(|f| f.kind.as_ref()), Some("event"));
        assert_eq!(
            f.and_then(|f| f.event_kind.as_deref()),
            Some("alert.overspeed")
        );
        assert_eq!(
            f.and_then(|f| f.id.as_deref()),
            Some("alert-overspeed-7-1763800000000")
        );
        assert_eq!(f.and_then(|f| f.device.as_deref()), Some("bench-3"));
        assert_eq!(f.and_then(|f| f.ts), Some(1_763_800_000_500));
        let loc = Frame::parse(r#"{"type":"location","device":"a","ts":1}"#);
        assert_eq!(loc.and_then(|f| f.event_kind), None);
    }

    #[test]
    fn tokens_go_in_the_query() {
        assert_eq!(url_with_token("ws://h/ws", Some("t")), "ws://h/ws?token=t");
        assert_eq!(
            url_with_token("ws://h/ws?a=1", Some("t")),
            "ws://h/ws?a=1&token=t"
        );
        assert_eq!(url_with_token("ws://h/ws", None), "ws://h/ws");
        let sub = Selector::Devices(vec!["a".into()]).subscribe_frame("1");
        let sub: serde_json::Value = serde_json::from_str(&sub).unwrap_or_default();
        assert_eq!(
            sub,
            serde_json::json!({"op":"subscribe","ref":"1","devices":["a"]})
        );
    }
}
