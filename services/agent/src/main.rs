use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ksctl_agent::Config::parse();
    ksctl_runtime::init_tracing(false);
    ksctl_agent::run(config, ksctl_runtime::shutdown_signal()).await
}
