use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ksctl_manager::Config::parse();
    ksctl_runtime::init_tracing(config.common.log_json);
    ksctl_manager::run(config, ksctl_runtime::shutdown_signal()).await?;
    Ok(())
}
