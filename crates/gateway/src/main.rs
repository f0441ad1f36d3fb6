//! `fieldcast-gateway`: parses the configuration (exit 2 with one stderr
//! line if it is bad), runs `token` when asked (prints a token, exit 0),
//! else starts tracing, runs the gateway until SIGTERM or
//! SIGINT, drains ([`fieldcast_gateway::drain`]; a second signal ends the
//! drain at once), and exits 0 after a graceful stop.

use std::process::ExitCode;

use clap::Parser;
use fieldcast_gateway::config::Command;
use fieldcast_gateway::Config;

/// jemalloc returns memory freed by closed connections to the system, where
/// glibc's arenas kept growing RSS over connection churn
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line that names the problem, as PROTOCOL.md §1 asks.
            // clap puts what is missing on the line after "...not provided:".
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines
                .next()
                .unwrap_or("invalid configuration")
                .trim_start_matches("error: ")
                .to_owned();
            if line.ends_with(':') {
                if let Some(next) = lines.next() {
                    line = format!("{line} {next}");
                }
            }
            eprintln!("fieldcast-gateway: {line}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token(args)) = &config.command {
        return match fieldcast_gateway::token::mint_now(config.jwt_secret.as_deref(), args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fieldcast-gateway: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = config.validate() {
        eprintln!("fieldcast-gateway: {e}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fieldcast-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "gateway failed");
            eprintln!("fieldcast-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let signals = fieldcast_service::stop_signals();
    let drain = fieldcast_gateway::drain::Drain {
        requested: signals.first.clone(),
        now: signals.again.clone(),
    };
    let served = fieldcast_gateway::serve_draining(config, listener, drain).await;
    // Ends the task that waits for a second signal.
    signals.again.cancel();
    served
}
