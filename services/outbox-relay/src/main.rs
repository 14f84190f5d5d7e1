use clap::Parser as _;
use outbox_relay::{Application, Cli};
use service_kit::shutdown::{shutdown_signal, token_from};
use service_kit::telemetry::init_tracing;

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.settings.telemetry, "outbox-relay");
    let app = Application::build(cli.settings)
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "cannot start"))?;
    app.run_until_stopped(token_from(shutdown_signal())).await
}
