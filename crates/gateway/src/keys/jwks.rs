//! An identity provider's JSON Web Key Set (`FIELDCAST_JWT_JWKS_URL`):
//! fetched when the gateway starts, then every `FIELDCAST_JWT_JWKS_REFRESH`
//! by one background task that ends on shutdown.
//!
//! Rotation: a provider publishes its next key (a new `kid`) before it
//! signs with it, and keeps the old one published while tokens signed
//! with it are alive. A fetch replaces the whole set, so a token keeps
//! verifying exactly as long as its key is published, and stops at the
//! first fetch after the provider drops it. A token whose `kid` is not in
//! the set wakes the task at once ([`Jwks::request_refresh`]), at most one
//! fetch per `FIELDCAST_JWT_JWKS_MIN_INTERVAL`, so tokens with made-up
//! kids cannot make the gateway hammer the provider.
//!
//! A failed fetch keeps the keys already held (an outage of the provider
//! must not log everyone out) and is retried with backoff and jitter. The
//! gateway is not ready (`/readyz`) until the first fetch succeeds: before
//! it, no token of the provider can be verified.
//!
//! Only RS256 (RSA) and ES256 (EC P-256) signing keys are taken; a key
//! marked for encryption, of another type or algorithm, or symmetric
//! (`oct`: a published HMAC secret would let anyone sign) is skipped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use fieldcast_core::backoff::Backoff;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::VerifyingKey;
use crate::health::Health;

/// Largest JWKS document read; real ones are a few KiB.
const MAX_BYTES: usize = 1 << 20;
/// One fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys last fetched, by kid.
#[derive(Default)]
pub struct Keys {
    pub by_kid: HashMap<String, Arc<VerifyingKey>>,
    /// Every key, those without a kid included.
    pub all: Vec<Arc<VerifyingKey>>,
}

/// The shared set: read by every token check, replaced by the refresh task.
pub struct Jwks {
    url: String,
    keys: RwLock<Arc<Keys>>,
    /// Waited on by the refresh task alone; a token with an unknown kid
    /// stores a permit, so requests during a fetch coalesce into one more.
    wake: Notify,
}

impl Jwks {
    pub fn new(url: String) -> Self {
        Jwks {
            url,
            keys: RwLock::new(Arc::new(Keys::default())),
            wake: Notify::new(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The set as of the last successful fetch (empty before the first).
    pub fn current(&self) -> Arc<Keys> {
        // A writer cannot panic while holding the lock (it only swaps an
        // Arc), so a poisoned lock still holds a whole set.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace(&self, keys: Keys) {
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
    }

    /// Asks for a fetch soon (a token named a kid the set lacks).
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }
}

/// How often the task fetches.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// After a success.
    pub every: Duration,
    /// Least time between two fetches asked for by unknown kids.
    pub min_interval: Duration,
}

/// The HTTP client of the refresh task.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("fieldcast-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("JWKS HTTP client")
}

/// Keeps `jwks` fresh until `shutdown`; marks `health` ready for tokens
/// after the first successful fetch.
pub async fn refresh(
    jwks: Arc<Jwks>,
    client: reqwest::Client,
    schedule: Schedule,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let mut next = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = jwks.wake.notified() => {
                if let Some(earliest) = last.map(|t| t + schedule.min_interval) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(earliest) => {}
                    }
                }
            }
        }
        last = Some(Instant::now());
        match fetch(&client, &jwks.url).await {
            Ok(keys) => {
                let kids: Vec<&str> = keys.by_kid.keys().map(String::as_str).collect();
                tracing::info!(url = %jwks.url, keys = keys.all.len(), ?kids, "JWKS fetched");
                jwks.replace(keys);
                health.set_token_keys(true);
                backoff.reset();
                next = Instant::now() + schedule.every;
            }
            Err(e) => {
                let wait = backoff.next_delay().min(schedule.every);
                tracing::warn!(
                    url = %jwks.url,
                    error = %format!("{e:#}"),
                    retry_in = ?wait,
                    "JWKS fetch failed; keeping the keys already held"
                );
                next = Instant::now() + wait;
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<Keys> {
    let mut resp = client.get(url).send().await.context("request")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("body")? {
        if body.len() + chunk.len() > MAX_BYTES {
            bail!("larger than {MAX_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body)
}

/// The usable keys of a JWKS document; an error when there is none (a
/// provider answering with an empty or foreign set is treated as a
/// failed fetch, and the keys held are kept).
pub fn parse(body: &[u8]) -> anyhow::Result<Keys> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).context("not a JWKS document")?;
    let mut keys = Keys::default();
    // Each key alone: one of a type this crate cannot read must not hide
    // the others.
    for jwk in set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
    {
        let Some(key) = verifying_key(&jwk) else {
            continue;
        };
        let key = Arc::new(key);
        if let Some(kid) = &jwk.common.key_id {
            keys.by_kid.insert(kid.clone(), key.clone());
        }
        keys.all.push(key);
    }
    if keys.all.is_empty() {
        bail!("no RS256 or ES256 signing key in the set");
    }
    Ok(keys)
}

/// The key with its pinned algorithm, or `None` when it may not sign tokens
/// the gateway accepts.
fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let (alg, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_components(&p.n, &p.e).ok()?,
        ),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => (
            Algorithm::ES256,
            DecodingKey::from_ec_components(&p.x, &p.y).ok()?,
        ),
        _ => return None,
    };
    // A key that names its algorithm is held to it (an RSA key for RS512
    // does not verify RS256); one that names none gets its type's.
    let named = match jwk.common.key_algorithm {
        None => alg,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(_) => return None,
    };
    (named == alg).then(|| VerifyingKey::new(alg, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The P-256 key of `pem.rs`'s test, as a JWK.
    const EC_X: &str = "fOEfzJmWxC8q5xjeYlkD4gGGwsGSAcefoHjiZvWH4ZM";
    const EC_Y: &str = "pJIloDszcue_fF0EIrDTNJczf_4Ih3hyTmn4BKfTu5A";

    fn ec(extra: serde_json::Value) -> serde_json::Value {
        let mut k = serde_json::json!({"kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y});
        if let (Some(k), Some(e)) = (k.as_object_mut(), extra.as_object()) {
            k.extend(e.clone());
        }
        k
    }

    #[test]
    fn takes_signing_keys_by_kid_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            ec(serde_json::json!({"kid":"a","alg":"ES256","use":"sig"})),
            ec(serde_json::json!({"kid":"enc","use":"enc"})),
            ec(serde_json::json!({"kid":"384","alg":"ES384"})),
            {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
            {"kty":"OKP","crv":"X448","kid":"weird","x":"AAAA"},
            ec(serde_json::json!({})),
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.all.len(), 2, "a, and the one without kid");
        assert_eq!(keys.by_kid.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(keys.by_kid["a"].alg, Algorithm::ES256);
    }

    #[test]
    fn a_set_without_a_usable_key_is_an_error() {
        assert!(parse(br#"{"keys":[]}"#).is_err());
        assert!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
