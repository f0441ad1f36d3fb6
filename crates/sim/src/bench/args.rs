//! The `bench` command line: the fleet's flags (devices, rate, connections,
//! area, seed, broker) plus receivers, timing, token, watched processes and
//! the alert measurement (a rule, overspeed bursts), checked into a
//! [`BenchConfig`].

use fieldcast_core::geo::BBox;
use std::time::Duration;

use super::overspeed::{Bursts, BurstsError};
use super::rule::AlertRule;
use crate::fleet::{FleetArgs, FleetConfig};
use crate::token;
use crate::ws::Selector;

/// Measure delivery and latency from simulated devices to WebSocket clients.
#[derive(clap::Args, Debug, Clone)]
#[command(
    mut_arg("duration", |a| a
        .help("Measured window, after --warmup (e.g. 30s, 10m) [default: 30s]")
        .env("FIELDCAST_BENCH_DURATION")),
    mut_arg("prefix", |a| a.default_value("bench").env("FIELDCAST_BENCH_PREFIX")),
    mut_arg("event_every", |a| a.hide(true)),
    mut_arg("status_every", |a| a.hide(true)),
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Gateway WebSocket URL; repeat (or comma-separate) to spread the clients over instances.
    #[arg(
        long = "gateway",
        env = "FIELDCAST_BENCH_GATEWAY",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub gateways: Vec<String>,

    /// Receiving clients ("dispatchers").
    #[arg(long, env = "FIELDCAST_BENCH_CLIENTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,

    /// Devices each client watches (0 = the whole fleet). Client c watches K consecutive devices
    /// starting at c*K (wrapping), so the fleet is covered evenly.
    #[arg(long, env = "FIELDCAST_BENCH_WATCH", default_value_t = 0)]
    pub watch: usize,

    /// Each client subscribes to this box instead: minLon,minLat,maxLon,maxLat.
    #[arg(long, env = "FIELDCAST_BENCH_BBOX", conflicts_with = "watch",
          value_parser = parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<BBox>,

    /// Receivers are plain MQTT subscribers on the broker instead of gateway clients: the
    /// one-hop floor of this machine.
    #[arg(long, env = "FIELDCAST_BENCH_FLOOR")]
    pub floor: bool,

    /// Load before the measured window starts (excluded from every number).
    #[arg(long, env = "FIELDCAST_BENCH_WARMUP", default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Time after the window for messages in flight to arrive (load continues meanwhile).
    #[arg(long, env = "FIELDCAST_BENCH_DRAIN", default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Time allowed for every client to connect and be subscribed before the load starts.
    #[arg(long, env = "FIELDCAST_BENCH_CONNECT_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Access token for the gateway [default: minted from --jwt-secret, else none].
    #[arg(long, env = "FIELDCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Secret to mint an HS256 token (sub, exp) with when no --token is given.
    #[arg(long, env = "FIELDCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Process to report CPU seconds and peak RSS of (repeatable), e.g. the bridge and gateway.
    #[arg(long = "watch-pid")]
    pub watch_pids: Vec<u32>,

    /// Name of the scenario, copied into the report.
    #[arg(long, env = "FIELDCAST_BENCH_LABEL")]
    pub label: Option<String>,

    /// Create this alert rule before the load and delete it after: overspeed:<m/s> (for 1 ms,
    /// devices <prefix>-*), through the first gateway's POST /api/rules with an admin token
    /// minted from --jwt-secret (else --token, else none). Ignored with --floor. Alerts
    /// (alert.*) and geofence events received are measured whether or not it is given.
    #[arg(long, env = "FIELDCAST_BENCH_ALERT_RULE", value_parser = AlertRule::parse)]
    pub alert_rule: Option<AlertRule>,

    /// Every device reports speed 35 m/s on 3 consecutive locations once per this period (e.g.
    /// 10s), its route's 5-25 m/s otherwise: with --alert-rule overspeed:30, one alert per
    /// burst [default: off]
    #[arg(long, env = "FIELDCAST_BENCH_OVERSPEED_EVERY", value_parser = humantime::parse_duration)]
    pub overspeed_every: Option<Duration>,
}

/// Who receives, and what each subscribes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Watch {
    Fleet,
    /// K consecutive devices per client.
    Subset(usize),
    Bbox(BBox),
}

/// A benchmark, checked and typed.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The load; its `duration` is unused (see `duration` here).
    pub fleet: FleetConfig,
    pub gateways: Vec<String>,
    pub clients: usize,
    pub watch: Watch,
    pub floor: bool,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub connect_timeout: Duration,
    pub token: Option<String>,
    pub watch_pids: Vec<u32>,
    pub label: Option<String>,
    /// The rule to create (not with `floor`).
    pub alert_rule: Option<AlertRule>,
    /// The token that creates it: an admin's.
    pub admin_token: Option<String>,
    pub bursts: Option<Bursts>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchConfigError {
    #[error(transparent)]
    Mqtt(#[from] fieldcast_mqtt::MqttConfigError),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("--rate must be above 0: the benchmark measures locations")]
    NoLoad,
    #[error("--watch {watch} is more than --devices {devices}")]
    WatchTooMany { watch: usize, devices: usize },
    #[error("--gateway {0:?}: expected ws://host:port/path")]
    Gateway(String),
    #[error(transparent)]
    Bursts(#[from] BurstsError),
}

impl BenchArgs {
    pub fn into_config(self) -> Result<BenchConfig, BenchConfigError> {
        let duration = self.fleet.duration.unwrap_or(Duration::from_secs(30));
        let fleet = self.fleet.into_config()?;
        let Some(period) = fleet.location_every() else {
            return Err(BenchConfigError::NoLoad);
        };
        let bursts = self
            .overspeed_every
            .map(|every| Bursts::new(every, period))
            .transpose()?;
        let watch = match (self.bbox, self.watch) {
            (Some(b), _) => Watch::Bbox(b),
            (None, 0) => Watch::Fleet,
            (None, k) if k > fleet.devices => {
                return Err(BenchConfigError::WatchTooMany {
                    watch: k,
                    devices: fleet.devices,
                })
            }
            (None, k) => Watch::Subset(k),
        };
        if !self.floor {
            if let Some(bad) = self
                .gateways
                .iter()
                .find(|g| !(g.starts_with("ws://") && g.len() > "ws://".len()))
            {
                return Err(BenchConfigError::Gateway(bad.clone()));
            }
        }
        // Valid for the whole run, with an hour to spare for slow starts.
        let valid_for = self.warmup + duration + self.drain + Duration::from_secs(3_600);
        let alert_rule = self.alert_rule.filter(|_| !self.floor);
        let admin_token = match (&alert_rule, self.jwt_secret.as_deref()) {
            (None, _) => None,
            (Some(_), Some(s)) if !s.is_empty() => {
                Some(token::mint_admin(s, "fieldcast-bench", valid_for)?)
            }
            (Some(_), _) => self.token.clone().filter(|t| !t.is_empty()),
        };
        let token = token::resolve(
            self.token,
            self.jwt_secret.as_deref(),
            "fieldcast-bench",
            valid_for,
        )?;
        Ok(BenchConfig {
            fleet,
            gateways: self.gateways,
            clients: self.clients as usize,
            watch,
            floor: self.floor,
            warmup: self.warmup,
            duration,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            token,
            watch_pids: self.watch_pids,
            label: self.label,
            alert_rule,
            admin_token,
            bursts,
        })
    }
}

impl BenchConfig {
    /// The devices client `c` watches: a contiguous (wrapping) range of
    /// device indexes, or every device.
    pub fn range_of(&self, c: usize) -> DeviceRange {
        let n = self.fleet.devices;
        match self.watch {
            Watch::Subset(k) => DeviceRange {
                start: (c * k) % n,
                len: k,
                of: n,
            },
            Watch::Fleet | Watch::Bbox(_) => DeviceRange {
                start: 0,
                len: n,
                of: n,
            },
        }
    }

    /// What client `c` subscribes to on the gateway.
    pub fn selector(&self, c: usize) -> Selector {
        match self.watch {
            Watch::Fleet => Selector::Fleet,
            Watch::Bbox(b) => Selector::Bbox(b),
            Watch::Subset(_) => Selector::Devices(
                self.range_of(c)
                    .iter()
                    .map(|d| self.fleet.device_id(d))
                    .collect(),
            ),
        }
    }

    /// The gateway client `c` connects to (round robin).
    pub fn gateway_of(&self, c: usize) -> &str {
        self.gateways
            .get(c % self.gateways.len().max(1))
            .map_or("", String::as_str)
    }
}

/// Device indexes `start, start+1, ...` (`len` of them) modulo `of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRange {
    pub start: usize,
    pub len: usize,
    pub of: usize,
}

impl DeviceRange {
    /// Position of device `d` in this range.
    pub fn slot(&self, d: usize) -> Option<usize> {
        let s = (d + self.of - self.start) % self.of.max(1);
        (d < self.of && s < self.len).then_some(s)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).map(|s| (self.start + s) % self.of)
    }
}

fn parse_bbox(s: &str) -> Result<BBox, String> {
    let b = BBox::parse_query(s).map_err(|e| format!("{s:?}: {e}"))?;
    // The bench's devices and its accounting live on one side of the
    // meridian; a wrapped box would expect nothing.
    if b.wraps() {
        return Err(format!(
            "{s:?}: expected minLon,minLat,maxLon,maxLat with min <= max (the bench does not take boxes across the 180° meridian)"
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.bench.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() -> Result<(), String> {
        let c = parse(&[])?;
        assert_eq!(c.fleet.prefix, "bench");
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.warmup, Duration::from_secs(5));
        assert_eq!(
            (c.clients, c.watch.clone(), c.floor),
            (10, Watch::Fleet, false)
        );
        assert_eq!(c.gateways, ["ws://127.0.0.1:8080/ws"]);
        assert_eq!(c.token, None);
        assert_eq!((c.alert_rule, c.admin_token, c.bursts), (None, None, None));
        Ok(())
    }

    #[test]
    fn the_alert_measurement_takes_a_rule_an_admin_token_and_bursts() -> Result<(), String> {
        let c = parse(&[
            "--alert-rule",
            "overspeed:30",
            "--overspeed-every",
            "10s",
            "--jwt-secret",
            "s",
        ])?;
        assert_eq!(c.alert_rule, Some(AlertRule::Overspeed { speed: 30.0 }));
        let (admin, reader) = (
            c.admin_token.unwrap_or_default(),
            c.token.unwrap_or_default(),
        );
        assert!(admin.split('.').count() == 3 && admin != reader);
        assert!(c.bursts.is_some());
        // The floor has no gateway to create it on; the bursts stay, so
        // both runs of bench-e2e.sh send the same load.
        let floor = parse(&[
            "--floor",
            "--alert-rule",
            "overspeed:30",
            "--overspeed-every",
            "10s",
        ])?;
        assert_eq!((floor.alert_rule, floor.bursts.is_some()), (None, true));
        // Without a secret the given token is the one used.
        let given = parse(&["--alert-rule", "overspeed:30", "--token", "t"])?;
        assert_eq!(given.admin_token.as_deref(), Some("t"));
        Ok(())
    }

    #[test]
    fn subsets_cover_the_fleet_evenly() -> Result<(), String> {
        let c = parse(&[
            "--devices",
            "600",
            "--clients",
            "120",
            "--watch",
            "50",
            "--duration",
            "10s",
            "--gateway",
            "ws://a/ws",
            "--gateway",
            "ws://b/ws",
            "--jwt-secret",
            "s",
        ])?;
        assert_eq!(c.duration, Duration::from_secs(10));
        let mut watchers = vec![0; 600];
        for client in 0..120 {
            for d in c.range_of(client).iter() {
                watchers[d] += 1;
            }
        }
        assert!(watchers.iter().all(|&w| w == 10), "{watchers:?}");
        let r = c.range_of(11); // 550..600
        assert_eq!(
            (r.slot(550), r.slot(599), r.slot(0)),
            (Some(0), Some(49), None)
        );
        let r = DeviceRange {
            start: 8,
            len: 4,
            of: 10,
        };
        assert_eq!(
            (r.slot(9), r.slot(0), r.slot(1), r.slot(2)),
            (Some(1), Some(2), Some(3), None)
        );
        assert_eq!(c.gateway_of(3), "ws://b/ws");
        match c.selector(1) {
            Selector::Devices(d) => assert_eq!((d.len(), d[0].as_str()), (50, "bench-51")),
            other => panic!("{other:?}"),
        }
        assert!(c.token.is_some_and(|t| t.split('.').count() == 3));
        Ok(())
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--rate", "0"][..],
            &["--devices", "5", "--watch", "6"],
            &["--bbox", "1,2,3"],
            &["--bbox", "1,2,0,3"],
            &["--watch", "3", "--bbox", "0,0,1,1"],
            &["--gateway", "http://x/ws"],
            &["--clients", "0"],
            &["--warmup", "soon"],
            &["--alert-rule", "overspeed"],
            &["--alert-rule", "inactive:5"],
            // 2 locations/s: 3 locations per 1.5 s, no room after a burst.
            &["--rate", "2", "--overspeed-every", "1500ms"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse(&["--bbox", "-0.2,51.4,0.0,51.6"]).is_ok());
    }
}
