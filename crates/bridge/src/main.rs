//! `fieldcast-bridge`: configuration, logging, signals; the work is in the
//! library. `fieldcast-bridge rebuild-redis` runs the one-shot rebuild of
//! the Redis hot state instead (docs/redis-rebuild.md).

use std::process::ExitCode;

use clap::Parser;

use fieldcast_bridge::config::Command;
use fieldcast_bridge::rebuild::RebuildArgs;
use fieldcast_bridge::Config;

/// jemalloc: the bridge allocates per message (arguments, envelopes,
/// rows), and glibc's malloc was a fifth of its CPU at the (d) load
/// (docs/benchmarks.md, "Cost per message").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::RebuildRedis(args)) = &config.command {
        return rebuild_redis(args);
    }
    if let Err(e) = config.validate() {
        eprintln!("fieldcast-bridge: configuration error: {e}");
        return ExitCode::from(2);
    }
    init_tracing();
    let Some(rt) = runtime("fieldcast-bridge") else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldcast-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    fieldcast_bridge::run(config, fieldcast_service::shutdown_on_signal()).await
}

/// Exit status: 0 when every device is in the new layout (and with
/// `--delete-old` every old key is gone), 2 for bad flags, 1 otherwise.
fn rebuild_redis(args: &RebuildArgs) -> ExitCode {
    const NAME: &str = "fieldcast-bridge rebuild-redis";
    if let Err(e) = args.validate() {
        eprintln!("{NAME}: configuration error: {e}");
        return ExitCode::from(2);
    }
    init_tracing();
    let Some(rt) = runtime(NAME) else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let shutdown = fieldcast_service::shutdown_on_signal();
        fieldcast_bridge::rebuild::run(args, &shutdown).await
    });
    match result {
        Ok(report) if report.complete() => {
            println!("{NAME}: {report}");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{NAME}: {report}");
            eprintln!(
                "{NAME}: not complete: {} devices failed, old keys of {} kept (named in the log); fix them and run it again, which is safe",
                report.failed, report.old_kept
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            None
        }
    }
}
