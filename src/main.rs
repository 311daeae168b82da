//! The `tidewatch` binary: parse, load config, bind, run. Everything else lives in the library crates and
//! in `app`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tidewatch::cli::{Cli, Command, ConfigArgs};
use tidewatch::config::{Config, LogFormat};
use tidewatch::{app, loadgen};

/// mimalloc: built for many threads allocating and freeing concurrently, which is this server's pattern
/// (request buffers are often freed by a shard task on another thread than the one that allocated them).
/// Built with `no_thp` (Cargo.toml): without transparent huge pages its resident memory follows the load.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features dhat-heap`: every allocation recorded, for the memory breakdown in BENCHMARKS.md.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Run(ConfigArgs::default()));
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match command {
        Command::Run(args) => {
            let cfg = load(&args)?;
            runtime.block_on(async {
                let listeners = app::Listeners::bind(&cfg).await?;
                println!("tidewatch listening {}", listeners.describe());
                app::run(cfg, listeners, tidewatch::shutdown_signal()).await
            })
        }
        Command::Demo(args) => {
            let cfg = load(&args.config)?;
            runtime.block_on(tidewatch::demo(cfg, args))
        }
        Command::Loadgen(args) => {
            init_logs(&Config::default());
            let report = runtime.block_on(loadgen::run(args.clone(), tidewatch::shutdown_signal()))?;
            loadgen::print(&report, args.json);
            Ok(())
        }
        Command::ForecastEval(args) => tidewatch::forecast_eval::run(args),
        Command::Nab(args) => tidewatch::nab::run(&args),
        Command::Simulate(args) => tidewatch::simulate::run(&args),
        Command::Crdgen => {
            print!("{}", tidewatch_scaler::crd::crd_yaml());
            Ok(())
        }
        Command::CheckConfig(args) => {
            let cfg = Config::load(args.config.as_deref(), &args.all_sets())?;
            print!("{}", serde_yaml::to_string(&cfg)?);
            Ok(())
        }
    }
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    let cfg = Config::load(args.config.as_deref(), &args.all_sets())?;
    init_logs(&cfg);
    Ok(cfg)
}

/// Logs go to stderr; the text format is coloured only when stderr is a terminal (and `NO_COLOR` is
/// unset), so a log written to a file or a pipe carries no escape sequences.
fn init_logs(cfg: &Config) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
