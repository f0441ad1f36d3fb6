//! Access tokens for the gateway (PROTOCOL.md §4): either given as they are
//! (`--token`), or minted here from the shared secret as an HS256 JWT with
//! `sub` and `exp` only, which the gateway reads as "every device" (plus
//! `admin` for the bench's `--alert-rule`, which writes a rule).

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    /// May write geofences and alert rules; left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign a token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

/// A token for `subject`, valid for `valid_for` from now.
pub fn mint(secret: &str, subject: &str, valid_for: Duration) -> Result<String, TokenError> {
    sign(secret, subject, valid_for, false)
}

/// [`mint`] with `admin: true`: may write alert rules and geofences.
pub fn mint_admin(secret: &str, subject: &str, valid_for: Duration) -> Result<String, TokenError> {
    sign(secret, subject, valid_for, true)
}

fn sign(
    secret: &str,
    subject: &str,
    valid_for: Duration,
    admin: bool,
) -> Result<String, TokenError> {
    let exp = fieldcast_core::time::now_ms() / 1_000
        + i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2);
    let claims = Claims {
        sub: subject,
        exp,
        admin,
    };
    let key = EncodingKey::from_secret(secret.as_bytes())?;
    Ok(jsonwebtoken::encode(&Header::default(), &claims, &key)?)
}

/// `--token` if given, else a token minted from `--jwt-secret`, else none
/// (a gateway started with `--auth none`).
pub fn resolve(
    token: Option<String>,
    secret: Option<&str>,
    subject: &str,
    valid_for: Duration,
) -> Result<Option<String>, TokenError> {
    match (token, secret) {
        (Some(t), _) if !t.is_empty() => Ok(Some(t)),
        (_, Some(s)) if !s.is_empty() => mint(s, subject, valid_for).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_hs256_with_sub_and_exp() -> Result<(), Box<dyn std::error::Error>> {
        let t = mint("s3cret", "bench", Duration::from_secs(60))?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["sub", "exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret")?,
            &v,
        )?;
        assert_eq!(data.claims["sub"], "bench");
        assert_eq!(
            data.claims.get("admin"),
            None,
            "readers carry no admin claim"
        );
        let admin = mint_admin("s3cret", "bench", Duration::from_secs(60))?;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &admin,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret")?,
            &v,
        )?;
        assert_eq!(data.claims["admin"], true);
        let given = resolve(Some("abc".into()), Some("s"), "x", Duration::ZERO)?;
        assert_eq!(given.as_deref(), Some("abc"));
        assert_eq!(resolve(None, None, "x", Duration::ZERO)?, None);
        Ok(())
    }
}
