//! The `portico` command: `run`, `check`, `schema`, `plugin inspect`, `plugin new`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portico::server::{Options, Server};

/// mimalloc rather than the system allocator: a proxy allocates and frees small buffers, header
/// maps and futures on every request, and glibc's malloc took about 1 µs of the ~9 µs of user
/// CPU per request under scenario 1's load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use portico::telemetry::log::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Portico: an edge proxy with Ingress-grade routing and WebAssembly middleware"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "text",
        env = "PORTICO_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter in RUST_LOG syntax (default: $RUST_LOG, else "info").
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a configuration file or directory.
    Run {
        /// A YAML file, or a directory whose *.yaml files are merged in name order.
        #[arg(long, short, env = "PORTICO_CONFIG")]
        config: PathBuf,
        /// Worker threads (default: one per CPU).
        #[arg(long, env = "PORTICO_WORKERS")]
        workers: Option<usize>,
    },
    /// Print the configuration's JSON Schema (for editors: yaml-language-server).
    Schema,
    /// Work with WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Validate a configuration and print every error with file, line and YAML path.
    Check {
        #[arg(long, short, env = "PORTICO_CONFIG")]
        config: PathBuf,
        /// Also try to bind every listener address (fails if the ports are in use, e.g. by a
        /// running Portico).
        #[arg(long)]
        bind: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show a module's Proxy-Wasm ABI version, exports and imports, and whether Portico can
    /// run it (imports it does not provide are named). Exit code 0 when it can, 1 when not.
    Inspect {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Create a plugin crate NAME (in the current directory, or --dir) that builds, tests and
    /// loads as it stands: the SDK, a typed config, a hook, unit tests and a portico.yaml.
    New {
        /// The crate's name: lowercase letters, digits, '-' and '_'.
        name: String,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin-sdk directory of a Portico checkout (default: the one this binary was
        /// built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(cli.log_format, cli.log.as_deref());
    match cli.command {
        Command::Check { config, bind } => check(config, bind),
        Command::Run { config, workers } => run(config, workers),
        Command::Schema => {
            print!("{}", portico::config::schema());
            ExitCode::SUCCESS
        }
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => inspect(&file),
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => {
            let sdk = sdk.unwrap_or_else(portico::scaffold::default_sdk);
            match portico::scaffold::create(&name, &dir, &sdk) {
                Ok(root) => {
                    println!("created {}", root.display());
                    println!(
                        "next: cd {} && cargo test && cargo build --target wasm32-wasip1 --release",
                        root.display()
                    );
                    println!("then: portico run --config {}/portico.yaml", root.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico plugin new: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn inspect(file: &std::path::Path) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match portico::plugin::inspect::report(&bytes) {
        Ok((text, runnable)) => {
            print!("{}\n{text}", file.display());
            if runnable {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn check(config: PathBuf, bind: bool) -> ExitCode {
    let checked = portico::server::check(&config).and_then(|snapshot| {
        if bind {
            portico::server::check_bind(&snapshot)?;
        }
        Ok(snapshot)
    });
    match checked {
        Ok(snapshot) => {
            println!(
                "{}: OK ({} listeners, {} routes, hash {})",
                config.display(),
                snapshot.listeners.len(),
                snapshot.routes.len(),
                snapshot.hash
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", config.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn run(config: PathBuf, workers: Option<usize>) -> ExitCode {
    // One worker: a current-thread runtime has no work-stealing overhead at all.
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().thread_name("portico-worker");
    if let Some(n) = workers.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Catch the stop signals before the listeners bind: a SIGTERM that arrives while
        // starting must shut down gracefully, not kill the process.
        let stop = match stop_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot handle SIGTERM/SIGINT: {e}");
                return ExitCode::FAILURE;
            }
        };
        let options = Options {
            config,
            watch: true,
            sighup: true,
        };
        let server = match Server::start(options).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_stop_signal(stop).await;
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

type StopSignals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn stop_signals() -> std::io::Result<StopSignals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    ))
}

async fn wait_for_stop_signal((mut term, mut int): StopSignals) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
