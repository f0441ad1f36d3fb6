//! `fieldcast-gateway token`: mints the HS256 token a dispatcher, a script
//! or a service account uses, signed with the gateway's own
//! `FIELDCAST_JWT_SECRET` (the same flag and variable as the server), so
//! an operator needs no other tool. Its claims are PROTOCOL.md §4's, plus
//! our `admin` and `groups`; it prints the token alone on stdout, for
//! `TOKEN=$(fieldcast-gateway token ...)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::builder::NonEmptyStringValueParser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// What the token allows, and for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Who holds the token (`sub`; shown in the gateway's logs).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub sub: String,

    /// Device ids or glob patterns (`truck-*`) the holder may see; none
    /// given = every device.
    #[arg(long, num_args = 1.., value_name = "PATTERN")]
    pub devices: Vec<String>,

    /// Device groups the holder may see (the `groups` claim).
    #[arg(long, num_args = 1.., value_name = "GROUP")]
    pub groups: Vec<String>,

    /// Notification-channel patterns the holder may subscribe to.
    #[arg(long, num_args = 1.., value_name = "PATTERN")]
    pub channels: Vec<String>,

    /// May `POST /api/publish`.
    #[arg(long)]
    pub publish: bool,

    /// May manage geofences, alert rules and device groups.
    #[arg(long)]
    pub admin: bool,

    /// How long the token is valid: `8h`, `30m`, `7d`, `1h 30m`.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// The claims written; an empty list is left out (absent `devices` = every
/// device, PROTOCOL.md §4).
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "is_empty")]
    devices: &'a [String],
    #[serde(skip_serializing_if = "is_empty")]
    groups: &'a [String],
    #[serde(skip_serializing_if = "is_empty")]
    channels: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    publish: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

fn is_empty(v: &&[String]) -> bool {
    v.is_empty()
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("FIELDCAST_JWT_SECRET (or --jwt-secret) is required to mint a token")]
    NoSecret,
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The token `args` describe, valid from `now` (seconds since the epoch).
pub fn mint(secret: Option<&str>, args: &TokenArgs, now: u64) -> Result<String, MintError> {
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(MintError::NoSecret)?;
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let claims = Claims {
        sub: &args.sub,
        iat: now,
        exp: now.saturating_add(args.ttl.as_secs()),
        devices: &args.devices,
        groups: &args.groups,
        channels: &args.channels,
        publish: args.publish,
        admin: args.admin,
    };
    let key = EncodingKey::from_secret(secret.as_bytes())?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

/// [`mint`] at the current time.
pub fn mint_now(secret: Option<&str>, args: &TokenArgs) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    mint(secret, args, now)
}

/// At least a second: a token that expires as it is printed is a typo.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, Config};
    use clap::Parser;

    fn args(cli: &[&str]) -> Result<(Config, TokenArgs), clap::Error> {
        let mut all = vec!["fieldcast-gateway"];
        all.extend(cli);
        let c = Config::try_parse_from(all)?;
        match c.command.clone() {
            Some(Command::Token(t)) => Ok((c, t)),
            None => panic!("no token command in {cli:?}"),
        }
    }

    #[test]
    fn writes_only_the_claims_given() {
        let (c, t) = args(&[
            "token",
            "--jwt-secret",
            "s",
            "--sub",
            "alice",
            "--devices",
            "truck-*",
            "van-1",
            "--ttl",
            "8h",
        ])
        .unwrap();
        let token = mint(c.jwt_secret.as_deref(), &t, 1_000).unwrap();
        let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(&token)
            .unwrap()
            .claims;
        assert_eq!(
            claims,
            serde_json::json!({"sub":"alice","iat":1000,"exp":1000 + 8 * 3600,"devices":["truck-*","van-1"]})
        );
    }

    #[test]
    fn secret_may_come_before_the_command() {
        let (c, t) = args(&["--jwt-secret", "s", "token", "--sub", "a", "--ttl", "1m"]).unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("s"));
        assert!(mint(c.jwt_secret.as_deref(), &t, 0).is_ok());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(args(&["token", "--sub", "a", "--ttl", "soon"]).is_err());
        assert!(args(&["token", "--sub", "a", "--ttl", "0s"]).is_err());
        assert!(args(&["token", "--sub", "", "--ttl", "1h"]).is_err());
        assert!(args(&["token", "--ttl", "1h"]).is_err());
        let (_, t) = args(&["token", "--sub", "a", "--ttl", "1h"]).unwrap();
        assert!(matches!(mint(None, &t, 0), Err(MintError::NoSecret)));
        assert!(matches!(mint(Some(""), &t, 0), Err(MintError::NoSecret)));
    }

    #[test]
    fn no_command_still_serves() {
        let c = Config::try_parse_from(["fieldcast-gateway", "--jwt-secret", "s"]).unwrap();
        assert!(c.command.is_none());
    }
}
