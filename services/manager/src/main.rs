use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ksctl_manager::Config::parse();
    ksctl_runtime::init_tracing(config.common.log_json);
    if let Some(ksctl_manager::Cmd::Reseal) = config.cmd {
        let done = ksctl_manager::reseal(config).await?;
        println!("{} secrets sealed again under the first key; {} already were", done.moved, done.current);
        return Ok(());
    }
    ksctl_manager::run(config, ksctl_runtime::shutdown_signal()).await?;
    Ok(())
}
