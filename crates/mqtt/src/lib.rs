//! MQTT connection settings shared by `fieldcast-bridge` and `fieldcast-sim`
//! (PROTOCOL.md §1): `FIELDCAST_MQTT_URL` (`mqtt://` plain, `mqtts://` TLS),
//! username/password, and PEM paths for the CA and a client certificate.
//! [`MqttArgs::options`] turns them into `rumqttc::MqttOptions`.

use std::path::{Path, PathBuf};

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// Where a TLS connection without `FIELDCAST_MQTT_CA` finds trusted roots
/// (Debian/Ubuntu's system bundle).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Connection flags, flattened into each binary's clap config.
#[derive(clap::Args, Debug, Clone)]
pub struct MqttArgs {
    /// Broker URL: mqtt://host[:1883] (plain) or mqtts://host[:8883] (TLS).
    /// The simulator takes several, comma-separated, and spreads its
    /// devices over them (e.g. the MQTT listeners of a NATS cluster).
    #[arg(
        long = "mqtt-url",
        env = "FIELDCAST_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub url: String,
    /// MQTT username.
    #[arg(long = "mqtt-username", env = "FIELDCAST_MQTT_USERNAME")]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(
        long = "mqtt-password",
        env = "FIELDCAST_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (default: system roots).
    #[arg(long = "mqtt-ca", env = "FIELDCAST_MQTT_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (with --mqtt-key: client-certificate auth).
    #[arg(long = "mqtt-cert", env = "FIELDCAST_MQTT_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "mqtt-key", env = "FIELDCAST_MQTT_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    #[error("FIELDCAST_MQTT_URL {0:?}: expected mqtt://host[:port] or mqtts://host[:port]")]
    Url(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings given but FIELDCAST_MQTT_URL is not mqtts://")]
    TlsWithoutMqtts,
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, MqttConfigError> {
        let bad = || MqttConfigError::Url(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal is bracketed: [::1]:1883.
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl MqttArgs {
    /// Settings for a connection named `client_id`; keepalive, session and
    /// acknowledgement policy are the caller's to add.
    pub fn options(&self, client_id: &str) -> Result<MqttOptions, MqttConfigError> {
        self.options_for(&self.url, client_id)
    }

    /// [`MqttArgs::options`] for each broker of a comma-separated URL list
    /// (`mqtt://n1:1883,mqtt://n2:1883`: the MQTT listeners of a NATS
    /// cluster, say), in order; a single URL gives one.
    pub fn options_each(&self, client_id: &str) -> Result<Vec<MqttOptions>, MqttConfigError> {
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(MqttConfigError::Url(self.url.clone()));
        }
        urls.into_iter()
            .map(|url| self.options_for(url, client_id))
            .collect()
    }

    fn options_for(&self, url: &str, client_id: &str) -> Result<MqttOptions, MqttConfigError> {
        let url = BrokerUrl::parse(url)?;
        let mut opts = MqttOptions::new(client_id, url.host, url.port);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if url.tls {
            let ca = read(self.ca.as_deref().unwrap_or(Path::new(SYSTEM_CA_BUNDLE)))?;
            let client_auth = match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        } else if self.ca.is_some() || self.cert.is_some() {
            return Err(MqttConfigError::TlsWithoutMqtts);
        }
        Ok(opts)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, MqttConfigError> {
    std::fs::read(path).map_err(|source| MqttConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_gives_one_broker_each() {
        let args = MqttArgs {
            url: "mqtt://127.0.0.1:1, mqtt://127.0.0.2:2,".into(),
            username: None,
            password: None,
            ca: None,
            cert: None,
            key: None,
        };
        let each = args.options_each("c").unwrap();
        let addrs: Vec<_> = each.iter().map(|o| o.broker_address()).collect();
        assert_eq!(
            addrs,
            [("127.0.0.1".to_owned(), 1), ("127.0.0.2".to_owned(), 2)]
        );
        assert!(
            args.options("c").is_err(),
            "one broker where one is expected"
        );
        let none = MqttArgs {
            url: " , ".into(),
            ..args
        };
        assert!(none.options_each("c").is_err());
    }

    #[test]
    fn parses_broker_urls() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1883));
        let u = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        let u = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        for bad in [
            "127.0.0.1:1883",
            "http://x",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://h:99999",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
