//! The keys that verify tokens, and which one a token may use.
//!
//! Three sources, any together: the HS256 secret (`FIELDCAST_JWT_SECRET`,
//! PROTOCOL.md §4), one PEM public key ([`pem`],
//! `FIELDCAST_JWT_PUBLIC_KEY`) and an identity provider's JWKS ([`jwks`],
//! `FIELDCAST_JWT_JWKS_URL`, refreshed in the background).
//!
//! Every key is pinned to one algorithm when it is loaded (the secret to
//! HS256, an RSA key to RS256, an EC P-256 key to ES256). A token's header
//! only chooses among the configured keys of its own `alg`: an `HS256`
//! header is checked against the secret and nothing else, so a public key
//! can never be used as an HMAC secret (the HS/RS confusion), and `none`
//! or any other algorithm finds no key at all.

pub mod jwks;
pub mod pem;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key and the one algorithm it verifies.
pub struct VerifyingKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

// By hand: the key bytes have no place in a log line.
impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    pub fn new(alg: Algorithm, key: DecodingKey) -> Self {
        VerifyingKey { alg, key }
    }
}

/// Why no configured key may check a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no configured key verifies {0:?} tokens")]
    NoKeyFor(Algorithm),
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    #[error("key {kid:?} verifies {key:?}, not {header:?}")]
    AlgMismatch {
        kid: String,
        key: Algorithm,
        header: Algorithm,
    },
}

/// Every key the gateway verifies with.
#[derive(Default)]
pub struct KeySet {
    /// HS256 (`FIELDCAST_JWT_SECRET`).
    pub secret: Option<Arc<VerifyingKey>>,
    /// `FIELDCAST_JWT_PUBLIC_KEY`: RS256 or ES256.
    pub file: Option<Arc<VerifyingKey>>,
    /// `FIELDCAST_JWT_JWKS_URL`.
    pub jwks: Option<Arc<jwks::Jwks>>,
}

impl KeySet {
    /// The keys a token with header `alg` and `kid` may be checked
    /// against, at least one. A `kid` the JWKS does not hold asks the
    /// refresh task for a new fetch (rate-limited there): the provider may
    /// have rotated its keys.
    pub fn candidates(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerifyingKey>>, KeyError> {
        if alg == Algorithm::HS256 {
            return self
                .secret
                .clone()
                .map(|k| vec![k])
                .ok_or(KeyError::NoKeyFor(alg));
        }
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(KeyError::NoKeyFor(alg));
        }
        let mut out = Vec::new();
        let mut unknown = None;
        if let Some(jwks) = &self.jwks {
            let keys = jwks.current();
            match kid {
                Some(kid) => match keys.by_kid.get(kid) {
                    Some(k) if k.alg == alg => return Ok(vec![k.clone()]),
                    Some(k) => {
                        return Err(KeyError::AlgMismatch {
                            kid: kid.to_owned(),
                            key: k.alg,
                            header: alg,
                        })
                    }
                    None => {
                        jwks.request_refresh();
                        unknown = Some(kid.to_owned());
                    }
                },
                // Without a kid, any published key of that algorithm
                // (providers with one key often leave kid out).
                None => out.extend(keys.all.iter().filter(|k| k.alg == alg).cloned()),
            }
        }
        // The file key has no kid: a token names a kid only for the JWKS,
        // and one the JWKS lacks may still be the file key's.
        out.extend(self.file.iter().filter(|k| k.alg == alg).cloned());
        if out.is_empty() {
            return Err(match unknown {
                Some(kid) => KeyError::UnknownKid(kid),
                None => KeyError::NoKeyFor(alg),
            });
        }
        Ok(out)
    }
}
