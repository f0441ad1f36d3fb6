//! The `probe` command line and its checked [`ProbeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use fieldcast_mqtt::{MqttArgs, MqttConfigError};
use rumqttc::MqttOptions;

use crate::token::{self, TokenError};

/// Publish as a synthetic device every interval and watch it arrive.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// Gateway WebSocket URL to watch; repeat (or comma-separate) to check every instance.
    #[arg(
        long = "gateway",
        env = "FIELDCAST_PROBE_GATEWAY",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub gateways: Vec<String>,

    /// Device id the probe publishes as.
    #[arg(
        long,
        env = "FIELDCAST_PROBE_DEVICE",
        default_value = "fieldcast-probe"
    )]
    pub device: String,

    /// Time between rounds (e.g. 30s, 1m).
    #[arg(long, env = "FIELDCAST_PROBE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// A round's message must arrive within this long, else it counts as a failure.
    #[arg(long, env = "FIELDCAST_PROBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Address of the probe's own /metrics and /healthz.
    #[arg(long, env = "FIELDCAST_PROBE_LISTEN", default_value = "127.0.0.1:9465")]
    pub listen: SocketAddr,

    /// Also publish an event (kind `probe`, QoS 1) each round and watch for it.
    /// Events are kept in history: ~2 900 rows a day at the default interval.
    #[arg(long, env = "FIELDCAST_PROBE_EVENTS")]
    pub events: bool,

    /// Where the probe device stands, as lat,lon.
    #[arg(long, env = "FIELDCAST_PROBE_POSITION", default_value = "51.5074,-0.1278",
          value_parser = parse_position, allow_hyphen_values = true)]
    pub position: (f64, f64),

    /// Access token for the gateway [default: minted from --jwt-secret, else none].
    #[arg(long, env = "FIELDCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Secret to mint a fresh HS256 token (sub, exp: 1 h) with at every connect.
    #[arg(long, env = "FIELDCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// How the probe authenticates to the gateway.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    /// Mint a token per connection, so a long-running probe never holds an
    /// expired one.
    Secret(String),
}

impl Auth {
    pub fn token(&self) -> Result<Option<String>, TokenError> {
        match self {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::Secret(s) => {
                token::mint(s, "fieldcast-probe", Duration::from_secs(3_600)).map(Some)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Broker settings without a client id.
    pub mqtt_options: MqttOptions,
    pub gateways: Vec<String>,
    pub device: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub listen: SocketAddr,
    pub events: bool,
    pub position: (f64, f64),
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
    #[error("--device {0:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -")]
    Device(String),
    #[error("--interval and --timeout must be above 0")]
    ZeroTime,
    #[error("--gateway {0:?}: expected ws://host:port/path")]
    Gateway(String),
}

impl ProbeArgs {
    pub fn into_config(self) -> Result<ProbeConfig, ProbeConfigError> {
        if fieldcast_core::DeviceId::validate(&self.device).is_err() {
            return Err(ProbeConfigError::Device(self.device));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(ProbeConfigError::ZeroTime);
        }
        if let Some(bad) = self.gateways.iter().find(|g| !g.starts_with("ws://")) {
            return Err(ProbeConfigError::Gateway(bad.clone()));
        }
        let auth = match (self.token, self.jwt_secret) {
            (Some(t), _) if !t.is_empty() => Auth::Token(t),
            (_, Some(s)) if !s.is_empty() => Auth::Secret(s),
            _ => Auth::None,
        };
        Ok(ProbeConfig {
            mqtt_options: self.mqtt.options("fieldcast-probe")?,
            gateways: self.gateways,
            device: self.device,
            interval: self.interval,
            timeout: self.timeout,
            listen: self.listen,
            events: self.events,
            position: self.position,
            auth,
        })
    }
}

fn parse_position(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("{s:?}: expected lat,lon");
    let (lat, lon) = s.split_once(',').ok_or_else(bad)?;
    let lat: f64 = lat.trim().parse().map_err(|_| bad())?;
    let lon: f64 = lon.trim().parse().map_err(|_| bad())?;
    if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
        Ok((lat, lon))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        probe: ProbeArgs,
    }

    fn parse(args: &[&str]) -> Result<ProbeConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.probe.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bad_values() -> Result<(), String> {
        let c = parse(&[])?;
        assert_eq!(
            (c.interval, c.timeout),
            (Duration::from_secs(30), Duration::from_secs(10))
        );
        assert_eq!((c.device.as_str(), c.events), ("fieldcast-probe", false));
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9465)));
        assert!(matches!(c.auth, Auth::None));
        assert!(matches!(
            parse(&["--jwt-secret", "s"])?.auth,
            Auth::Secret(_)
        ));
        for bad in [
            &["--device", "a/b"][..],
            &["--interval", "0s"],
            &["--listen", "nowhere"],
            &["--position", "91,0"],
            &["--gateway", "http://x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        Ok(())
    }
}
