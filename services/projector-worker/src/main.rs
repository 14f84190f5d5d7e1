use clap::Parser as _;
use projector_worker::{Application, Cli};
use service_kit::startup::run_app;

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.settings.telemetry.clone();
    run_app(
        "projector-worker",
        &telemetry,
        Application::build(cli.settings),
    )
    .await
}
