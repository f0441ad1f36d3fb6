//! The one Redis client builder of both services. Retry settings, the
//! same everywhere:
//!
//! - **reconnect**: forever, exponential from 100 ms to 5 s (factor 2) with
//!   up to 200 ms of jitter, so a restarted Redis is not met by every
//!   client of every instance at the same instant;
//! - **connect** and internal commands (`AUTH`, `SELECT`, cluster
//!   discovery): 2 s each, so a black-holed address fails instead of
//!   hanging;
//! - `TCP_NODELAY` on every connection;
//! - broadcast channels of 32 (fred preallocates each at full capacity; a
//!   command connection receives no pub/sub, a subscriber sets its own).
//!
//! What differs is what a command does while Redis is away ([`WhileDown`]).

use std::time::Duration;

use fred::prelude::{Builder, ReconnectPolicy};
use fred::types::config::{Config, TcpConfig};

/// What a command does while its connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhileDown {
    /// Fails at once, tried once, 5 s to answer: the caller retries whole
    /// batches with its own backoff and reports the outage (the bridge's
    /// sinks, which must not hold a batch in a second, hidden queue).
    Fail,
    /// Waits for the reconnect in a bounded buffer (50 000 commands), tried
    /// twice, 3 s to answer (the gateway's reads, which a short blip should
    /// not turn into errors for every client).
    Wait,
}

/// A fred builder for `url` with the settings above; the caller may adjust
/// it (a subscriber's broadcast capacity) before `build`.
pub fn builder(url: &str, while_down: WhileDown) -> Result<Builder, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    config.fail_fast = while_down == WhileDown::Fail;
    let mut b = Builder::from_config(config);
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
    policy.set_jitter(200);
    b.set_policy(policy)
        .with_connection_config(|c| {
            // fred leaves Nagle on, under which a command written while an
            // earlier one is unanswered may wait for that one's ACK. (No
            // difference measured at (b) or (d) on one machine; it is
            // the setting every request/response client wants.)
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            match while_down {
                WhileDown::Fail => c.max_command_attempts = 1,
                WhileDown::Wait => {
                    c.max_command_attempts = 2;
                    c.max_command_buffer_len = 50_000;
                }
            }
        })
        .with_performance_config(|p| {
            p.default_command_timeout = match while_down {
                WhileDown::Fail => Duration::from_secs(5),
                WhileDown::Wait => Duration::from_secs(3),
            };
            p.broadcast_channel_capacity = 32;
        });
    Ok(b)
}

/// The partitions (indexes, in order) whose keys do not answer within
/// `within`: one `EXISTS` of each partition's device set, all at once, so
/// on a cluster each goes to its slot's primary. One Redis answers for all
/// or none; a cluster with a primary down and not yet replaced (or a slot
/// without a primary) for all but that node's partitions. Readiness turns
/// on this, not on a `PING`, which any node answers.
pub async fn unreachable_partitions(
    client: &fred::clients::Client,
    keys: &fieldcast_core::Keys,
    within: Duration,
) -> Vec<usize> {
    use fred::interfaces::KeysInterface;
    let probes = keys.all().iter().map(|p| async move {
        matches!(
            tokio::time::timeout(within, client.exists::<i64, _>(p.devices.as_str())).await,
            Ok(Ok(_))
        )
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(i, up)| (!up).then_some(i))
        .collect()
}

/// The error code a Redis error reply starts with (`NOSCRIPT No matching
/// script`), typed once here: fred keeps the reply as text and folds most
/// codes into `ErrorKind::Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCode {
    /// The script's SHA is not loaded (Redis restarted or was flushed).
    NoScript,
    /// An operation against a key holding the wrong kind of value.
    WrongType,
    /// A state that passes: LOADING, BUSY, OOM, READONLY, MASTERDOWN,
    /// TRYAGAIN, CLUSTERDOWN, MOVED, ASK.
    Transient,
    /// `ERR …`: a generic error, including a Lua script's runtime error.
    Err,
    /// Any other code, or an error that is not a server reply.
    Other,
}

impl ReplyCode {
    pub fn of(e: &fred::error::Error) -> Self {
        match e.details().split_whitespace().next().unwrap_or("") {
            "NOSCRIPT" => ReplyCode::NoScript,
            "WRONGTYPE" => ReplyCode::WrongType,
            "LOADING" | "BUSY" | "OOM" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN"
            | "MOVED" | "ASK" => ReplyCode::Transient,
            "ERR" => ReplyCode::Err,
            _ => ReplyCode::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyCode;
    use fred::error::{Error, ErrorKind};

    #[test]
    fn reply_codes_are_read_from_the_first_word() {
        let code = |s: &str| ReplyCode::of(&Error::new(ErrorKind::Unknown, s.to_owned()));
        assert_eq!(
            code("NOSCRIPT No matching script. Please use EVAL."),
            ReplyCode::NoScript
        );
        assert_eq!(
            code("WRONGTYPE Operation against a key holding the wrong kind of value"),
            ReplyCode::WrongType
        );
        assert_eq!(
            code("LOADING Redis is loading the dataset in memory"),
            ReplyCode::Transient
        );
        assert_eq!(code("ERR user_script:3: bad argument"), ReplyCode::Err);
        assert_eq!(
            code("a NOSCRIPT in the middle is not the code"),
            ReplyCode::Other
        );
        assert_eq!(code(""), ReplyCode::Other);
    }
}
