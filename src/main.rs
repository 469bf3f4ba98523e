//! kotel: an OpenTelemetry-native Linux kernel observability agent.

mod agent;
mod config;
mod resource;
mod selfmetrics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kotel",
    version,
    about = "OpenTelemetry-native Linux kernel observability agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (no -c: the embedded default config).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List every collector, its mode, and whether it can run here.
    Collectors {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Send one `kotel.test` event through the logs pipeline and report
    /// whether each exporter delivered it (exit 1 if one did not).
    TestEvent {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a config file (exit 2 with file:line:column and key on error).
    Check { file: PathBuf },
    /// Print the embedded default config, with comments.
    Default {
        /// Every setting of every collector and exporter with its default value.
        #[arg(long)]
        full: bool,
    },
}

/// Exit code for unusable configuration.
const EXIT_CONFIG: u8 = 2;

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KOTEL_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("kotel")
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kotel {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Default { full },
        } => {
            if full {
                match serde_yaml::to_string(&config::Config::default()) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", config::DEFAULT_YAML);
            }
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => match config::load(&config::Source::File(file.clone())) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Collectors { config } => {
            let cfg = match config::load(&config::source_for(config.as_deref())) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            println!("{:<16} {:<12} STATUS", "COLLECTOR", "MODE");
            for e in kotel_receiver::catalog(&cfg.collectors) {
                println!("{:<16} {:<12} {}", e.name, e.mode.as_str(), e.availability);
            }
            ExitCode::SUCCESS
        }
        Command::TestEvent { config } => {
            init_logging();
            let source = config::source_for(config.as_deref());
            if let Err(e) = config::load(&source) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(agent::send_test_event(source)))
            {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            init_logging();
            let source = config::source_for(config.as_deref());
            if let Err(e) = config::load(&source) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let runtime = match runtime() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
