//! The `fleet` command line ([`FleetArgs`], clap, each flag with an
//! environment fallback) and the checked, typed [`FleetConfig`] it becomes.
//! Values clap can check itself fail with exit status 2 and one line; the
//! rest fail in [`FleetArgs::into_config`].

use std::time::Duration;

use fieldcast_mqtt::{MqttArgs, MqttConfigError};
use rumqttc::{MqttOptions, QoS};

use crate::route::{Area, LatLon};

/// `--connections 0` opens one connection per device up to this many
/// devices, and shares this many connections above it.
pub const AUTO_CONNECTIONS: usize = 2_000;

/// Simulate a fleet of devices publishing over MQTT.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// Number of simulated devices.
    #[arg(long, env = "FIELDCAST_SIM_DEVICES", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,

    /// Device id prefix; ids are <prefix>-1 .. <prefix>-N. Letters, digits, `_`, `.`, `-`; at most 50.
    #[arg(long, env = "FIELDCAST_SIM_PREFIX", default_value = "sim", value_parser = parse_prefix)]
    pub prefix: String,

    /// Location messages per second per device (0 = none).
    #[arg(long, env = "FIELDCAST_SIM_RATE", default_value_t = 1.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Mean seconds between events of one device, random (Poisson) gaps; 0 = no events.
    #[arg(long, env = "FIELDCAST_SIM_EVENT_EVERY", default_value_t = 60.0, value_parser = parse_secs)]
    pub event_every: f64,

    /// Seconds between status (battery, signal) reports of one device; 0 = only on connect and exit.
    #[arg(long, env = "FIELDCAST_SIM_STATUS_EVERY", default_value_t = 30.0, value_parser = parse_secs)]
    pub status_every: f64,

    /// Stop after this long (e.g. 90s, 10m, 2h) [default: until Ctrl-C or SIGTERM].
    #[arg(long, env = "FIELDCAST_SIM_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// MQTT connections to multiplex the devices over; 0 = one per device up to 2000 devices, else 2000.
    /// Sharing a connection means only its first device has a Last Will (MQTT allows one per connection).
    #[arg(long, env = "FIELDCAST_SIM_CONNECTIONS", default_value_t = 0)]
    pub connections: usize,

    /// Centre of the area the devices drive in, as lat,lon (degrees).
    #[arg(long, env = "FIELDCAST_SIM_CENTER", default_value = "51.5074,-0.1278", value_parser = parse_center,
          allow_hyphen_values = true)]
    pub center: LatLon,

    /// Radius of that area, km.
    #[arg(long, env = "FIELDCAST_SIM_RADIUS_KM", default_value_t = 10.0, value_parser = parse_radius)]
    pub radius_km: f64,

    /// QoS of location messages (status and events always use 1).
    #[arg(long, env = "FIELDCAST_SIM_LOCATION_QOS", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=1))]
    pub location_qos: u8,

    /// Seed for routes, readings and timing, for repeatable runs [default: random].
    /// Event ids still differ between runs.
    #[arg(long, env = "FIELDCAST_SIM_SEED")]
    pub seed: Option<u64>,

    /// Spread the first connections over this long (e.g. 0s, 1s, 30s).
    #[arg(long, env = "FIELDCAST_SIM_RAMP_UP", default_value = "1s", value_parser = humantime::parse_duration)]
    pub ramp_up: Duration,
}

/// A fleet, checked and typed.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// One per broker of `--mqtt-url` (a comma-separated list spreads the
    /// connections over several, e.g. the MQTT listeners of a NATS
    /// cluster): address, credentials and TLS, without a client id yet.
    /// Never empty ([`FleetArgs::into_config`] makes at least one).
    pub mqtt_options: Vec<MqttOptions>,
    pub devices: usize,
    pub prefix: String,
    /// Locations per second per device.
    pub rate: f64,
    pub event_every: Option<Duration>,
    pub status_every: Option<Duration>,
    pub duration: Option<Duration>,
    /// As given; see [`FleetConfig::connections`].
    pub requested_connections: usize,
    pub area: Area,
    pub location_qos: QoS,
    pub seed: Option<u64>,
    pub ramp_up: Duration,
}

impl FleetArgs {
    /// Checks what clap could not (MQTT URL, TLS files).
    pub fn into_config(self) -> Result<FleetConfig, MqttConfigError> {
        let mqtt_options = self.mqtt.options_each("fieldcast-sim")?;
        let positive = |s: f64| (s > 0.0).then(|| Duration::from_secs_f64(s));
        Ok(FleetConfig {
            mqtt_options,
            devices: self.devices as usize,
            prefix: self.prefix,
            rate: self.rate,
            event_every: positive(self.event_every),
            status_every: positive(self.status_every),
            duration: self.duration,
            requested_connections: self.connections,
            area: Area {
                center: self.center,
                radius_m: self.radius_km * 1_000.0,
            },
            location_qos: if self.location_qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            seed: self.seed,
            ramp_up: self.ramp_up,
        })
    }
}

impl FleetConfig {
    /// The broker of connection `c`: the brokers in turn, so devices
    /// spread evenly over them.
    pub fn broker(&self, c: usize) -> &MqttOptions {
        // Never empty (see the field), so the index is in range.
        &self.mqtt_options[c % self.mqtt_options.len().max(1)]
    }

    /// Every broker, connection `c`'s own ([`Self::broker`]) first and the
    /// rest in turn after it: where it goes when its broker is lost.
    pub fn brokers_from(&self, c: usize) -> Vec<MqttOptions> {
        let n = self.mqtt_options.len().max(1);
        (0..self.mqtt_options.len())
            .map(|i| self.mqtt_options[(c + i) % n].clone())
            .collect()
    }

    /// How many MQTT connections the devices go over.
    pub fn connections(&self) -> usize {
        match self.requested_connections {
            0 => self.devices.min(AUTO_CONNECTIONS),
            n => n.min(self.devices),
        }
        .max(1)
    }

    /// The id of device `n` (0-based): `<prefix>-<n+1>`.
    pub fn device_id(&self, n: usize) -> String {
        format!("{}-{}", self.prefix, n + 1)
    }

    /// Gap between locations of one device.
    pub fn location_every(&self) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = (1..=50).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 50 of A-Z a-z 0-9 _ . -".into())
    }
}

fn parse_number(s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("expected a number from {lo} to {hi}"))
    }
}

/// Messages per second: 0, or at least one per ~3 hours so every period is
/// a sane `Duration`.
fn parse_rate(s: &str) -> Result<f64, String> {
    let v = parse_number(s, 0.0, 1_000.0)?;
    if v != 0.0 && v < 1e-4 {
        return Err("expected 0 or at least 0.0001".into());
    }
    Ok(v)
}

/// Seconds, 0 (off) up to a year.
fn parse_secs(s: &str) -> Result<f64, String> {
    let v = parse_number(s, 0.0, 31_536_000.0)?;
    if v != 0.0 && v < 0.001 {
        return Err("expected 0 or at least 0.001".into());
    }
    Ok(v)
}

fn parse_radius(s: &str) -> Result<f64, String> {
    let v = parse_number(s, 0.0, 2_000.0)?;
    if v < 0.01 {
        return Err("expected a radius from 0.01 to 2000 km".into());
    }
    Ok(v)
}

fn parse_center(s: &str) -> Result<LatLon, String> {
    let (lat, lon) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected lat,lon"))?;
    Ok(LatLon {
        // The area must fit between the poles and never wrap the antimeridian
        // in the projection; 85 degrees leaves room for any radius allowed.
        lat: parse_number(lat, -85.0, 85.0)?,
        lon: parse_number(lon, -180.0, 180.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fleet: FleetArgs,
    }

    fn parse(args: &[&str]) -> Result<FleetConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("fleet").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.fleet.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_docs() -> Result<(), String> {
        let c = parse(&[])?;
        assert_eq!((c.devices, c.prefix.as_str(), c.rate), (50, "sim", 1.0));
        assert_eq!(c.event_every, Some(Duration::from_secs(60)));
        assert_eq!(c.status_every, Some(Duration::from_secs(30)));
        assert_eq!(
            (c.duration, c.connections(), c.location_qos),
            (None, 50, QoS::AtMostOnce)
        );
        assert_eq!(
            c.area.center,
            LatLon {
                lat: 51.5074,
                lon: -0.1278
            }
        );
        assert_eq!(c.area.radius_m, 10_000.0);
        assert_eq!(c.device_id(0), "sim-1");
        Ok(())
    }

    #[test]
    fn flags_parse_into_types() -> Result<(), String> {
        let c = parse(&[
            "--devices",
            "5000",
            "--rate",
            "2.5",
            "--event-every",
            "0",
            "--duration",
            "90s",
            "--center",
            "-33.86,151.21",
            "--radius-km",
            "3",
            "--location-qos",
            "1",
            "--seed",
            "9",
        ])?;
        assert_eq!(c.connections(), AUTO_CONNECTIONS);
        assert_eq!(c.location_every(), Some(Duration::from_millis(400)));
        assert_eq!(
            (c.event_every, c.duration),
            (None, Some(Duration::from_secs(90)))
        );
        assert_eq!(
            c.area.center,
            LatLon {
                lat: -33.86,
                lon: 151.21
            }
        );
        assert_eq!((c.location_qos, c.seed), (QoS::AtLeastOnce, Some(9)));
        assert_eq!(
            parse(&["--devices", "10", "--connections", "3"])?.connections(),
            3
        );
        assert_eq!(
            parse(&["--devices", "2", "--connections", "30"])?.connections(),
            2
        );
        Ok(())
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--devices", "0"][..],
            &["--prefix", "a/b"],
            &["--prefix", ""],
            &["--rate", "-1"],
            &["--rate", "NaN"],
            &["--event-every", "x"],
            &["--center", "91,0"],
            &["--center", "51.5"],
            &["--radius-km", "0"],
            &["--location-qos", "2"],
            &["--duration", "soon"],
            &["--mqtt-url", "http://x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
