//! A webhook endpoint that geofences and alert rules may name (issue #15):
//! `{"url": "https://...", "secret": "..."}`.
//!
//! The bridge POSTs each alert to `url`, signed with HMAC-SHA256 under
//! `secret`. The secret is configuration the bridge needs in full, so it is
//! stored as given; what answers clients ([`Webhook::to_public_json`]) and
//! what `Debug` prints leave it out, so neither an API answer nor a log
//! line can leak it.

use serde_json::{json, Value};
use std::fmt;

/// Longest `url`, in bytes (what common servers and proxies accept).
pub const MAX_URL_BYTES: usize = 2048;
/// Longest `secret`, in bytes.
pub const MAX_SECRET_BYTES: usize = 256;

/// A validated webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    url: String,
    secret: String,
}

/// What is wrong with a webhook, and in which of its members (`""` for the
/// object itself, else `url`, `secret` or the unknown key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookError {
    pub member: String,
    pub problem: WebhookProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookProblem {
    #[error("must be an object {{\"url\", \"secret\"}}")]
    NotObject,
    #[error("is not a known field (a webhook has url and secret)")]
    Unknown,
    #[error("is required")]
    Missing,
    #[error(
        "must be an http:// or https:// URL with a host, at most 2048 bytes, without spaces or \
         control characters"
    )]
    Url,
    #[error("must be a non-empty string of at most 256 bytes, without control characters")]
    Secret,
}

impl Webhook {
    /// Parses and validates `{"url", "secret"}`; both required, nothing else.
    pub fn from_json(v: &Value) -> Result<Webhook, WebhookError> {
        let err = |member: &str, problem| WebhookError {
            member: member.to_owned(),
            problem,
        };
        let map = v
            .as_object()
            .ok_or_else(|| err("", WebhookProblem::NotObject))?;
        if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "url" | "secret")) {
            return Err(err(k, WebhookProblem::Unknown));
        }
        let field = |key: &str, problem| match map.get(key).filter(|v| !v.is_null()) {
            None => Err(err(key, WebhookProblem::Missing)),
            Some(v) => v.as_str().ok_or_else(|| err(key, problem)),
        };
        let url = field("url", WebhookProblem::Url)?;
        if !valid_url(url) {
            return Err(err("url", WebhookProblem::Url));
        }
        let secret = field("secret", WebhookProblem::Secret)?;
        if secret.is_empty()
            || secret.len() > MAX_SECRET_BYTES
            || secret.chars().any(char::is_control)
        {
            return Err(err("secret", WebhookProblem::Secret));
        }
        Ok(Webhook {
            url: url.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HMAC key of the signature header.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `{"url", "secret"}`: what is stored, for the bridge.
    pub fn to_json(&self) -> Value {
        json!({"url": self.url, "secret": self.secret})
    }

    /// `{"url"}`: what an API answer may show.
    pub fn to_public_json(&self) -> Value {
        json!({"url": self.url})
    }
}

impl fmt::Debug for Webhook {
    /// Without the secret: a `Debug` of a fence or rule may reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"***")
            .finish()
    }
}

/// `http://` or `https://` (any case), then a non-empty host, and no byte
/// that would need escaping to travel in a request line. A full URL parser
/// is not needed to refuse what cannot work; the sender reports the rest.
fn valid_url(url: &str) -> bool {
    let Some(rest) = ["https://", "http://"].iter().find_map(|scheme| {
        let head = url.as_bytes().get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| url.get(scheme.len()..))
            .flatten()
    }) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    url.len() <= MAX_URL_BYTES
        && !host.is_empty()
        && !host.starts_with(':')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_keeps_both_members() {
        let w = Webhook::from_json(&json!({"url": "https://hooks.example/a?b=1", "secret": "s3"}))
            .unwrap();
        assert_eq!((w.url(), w.secret()), ("https://hooks.example/a?b=1", "s3"));
        assert_eq!(
            w.to_json(),
            json!({"url": "https://hooks.example/a?b=1", "secret": "s3"})
        );
        assert_eq!(
            w.to_public_json(),
            json!({"url": "https://hooks.example/a?b=1"})
        );
        assert!(!format!("{w:?}").contains("s3"));
        assert!(Webhook::from_json(&json!({"url": "HTTP://10.0.0.1:8080", "secret": "x"})).is_ok());
    }

    #[test]
    fn every_problem_names_its_member() {
        let long = format!("https://h/{}", "a".repeat(MAX_URL_BYTES));
        for (v, member, problem) in [
            (json!("https://x"), "", WebhookProblem::NotObject),
            (
                json!({"url": "https://x", "secret": "s", "x": 1}),
                "x",
                WebhookProblem::Unknown,
            ),
            (json!({"secret": "s"}), "url", WebhookProblem::Missing),
            (
                json!({"url": "https://x"}),
                "secret",
                WebhookProblem::Missing,
            ),
            (
                json!({"url": "ftp://x", "secret": "s"}),
                "url",
                WebhookProblem::Url,
            ),
            (
                json!({"url": "https://", "secret": "s"}),
                "url",
                WebhookProblem::Url,
            ),
            (
                json!({"url": "https://:80/", "secret": "s"}),
                "url",
                WebhookProblem::Url,
            ),
            (
                json!({"url": "https://a b", "secret": "s"}),
                "url",
                WebhookProblem::Url,
            ),
            (
                json!({"url": long, "secret": "s"}),
                "url",
                WebhookProblem::Url,
            ),
            (json!({"url": 7, "secret": "s"}), "url", WebhookProblem::Url),
            (
                json!({"url": "https://x", "secret": ""}),
                "secret",
                WebhookProblem::Secret,
            ),
            (
                json!({"url": "https://x", "secret": "a\nb"}),
                "secret",
                WebhookProblem::Secret,
            ),
            (
                json!({"url": "https://x", "secret": "s".repeat(MAX_SECRET_BYTES + 1)}),
                "secret",
                WebhookProblem::Secret,
            ),
        ] {
            let e = Webhook::from_json(&v).unwrap_err();
            assert_eq!((e.member.as_str(), e.problem), (member, problem), "{v}");
        }
    }
}
