//! Private Mosquitto brokers: [`Mosquitto`] (plain, anonymous) for fault
//! tests, [`MosquittoTls`] (client certificates + the repo's ACL) for
//! security tests. Config and certificates live in a tempdir that lives as
//! long as the broker.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::process::{Recipe, Service};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Settings every test broker shares, mirroring the production config where
/// it matters to the bridge (deep queue for its persistent session, bounded
/// inflight window, no Nagle delay).
///
/// `user root`: started as root, mosquitto drops to the `mosquitto` user
/// after binding and would then fail to read files in our root-owned
/// tempdir (ACL, password file). As a non-root user the line is ignored.
const BASE_CONF: &str = "\
per_listener_settings false
persistence false
max_queued_messages 100000
max_inflight_messages 100
set_tcp_nodelay true
user root
log_dest stderr
log_type error
log_type warning
log_type notice
";

/// A private, anonymous Mosquitto on `127.0.0.1:port`, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    /// `mqtt://127.0.0.1:<port>`
    pub url: String,
    service: Service,
    /// Holds config and log; removed on drop, after the process is killed.
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker with the default test config.
    pub async fn start() -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with("").await
    }

    /// Starts a broker with `extra_conf` appended to the config (one
    /// mosquitto.conf line per line, e.g. `persistence true` plus a
    /// `persistence_location` to test session survival across restarts).
    pub async fn start_with(extra_conf: &str) -> anyhow::Result<Mosquitto> {
        let dir = tempdir("mosquitto")?;
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let service = Service::start_on_free_ports(1, |ports| {
            let mut text = format!("listener {} 127.0.0.1\nallow_anonymous true\n", ports[0]);
            text.push_str(BASE_CONF);
            text.push_str(extra_conf);
            text.push('\n');
            write_file(&conf, &text)?;
            Ok(recipe(&conf, &log, ports.to_vec()))
        })
        .await
        .context("start private mosquitto")?;
        let port = service_port(&service)?;
        Ok(Mosquitto {
            port,
            url: format!("mqtt://127.0.0.1:{port}"),
            service,
            dir,
        })
    }

    /// SIGKILL the broker and wait for it to exit: a crash, not a shutdown
    /// (no session state is saved).
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// Kills the broker if it runs, then starts it again on the same port
    /// with the same config.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.service.restart().await
    }

    /// The broker's log since it last (re)started: errors, warnings and
    /// notices, e.g. `Client <id> has exceeded timeout, disconnecting.` when
    /// a client stopped serving its keepalive. Empty if it cannot be read.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

/// A private Mosquitto with the production security model: a TLS listener on
/// `port` requiring a client certificate from a test CA, whose CN becomes
/// the username (`use_identity_as_username`), the repo's `mosquitto/acl`,
/// and a plain loopback listener on `plain_port`.
///
/// As in production (see `mosquitto/README.md`), the plain listener gives
/// anonymous clients the ACL's anonymous rights (read `devices/#` and
/// `$SYS/#`), and a password file makes usernames there authenticated: each
/// client name passed to [`MosquittoTls::start`] may log in on `plain_port`
/// with its own name as password.
///
/// One difference from production: `use_username_as_clientid` is not set, so
/// a test may connect several clients with the same certificate under
/// different client ids.
#[derive(Debug)]
pub struct MosquittoTls {
    /// The TLS listener (client certificate required).
    pub port: u16,
    /// The plain loopback listener.
    pub plain_port: u16,
    /// `mqtts://127.0.0.1:<port>`
    pub url: String,
    /// `mqtt://127.0.0.1:<plain_port>`
    pub plain_url: String,
    /// Holds `ca.crt`, `server.crt`/`.key` and `<name>.crt`/`<name>.key`
    /// for each client name.
    pub certs: PathBuf,
    service: Service,
    _dir: TempDir,
}

impl MosquittoTls {
    /// Makes a CA, a server certificate and one client certificate per name
    /// (with `mosquitto/make-certs.sh`), then starts the broker.
    pub async fn start(clients: &[&str]) -> anyhow::Result<MosquittoTls> {
        let dir = tempdir("mosquitto-tls")?;
        let certs = dir.path().join("certs");
        let repo = repo_mosquitto_dir();
        let script = repo.join("make-certs.sh");
        let out = tokio::process::Command::new("sh")
            .arg(&script)
            .arg(&certs)
            .args(clients)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }

        let passwords = dir.path().join("passwords");
        write_file(&passwords, "")?;
        for name in clients {
            let status = tokio::process::Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&passwords)
                .arg(name)
                .arg(name)
                .kill_on_drop(true)
                .status()
                .await
                .context("run mosquitto_passwd")?;
            if !status.success() {
                bail!("mosquitto_passwd for {name} failed: {status}");
            }
        }

        let acl = repo.join("acl");
        if !acl.is_file() {
            bail!("ACL file {} not found", acl.display());
        }
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let service = Service::start_on_free_ports(2, |ports| {
            let c = |f: &str| certs.join(f).display().to_string();
            let mut text = String::from(BASE_CONF);
            // Infallible: writing to a String.
            let _ = write!(
                text,
                "allow_anonymous true\n\
                 message_size_limit 262144\n\
                 acl_file {acl}\n\
                 password_file {pw}\n\
                 listener {tls} 127.0.0.1\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 listener {plain} 127.0.0.1\n",
                acl = acl.display(),
                pw = passwords.display(),
                tls = ports[0],
                plain = ports[1],
                ca = c("ca.crt"),
                cert = c("server.crt"),
                key = c("server.key"),
            );
            write_file(&conf, &text)?;
            Ok(recipe(&conf, &log, ports.to_vec()))
        })
        .await
        .context("start private TLS mosquitto")?;
        let (port, plain_port) = match service.ports() {
            [tls, plain] => (*tls, *plain),
            other => bail!("expected two ports, got {other:?}"),
        };
        Ok(MosquittoTls {
            port,
            plain_port,
            url: format!("mqtts://127.0.0.1:{port}"),
            plain_url: format!("mqtt://127.0.0.1:{plain_port}"),
            certs,
            service,
            _dir: dir,
        })
    }

    /// The CA certificate that signed the server and every client.
    pub fn ca(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    /// The certificate of client `name` (its CN is `name`).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.certs.join(format!("{name}.crt"))
    }

    /// The private key of client `name` (PKCS#8 PEM).
    pub fn key(&self, name: &str) -> PathBuf {
        self.certs.join(format!("{name}.key"))
    }

    /// rumqttc options for connecting to the TLS listener as client `name`
    /// with its certificate, under MQTT client id `client_id`.
    pub fn mqtt_options(
        &self,
        name: &str,
        client_id: &str,
    ) -> anyhow::Result<rumqttc::MqttOptions> {
        let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("read {}", p.display()));
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.port);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: read(self.ca())?,
                alpn: None,
                client_auth: Some((read(self.cert(name))?, read(self.key(name))?)),
            },
        ));
        Ok(opts)
    }

    /// SIGKILL the broker and wait for it to exit.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// Kills the broker if it runs, then starts it again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.service.restart().await
    }
}

/// `mosquitto/` at the repository root, found from this crate's manifest
/// dir so it works from any working directory.
fn repo_mosquitto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mosquitto")
}

fn recipe(conf: &Path, log: &Path, ports: Vec<u16>) -> Recipe {
    Recipe {
        name: "mosquitto",
        program: PathBuf::from(MOSQUITTO),
        args: vec!["-c".to_owned(), conf.display().to_string()],
        log: log.to_owned(),
        ports,
    }
}

fn service_port(service: &Service) -> anyhow::Result<u16> {
    service
        .ports()
        .first()
        .copied()
        .context("service has no port")
}

pub(crate) fn tempdir(what: &str) -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("fieldcast-{what}-"))
        .tempdir()
        .with_context(|| format!("create tempdir for {what}"))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
