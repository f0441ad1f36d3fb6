//! The `fieldcast-sim` binary: parses the command line, sets up logging and
//! signal handling, and runs the chosen command. Each command lives in its
//! own module of the library: `fleet`, `bench`, `probe`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fieldcast_sim::bench::{self, BenchArgs};
use fieldcast_sim::fleet::{self, FleetArgs};
use fieldcast_sim::probe::{self, ProbeArgs};
use tracing::error;

#[derive(Parser, Debug)]
#[command(
    name = "fieldcast-sim",
    version,
    about = "Simulated Fieldcast devices over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run N simulated devices publishing locations, status and events until
    /// Ctrl-C, SIGTERM or --duration; print a summary on exit.
    Fleet(FleetArgs),
    /// Measure throughput, delivery and latency from simulated devices to
    /// WebSocket clients of the gateway (or, with --floor, to plain MQTT
    /// subscribers); print a table and one JSON line.
    // Boxed: the largest arguments by far, parsed once.
    Bench(Box<BenchArgs>),
    /// Run as a service: publish as a synthetic device every --interval,
    /// watch it arrive through the gateway, export the outcome on /metrics.
    Probe(ProbeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let shutdown = fieldcast_service::shutdown_on_signal();

    match cli.command {
        Command::Fleet(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("fieldcast-sim: error: {e}");
                    return ExitCode::from(2);
                }
            };
            let summary = fleet::run(config, shutdown).await;
            println!("{summary}");
            if summary.connects == 0 {
                error!("never reached the broker");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Bench(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("fieldcast-sim: error: {e}");
                    return ExitCode::from(2);
                }
            };
            match bench::run(config, shutdown).await {
                Ok(report) => {
                    println!("{report}");
                    println!("{}", report.json_line());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!(error = %e, "benchmark failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe(args) => {
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("fieldcast-sim: error: {e}");
                    return ExitCode::from(2);
                }
            };
            let listener = match tokio::net::TcpListener::bind(config.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "fieldcast-sim: error: cannot listen on {}: {e}",
                        config.listen
                    );
                    return ExitCode::from(2);
                }
            };
            match probe::run(config, listener, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "probe failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
