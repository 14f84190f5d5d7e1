use clap::Parser as _;
use query_api::{Application, Cli};
use service_kit::startup::{ApiCommand, run_app};

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(ApiCommand::Token(token)) = &cli.command {
        return token.print(&cli.settings.jwt);
    }
    let telemetry = cli.settings.telemetry.clone();
    run_app("query-api", &telemetry, Application::build(cli.settings)).await
}
