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
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features dhat-heap`: every allocation recorded, for the memory breakdown in BENCHMARKS.md.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// mimalloc's options that are not its defaults (`MIMALLOC_<NAME>` in the environment still wins), as
/// (environment name, option id in mimalloc.h's `mi_option_e`, value). mimalloc keeps freed pages resident
/// for `purge_delay` (1 s by default) so it can reuse them without a system call; request buffers come and go
/// in bursts, so at a steady load most of the process's anonymous memory was such pages (BENCHMARKS.md,
/// "Memory: where it goes"). Purging at once costs no measurable speed flat out. The arena's eager commit
/// only applies to arenas reserved after this runs (the first one is reserved before `main`).
const ALLOCATOR_OPTIONS: [(&str, std::ffi::c_int, std::ffi::c_long); 2] = [
    ("MIMALLOC_PURGE_DELAY", 15, 0),
    ("MIMALLOC_ARENA_EAGER_COMMIT", 4, 0),
];

#[cfg(not(feature = "dhat-heap"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    for (env, option, value) in ALLOCATOR_OPTIONS {
        if std::env::var_os(env).is_none() {
            // SAFETY: `mi_option_set` takes two integers and stores the value in mimalloc's option table
            // with an atomic write; it reads and writes no memory of ours. `option` is an id that exists
            // in the mimalloc version libmimalloc-sys builds (v3's `mi_option_e`: arena_eager_commit = 4,
            // purge_delay = 15), and both options accept any value at any time.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    #[cfg(not(feature = "dhat-heap"))]
    tune_allocator();
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
