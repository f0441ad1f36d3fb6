//! `--alert-rule`: the alert rule a run measures, created through the
//! gateway's admin API (`POST /api/rules`, README "Geofences and alert
//! rules") before the load and deleted after it. It is scoped to the run's
//! own devices (`<prefix>-*`), so a run against a shared system alerts on
//! nothing else. Bridges load a new rule on the `NOTIFY` its write sends
//! (docs/geofences.md); the run gives them [`LOAD_TIME`] before the load.

use std::time::Duration;

use serde_json::json;

/// Time the bridges get to load a new rule before the load starts.
pub const LOAD_TIME: Duration = Duration::from_secs(2);
/// Per request to the gateway's API.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A rule the bench can create.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertRule {
    /// `overspeed` above `speed` m/s, `for` 1 ms: trips on the second
    /// consecutive location above it.
    Overspeed { speed: f64 },
}

impl AlertRule {
    /// `overspeed:<m/s>`.
    pub fn parse(s: &str) -> Result<AlertRule, String> {
        let speed = s
            .strip_prefix("overspeed:")
            .ok_or_else(|| format!("{s:?}: expected overspeed:<m/s>, e.g. overspeed:30"))?;
        match speed.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(AlertRule::Overspeed { speed: v }),
            _ => Err(format!("{s:?}: the speed must be a number of m/s above 0")),
        }
    }

    /// The rule as `POST /api/rules` takes it, for devices `<prefix>-*`.
    pub fn body(&self, prefix: &str) -> serde_json::Value {
        match self {
            AlertRule::Overspeed { speed } => json!({
                "kind": "overspeed", "speed": speed, "for": "1ms",
                "devices": [format!("{prefix}-*")],
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("--alert-rule: no gateway API at {0:?} (expected ws://host:port/path)")]
    NoGateway(String),
    #[error("--alert-rule: {method} {url}: {source}")]
    Http {
        method: &'static str,
        url: String,
        source: reqwest::Error,
    },
    #[error("--alert-rule: {method} {url} answered {status}: {body}")]
    Refused {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("--alert-rule: POST {url}: no rule id in {body}")]
    NoId { url: String, body: String },
}

/// A rule this run created, to delete when it ends.
#[derive(Debug)]
pub struct Created {
    pub id: i64,
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

/// `http://host:port` of a `ws://host:port/path` gateway URL.
pub fn api_base(gateway: &str) -> Option<String> {
    let rest = gateway.strip_prefix("ws://")?;
    let host = rest.split(['/', '?']).next().filter(|h| !h.is_empty())?;
    Some(format!("http://{host}"))
}

/// Creates `rule` for devices `<prefix>-*` on the gateway at `base`, with
/// `token` (an admin's; none for a gateway with `--auth none`).
pub async fn create(
    base: &str,
    token: Option<&str>,
    rule: AlertRule,
    prefix: &str,
) -> Result<Created, RuleError> {
    let url = format!("{base}/api/rules");
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|source| RuleError::Http {
            method: "POST",
            url: url.clone(),
            source,
        })?;
    let mut request = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(rule.body(prefix).to_string());
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let http = |source| RuleError::Http {
        method: "POST",
        url: url.clone(),
        source,
    };
    let answer = request.send().await.map_err(http)?;
    let status = answer.status();
    let body = answer.text().await.map_err(http)?;
    if status != reqwest::StatusCode::CREATED {
        return Err(RuleError::Refused {
            method: "POST",
            url,
            status: status.as_u16(),
            body,
        });
    }
    let id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_i64());
    let Some(id) = id else {
        return Err(RuleError::NoId { url, body });
    };
    Ok(Created {
        id,
        url: format!("{url}/{id}"),
        token: token.map(str::to_owned),
        client,
    })
}

impl Created {
    /// Deletes the rule (204; 404 if someone else already did).
    pub async fn delete(self) -> Result<(), RuleError> {
        let mut request = self.client.delete(&self.url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let answer = request.send().await.map_err(|source| RuleError::Http {
            method: "DELETE",
            url: self.url.clone(),
            source,
        })?;
        let status = answer.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(RuleError::Refused {
            method: "DELETE",
            url: self.url,
            status: status.as_u16(),
            body: answer.text().await.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overspeed_rules_parse_and_name_the_runs_devices() {
        let r = AlertRule::parse("overspeed:30").unwrap();
        assert_eq!(r, AlertRule::Overspeed { speed: 30.0 });
        assert_eq!(
            r.body("g123"),
            json!({"kind": "overspeed", "speed": 30.0, "for": "1ms", "devices": ["g123-*"]})
        );
        assert_eq!(
            AlertRule::parse("overspeed:27.5"),
            Ok(AlertRule::Overspeed { speed: 27.5 })
        );
        for bad in [
            "overspeed",
            "overspeed:",
            "overspeed:0",
            "overspeed:-3",
            "overspeed:fast",
            "overspeed:inf",
            "low_battery:20",
            "30",
        ] {
            assert!(AlertRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_api_is_at_the_gateways_host() {
        assert_eq!(
            api_base("ws://127.0.0.1:18090/ws").as_deref(),
            Some("http://127.0.0.1:18090")
        );
        assert_eq!(api_base("ws://gw:80?x=1").as_deref(), Some("http://gw:80"));
        assert_eq!(api_base("ws://h").as_deref(), Some("http://h"));
        assert_eq!(api_base("ws:///ws"), None);
        assert_eq!(api_base("http://h/ws"), None);
    }
}
