//! CPU time and memory of the processes a benchmark watches (`--watch-pid`),
//! read from `/proc/<pid>/stat` and `/proc/<pid>/status`.

use std::io;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`. Linux
/// fixes this `USER_HZ` at 100 for user space on every architecture, and
/// asking `sysconf` would take `unsafe`, which the workspace forbids.
const USER_HZ: f64 = 100.0;

/// One reading of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub pid: u32,
    /// `comm`: the executable name, at most 15 bytes.
    pub name: String,
    /// User + system CPU time so far, seconds.
    pub cpu_s: f64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

/// Reads process `pid` now.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse(pid, &stat, &status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc format"))
}

fn parse(pid: u32, stat: &str, status: &str) -> Option<Sample> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so
    // split at the last `)`. utime and stime are fields 14 and 15, that is
    // the 12th and 13th after the state (field 3).
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        pid,
        name,
        cpu_s: (utime + stime) as f64 / USER_HZ,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "4242 (fieldcast-gate way) S 1 4242 4242 0 -1 4194560 2793 0 0 0 150 25 0 0 20 0 3 0 123 0 0";
        let status = "Name:\tx\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        let s = parse(4242, stat, status);
        assert_eq!(
            s,
            Some(Sample {
                pid: 4242,
                name: "fieldcast-gate way".into(),
                cpu_s: 1.75,
                rss_kib: 40_960,
                peak_rss_kib: 51_200,
            })
        );
    }

    #[test]
    fn reads_this_process() -> io::Result<()> {
        let s = sample(std::process::id())?;
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
        Ok(())
    }
}
