//! The `tidewatch` binary: parse, load config, bind, run. Everything else lives in the library crates and
//! in `app`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tidewatch::cli::{Cli, Command, ConfigArgs};
use tidewatch::config::{Config, LogFormat};
use tidewatch::{app, loadgen};

/// jemalloc, with the options below: what it holds follows what is live more closely than mimalloc's pages
/// did when each window close allocates and frees a snapshot of every series (BENCHMARKS.md, "Which
/// allocator").
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (`_RJEM_MALLOC_CONF` in the environment is read after them,
/// so an operator can still override any): one arena (the threads here allocate little concurrently; with
/// one arena per core, each kept its own free pages), thread caches only for blocks up to 1 KiB (the
/// default, 32 KiB, keeps a window close's freed snapshot rows cached per thread), freed pages given back
/// after a second rather than ten, no lazily-freed ("muzzy") stage, and no transparent huge pages (with
/// them every touched 2 MiB region stays resident whole).
#[cfg(not(feature = "dhat-heap"))]
// SAFETY: jemalloc reads this symbol (a weak default in jemalloc, overridden here) as a `const char *`
// before `main`; a `&u8` to the first byte of a static, NUL-terminated string has that layout, and the
// string is never written. Exporting a symbol is the only way to set options that apply from jemalloc's
// first allocation (`narenas` cannot be changed later).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"narenas:1,tcache_max:1024,dirty_decay_ms:1000,muzzy_decay_ms:0,thp:never\0"[0];

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A blocking thread (a window close's append) ends a second after its last task rather than
        // ten, taking its cache of freed blocks and its stack with it: at the default 10 s windows it
        // would otherwise live on or not by a few milliseconds.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
        .context("starting the tokio runtime")?;
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
