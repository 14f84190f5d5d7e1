use admin_api::{Application, Cli, Command, cli, migrate};
use clap::Parser as _;
use service_kit::startup::run_app;
use service_kit::telemetry::init_tracing;

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate) => {
            init_tracing(&cli.settings.telemetry, "admin-api");
            migrate(&cli.settings)
                .await
                .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "migration failed"))?;
            Ok(())
        }
        Some(Command::Ops(ops)) => {
            let code = cli::run(ops, cli.client).await?;
            std::process::exit(code);
        }
        None => {
            let telemetry = cli.settings.telemetry.clone();
            run_app("admin-api", &telemetry, Application::build(cli.settings)).await
        }
    }
}
