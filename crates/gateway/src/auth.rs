//! Who may see what: JWTs (PROTOCOL.md §4) turned into a [`Scope`].
//!
//! In: the token from `?token=` or `Authorization: Bearer`. Out: a `Scope`
//! (device globs, device groups, channel patterns, the `publish` and
//! `admin` rights, the expiry) that `/ws` and `/api/*` consult before
//! anything leaves the gateway. Which key checks a token, HS256 with the
//! secret or RS256/ES256 with a public key or an identity provider's JWKS,
//! is [`crate::keys`]' business; the claims mean the same whoever signed
//! them.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use fieldcast_core::glob::Glob;

use crate::config::{AuthMode, Config};
use crate::http::error::ApiError;
use crate::keys::{self, KeySet, VerifyingKey};

/// Leeway on `exp` and `nbf`, seconds (PROTOCOL.md §4).
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused. Every variant is a 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid token: {0}")]
    Key(#[from] keys::KeyError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    devices: Option<Vec<String>>,
    /// Our own claim (README, "Device groups"): devices in any of these
    /// groups are in scope too.
    groups: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: bool,
    /// Our own claim (README, "Geofences and alert rules"): may write
    /// fences and rules, and read rules.
    #[serde(default)]
    admin: bool,
}

/// What one token allows.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The token's `sub` (for logs), `"anonymous"` under `--auth none`.
    pub subject: String,
    /// Device globs; `None` (with `groups` also `None`) = every device.
    devices: Option<Vec<Glob>>,
    /// Device groups: a device in one of them is in scope, whatever
    /// `devices` says (the two are a union). Group membership is looked up
    /// at each check, so a device that joins a group comes into scope then.
    groups: Option<Vec<Box<str>>>,
    /// Channel patterns; empty = no channel.
    channels: Vec<Glob>,
    /// May `POST /api/publish`.
    pub publish: bool,
    /// May create, replace and delete geofences and alert rules, read
    /// rules, and see every fence with its webhook URL (`admin: true`).
    pub admin: bool,
    /// When the token stops being valid (leeway included), epoch ms.
    pub expires_at_ms: Option<i64>,
}

impl Scope {
    /// Everything, for `--auth none` (admin included: with no tokens there
    /// is no one else to manage fences, and the open mode is for a trusted
    /// loopback).
    pub fn unrestricted() -> Self {
        Scope {
            subject: "anonymous".into(),
            devices: None,
            groups: None,
            channels: vec![Glob::new("*")],
            publish: true,
            admin: true,
            expires_at_ms: None,
        }
    }

    /// Whether `device`, whose groups are `groups`, is in scope: every
    /// device for a token naming neither `devices` nor `groups`, else one
    /// that either names.
    pub fn allows_device<S: AsRef<str>>(&self, device: &str, groups: &[S]) -> bool {
        if self.devices.is_none() && self.groups.is_none() {
            return true;
        }
        self.devices
            .as_ref()
            .is_some_and(|globs| globs.iter().any(|g| g.matches(device)))
            || self
                .groups
                .as_ref()
                .is_some_and(|mine| crate::live::groups::overlap(mine, groups))
    }

    /// Whether the scope can depend on group membership (a `groups`
    /// claim): then a membership change can move a device in or out.
    pub fn has_groups(&self) -> bool {
        self.groups.is_some()
    }

    pub fn allows_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|g| g.matches(channel))
    }

    /// `None` when every device is in scope, else the `LIKE` patterns that
    /// select the scope's `devices` in SQL (none for a token with only
    /// `groups`: see [`Scope::group_names`] for the rest of the scope).
    pub fn device_like_patterns(&self) -> Option<Vec<String>> {
        if self.devices.is_none() && self.groups.is_none() {
            return None;
        }
        Some(self.devices.iter().flatten().map(Glob::to_like).collect())
    }

    /// The token's groups, for SQL (`device_id IN (SELECT device_id FROM
    /// device_groups WHERE group_name = ANY(...))`); `None` = no claim.
    pub fn group_names(&self) -> Option<Vec<String>> {
        self.groups
            .as_ref()
            .map(|g| g.iter().map(|n| n.to_string()).collect())
    }
}

/// Checks tokens; cheap to share.
#[derive(Clone)]
pub struct Authenticator(Arc<Mode>);

enum Mode {
    None,
    Jwt {
        keys: KeySet,
        /// HS256: PROTOCOL.md §4 as it stands, no `iss` or `aud` check.
        hs256: Box<Validation>,
        /// RS256 and ES256: `FIELDCAST_JWT_ISSUER`/`_AUDIENCE` when set.
        rs256: Box<Validation>,
        es256: Box<Validation>,
    },
}

impl Authenticator {
    /// From the configuration; `validate()` has made sure a `jwt` mode has
    /// its secret and that the public key file reads.
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        if config.auth == AuthMode::None {
            return Ok(Authenticator(Arc::new(Mode::None)));
        }
        // An empty or absent secret cannot get here through
        // `Config::validate`; a random one (refusing every HS256 token)
        // is the safe reading.
        let secret = match config.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => secret.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let keys = KeySet {
            secret: hs256_key(&secret),
            file: config.public_key()?.map(Arc::new),
            jwks: config
                .jwt_jwks_url
                .as_deref()
                .filter(|u| !u.trim().is_empty())
                .map(|u| Arc::new(keys::jwks::Jwks::new(u.trim().to_owned()))),
        };
        Ok(Self::with_keys(
            keys,
            config.jwt_issuer.as_deref(),
            config.jwt_audience.as_deref(),
        ))
    }

    /// HS256 with `secret`; an empty secret refuses every token.
    pub fn jwt(secret: &[u8]) -> Self {
        Self::with_keys(
            KeySet {
                secret: hs256_key(secret),
                ..KeySet::default()
            },
            None,
            None,
        )
    }

    fn with_keys(keys: KeySet, issuer: Option<&str>, audience: Option<&str>) -> Self {
        // Pin the crypto provider: if feature unification ever turns on a
        // second one, the crate would otherwise panic on first use.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let issuer = issuer.filter(|i| !i.is_empty());
        let audience = audience.filter(|a| !a.is_empty());
        let asymmetric = |alg| {
            let mut v = validation(alg);
            // jsonwebtoken checks `iss` and `aud` only when the token has
            // them: a configured one is also a required claim.
            let mut required = vec!["exp", "sub"];
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            if let Some(aud) = audience {
                v.set_audience(&[aud]);
                v.validate_aud = true;
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            Box::new(v)
        };
        Authenticator(Arc::new(Mode::Jwt {
            keys,
            hs256: Box::new(validation(Algorithm::HS256)),
            rs256: asymmetric(Algorithm::RS256),
            es256: asymmetric(Algorithm::ES256),
        }))
    }

    /// The JWKS whose refresh task `serve` runs, when one is configured.
    pub fn jwks(&self) -> Option<Arc<keys::jwks::Jwks>> {
        match &*self.0 {
            Mode::Jwt { keys, .. } => keys.jwks.clone(),
            Mode::None => None,
        }
    }

    /// The scope of `token`, or why it is refused.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Scope, AuthError> {
        match &*self.0 {
            Mode::None => Ok(Scope::unrestricted()),
            Mode::Jwt {
                keys,
                hs256,
                rs256,
                es256,
            } => {
                let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
                // The header is unauthenticated: it only picks among keys
                // whose algorithm was fixed when they were loaded, and the
                // validation below accepts that algorithm alone.
                let header = jsonwebtoken::decode_header(token)?;
                let candidates = keys.candidates(header.alg, header.kid.as_deref())?;
                let mut data = Err(AuthError::Missing);
                for key in candidates {
                    let validation = match key.alg {
                        Algorithm::RS256 => rs256,
                        Algorithm::ES256 => es256,
                        _ => hs256,
                    };
                    data = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
                        .map_err(AuthError::from);
                    if data.is_ok() {
                        break;
                    }
                }
                let c = data?.claims;
                let exp_ms = i64::try_from(c.exp.saturating_add(LEEWAY_SECS))
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000);
                Ok(Scope {
                    subject: c.sub,
                    devices: c.devices.map(|d| d.iter().map(|p| Glob::new(p)).collect()),
                    groups: c
                        .groups
                        .map(|g| g.into_iter().map(String::into_boxed_str).collect()),
                    channels: c
                        .channels
                        .unwrap_or_default()
                        .iter()
                        .map(|p| Glob::new(p))
                        .collect(),
                    publish: c.publish,
                    admin: c.admin,
                    expires_at_ms: Some(exp_ms),
                })
            }
        }
    }
}

/// `Validation::new(alg)` accepts `alg` only: a header naming any other
/// algorithm, `none` included, fails before the signature.
fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

/// `None` for an empty secret: every HS256 token is refused.
fn hs256_key(secret: &[u8]) -> Option<Arc<VerifyingKey>> {
    DecodingKey::from_secret(secret)
        .ok()
        .filter(|_| !secret.is_empty())
        .map(|k| Arc::new(VerifyingKey::new(Algorithm::HS256, k)))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token of a request: `Authorization: Bearer` first, else `?token=`.
pub fn token_of(parts: &Parts) -> Option<String> {
    bearer(&parts.headers).or_else(|| {
        Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.token)
    })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Extractor: the caller's scope, or a 401 before the handler runs (and,
/// for `/ws`, before the upgrade).
pub struct Authed(pub Scope);

impl<S> FromRequestParts<S> for Authed
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Authenticator::from_ref(state);
        let token = token_of(parts);
        Ok(Authed(auth.authenticate(token.as_deref())?))
    }
}
