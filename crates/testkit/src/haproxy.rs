//! A private HAProxy in front of a test's gateways, running the shipped
//! `deploy/haproxy.cfg` itself: the file is the template, so the tests
//! prove the configuration operators install, not a copy of it.
//!
//! What is filled in (the file's header says the same): the `global`
//! section is replaced (it is about the process: user, chroot, syslog, the
//! admin socket), each `bind` line gets a free loopback port, and the first
//! `server` line of a section becomes one line per test server (its options
//! kept); every other line is used as written. The admin socket, in the
//! test's directory, says what HAProxy thinks of each server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mosquitto::tempdir;
use crate::process::{Recipe, Service};
use crate::util::wait_until;

/// Debian's package puts it here, outside a normal user's PATH.
const HAPROXY: &str = "/usr/sbin/haproxy";

/// The shipped configuration, the one source of the tests' HAProxy.
pub const SHIPPED_CONFIG: &str = include_str!("../../../deploy/haproxy.cfg");

/// What HAProxy reports about one server (`show stat` on the admin socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// `gw1`, `gw2`, ... in the order the servers were given.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2` (up, one check failed), `DOWN 1/2`, `MAINT`...
    pub status: String,
    /// Sessions open now (`scur`).
    pub sessions: u64,
}

impl ServerStat {
    /// `UP` or `DOWN` as HAProxy routes: the first word of the status.
    pub fn state(&self) -> &str {
        self.status.split_whitespace().next().unwrap_or("")
    }
}

/// A running HAProxy; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct HaProxy {
    /// The frontend (`frontend fieldcast`): where viewers connect.
    pub addr: SocketAddr,
    socket: PathBuf,
    /// The process, killed when this drops (before `dir` goes).
    process: Service,
    dir: TempDir,
}

impl HaProxy {
    /// Starts HAProxy with the shipped configuration in front of
    /// `servers`, named `gw1`, `gw2`... in this order; returns once its
    /// ports accept and every server is reported `UP`.
    pub async fn start(servers: &[SocketAddr]) -> anyhow::Result<HaProxy> {
        if servers.is_empty() {
            bail!("HAProxy needs at least one server");
        }
        let dir = tempdir("haproxy")?;
        let socket = dir.path().join("admin.sock");
        let config_path = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let binds = bind_lines(SHIPPED_CONFIG);
        if binds == 0 {
            bail!("deploy/haproxy.cfg has no bind line");
        }
        let service = Service::start_on_free_ports(binds, |ports| {
            let text = render(SHIPPED_CONFIG, &socket, ports, servers)?;
            std::fs::write(&config_path, text)
                .with_context(|| format!("write {}", config_path.display()))?;
            Ok(Recipe {
                name: "haproxy",
                program: PathBuf::from(HAPROXY),
                // -db: foreground, so the test owns (and kills) the process.
                args: vec![
                    "-db".to_owned(),
                    "-f".to_owned(),
                    config_path.display().to_string(),
                ],
                log: log.clone(),
                ports: ports.to_vec(),
            })
        })
        .await
        .context("haproxy with deploy/haproxy.cfg")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], service.ports()[0]));
        let haproxy = HaProxy {
            addr,
            socket,
            process: service,
            dir,
        };
        for i in 1..=servers.len() {
            haproxy
                .wait_state(&format!("gw{i}"), "UP", Duration::from_secs(15))
                .await?;
        }
        Ok(haproxy)
    }

    /// `ws://<frontend>/ws?token=<token>`.
    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// What HAProxy says of every server now.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerStat>> {
        let text = self.admin("show stat").await?;
        parse_show_stat(&text)
    }

    /// One server's stat, by name.
    pub async fn server(&self, name: &str) -> anyhow::Result<ServerStat> {
        self.servers()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no server {name} in HAProxy's stats"))
    }

    /// Waits until `name`'s [`ServerStat::state`] is `state` (`UP`, `DOWN`).
    pub async fn wait_state(
        &self,
        name: &str,
        state: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        wait_until(
            within,
            &format!("HAProxy to see {name} {state}"),
            || async { self.server(name).await.is_ok_and(|s| s.state() == state) },
        )
        .await
        .with_context(|| format!("haproxy log:\n{}", self.log_tail()))
    }

    /// Whether HAProxy exited by itself.
    pub fn crashed(&mut self) -> bool {
        self.process.crashed()
    }

    /// HAProxy's whole log (its request and health-check lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The end of HAProxy's log.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.dir.path().join("haproxy.log"))
    }

    /// One command on the admin socket; its whole answer.
    async fn admin(&self, command: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connect {}", self.socket.display()))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("write to the admin socket")?;
        let mut out = String::new();
        // Without `prompt` HAProxy answers one command and closes.
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
            .await
            .context("admin socket answer timed out")?
            .context("read the admin socket")?;
        Ok(out)
    }
}

/// How many `bind` lines (so free ports) the configuration has.
fn bind_lines(config: &str) -> usize {
    config
        .lines()
        .filter(|l| first_word(l) == Some("bind") && is_indented(l))
        .count()
}

/// The shipped configuration for a test: the global section replaced, the
/// `bind` lines on `ports` (in file order), the first `server` line of
/// each section repeated for `servers` and the others dropped.
fn render(
    config: &str,
    socket: &Path,
    ports: &[u16],
    servers: &[SocketAddr],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut ports = ports.iter();
    let mut in_global = false;
    let mut servers_done = false;
    let mut server_lines = 0;
    for line in config.lines() {
        if !is_indented(line) && !line.trim_start().starts_with('#') && !line.trim().is_empty() {
            // A section header.
            in_global = first_word(line) == Some("global");
            servers_done = false;
            if in_global {
                out.push_str(&format!(
                    "global\n\
                     \tstats socket {} mode 600 level admin\n\
                     \tlog stderr format raw local0\n\
                     \tmaxconn 4000\n",
                    socket.display()
                ));
                continue;
            }
        }
        if in_global {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("bind") => {
                let _shipped_address = words.next();
                let port = ports.next().context("more bind lines than ports")?;
                let rest: Vec<&str> = words.collect();
                let line = format!("\tbind 127.0.0.1:{port} {}", rest.join(" "));
                out.push_str(line.trim_end());
                out.push('\n');
            }
            Some("server") => {
                server_lines += 1;
                if servers_done {
                    continue;
                }
                let (_name, _address) = (words.next(), words.next());
                let options: Vec<&str> = words.collect();
                for (i, addr) in servers.iter().enumerate() {
                    let line = format!("\tserver gw{} {addr} {}", i + 1, options.join(" "));
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
                servers_done = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if server_lines == 0 {
        bail!("deploy/haproxy.cfg has no server line");
    }
    Ok(out)
}

fn first_word(line: &str) -> Option<&str> {
    line.split_whitespace().next()
}

fn is_indented(line: &str) -> bool {
    line.starts_with([' ', '\t'])
}

/// The server rows of `show stat` (CSV, its header line starting `# `).
fn parse_show_stat(text: &str) -> anyhow::Result<Vec<ServerStat>> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .with_context(|| format!("not a `show stat` answer: {text:.200}"))?;
    let columns: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("no column {name} in `show stat`"))
    };
    let (sv, status, scur) = (col("svname")?, col("status")?, col("scur")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status.max(sv).max(scur))
        .filter(|f| !matches!(f[sv], "FRONTEND" | "BACKEND"))
        .map(|f| ServerStat {
            name: f[sv].to_owned(),
            status: f[status].to_owned(),
            sessions: f[scur].parse().unwrap_or(0),
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    /// Pins the template contract with the shipped file: its global
    /// section goes, its binds and servers are ours, the rest (checks,
    /// timeouts, balance) stays word for word.
    #[test]
    fn the_shipped_file_renders_with_our_ports_and_servers() {
        let servers: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        ];
        let ports = [9001, 9002];
        let rendered = render(
            SHIPPED_CONFIG,
            Path::new("/tmp/x/admin.sock"),
            &ports,
            &servers,
        )
        .unwrap();
        // The directives, without comments.
        let text: String = rendered
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(bind_lines(SHIPPED_CONFIG), 2);
        assert!(!text.contains("chroot"), "{text}");
        assert!(!text.contains("daemon"), "{text}");
        assert!(text.contains("stats socket /tmp/x/admin.sock"));
        assert!(text.contains("\tbind 127.0.0.1:9001\n"), "{text}");
        assert!(text.contains("\tbind 127.0.0.1:9002\n"), "{text}");
        assert!(text.contains("\tserver gw1 127.0.0.1:7001\n"), "{text}");
        assert!(text.contains("\tserver gw2 127.0.0.1:7002\n"), "{text}");
        assert!(!text.contains(":8080") && !text.contains(":8081"), "{text}");
        for kept in [
            "balance leastconn",
            "http-check send meth GET uri /readyz",
            "timeout tunnel",
            "option redispatch",
            "default-server check",
        ] {
            assert!(text.contains(kept), "lost {kept}:\n{text}");
        }
    }

    #[test]
    fn show_stat_rows_are_servers() {
        let text = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,\n\
                    fieldcast,FRONTEND,,,3,5,4000,9,0,0,0,0,0,,,,,OPEN,\n\
                    gateways,gw1,0,0,2,2,,2,0,0,,0,,0,0,0,0,UP,\n\
                    gateways,gw2,0,0,1,1,,1,0,0,,0,,0,0,0,0,DOWN 1/2,\n\
                    gateways,BACKEND,0,0,3,3,400,3,0,0,0,0,,0,0,0,0,UP,\n";
        let s = parse_show_stat(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].state(), s[0].sessions),
            ("gw1", "UP", 2)
        );
        assert_eq!((s[1].state(), s[1].status.as_str()), ("DOWN", "DOWN 1/2"));
    }
}
