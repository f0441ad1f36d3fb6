//! `fieldcast-bridge`: configuration, logging, signals; the work is in the
//! library.

use clap::Parser;

use fieldcast_bridge::Config;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("fieldcast-bridge: configuration error: {e}");
        return std::process::ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldcast-bridge: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldcast-bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    fieldcast_bridge::run(config, fieldcast_service::shutdown_on_signal()).await
}
