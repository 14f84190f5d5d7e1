use clap::Parser as _;
use query_api::{Application, Cli, Command, print_token};
use service_kit::shutdown::{shutdown_signal, token_from};
use service_kit::telemetry::init_tracing;

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token { user, ttl }) = cli.command {
        return print_token(&cli.settings, user, ttl);
    }
    init_tracing(&cli.settings.telemetry, "query-api");
    let app = Application::build(cli.settings)
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "cannot start"))?;
    app.run_until_stopped(token_from(shutdown_signal())).await
}
