//! The `kiln` command: `kiln serve` runs the service, the operator's commands ([`kiln::ops`]) work
//! on its database file and host, `kiln completions` prints a shell's completion script (made
//! from these very definitions), `kiln openapi` the API's OpenAPI document, and the rest are a client of a running server
//! ([`kiln::client`]). Their flags are the library's; this file puts them together, runs the
//! command asked for, and is the one place where the outcome becomes an exit code:
//!
//! - 0: the command did its work, and what it reports on went well;
//! - 1: it did its work and found a failure (a job that did not succeed, a suite with a case that
//!   did not pass, a failing check of `kiln doctor`), or `kiln serve` stopped on an error;
//! - 2: it could not do its work: flags clap refused, a server unreachable or answering with an
//!   error, a database that could not be opened or written, no async runtime;
//! - 3: a client command reports on a job or batch that has not ended yet (`kiln status`, or a
//!   `--wait SECS` that ran out);
//! - 130: Ctrl-C stopped a client command waiting on a job or batch, which goes on.
//!
//! A reader that goes away early (`kiln token list | head -1`) is not an error: all output goes
//! through [`kiln::cli::print`], which takes a broken pipe as written.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use kiln::cli::{Conclusion, LogFormat, ServeArgs, Settled, note, print};
use kiln::client::{self, ClientCommand};
use kiln::ops::{self, OpsCommand};
use tracing_subscriber::EnvFilter;

/// `kiln --version`: the release and the commit it was built from (see `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KILN_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "kiln",
    version = VERSION,
    about = "A durable job queue for running untrusted code",
    args = leading_client_flags()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: HTTP API, workers and the database
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Ops(OpsCommand),
    #[command(flatten)]
    Client(Box<ClientCommand>),
    /// Print a shell's completion script for kiln, e.g. `source <(kiln completions bash)`
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API, as `GET /openapi.json` serves it
    Openapi,
}

/// `kiln --json status ID`: the client flags before the subcommand's name still work, as when they
/// were global to every command. Hidden, and never read here: clap carries a value given here to
/// the subcommand's global flag of the same id, which wins only if given itself.
fn leading_client_flags() -> [Arg; 3] {
    [
        Arg::new("url").long("url").hide(true),
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .hide(true),
        Arg::new("token").long("token").hide(true),
    ]
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            note(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => match matches.subcommand_matches("serve") {
            Some(given) => settle_and_serve(&runtime, given),
            // clap always gives a subcommand's matches; without them, the flags as parsed.
            None => runtime.block_on(serve(*args)),
        },
        Command::Ops(command) => exit_code(runtime.block_on(ops::run(command))),
        Command::Client(command) => exit_code(runtime.block_on(client::run(*command))),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut script);
            match print(|out| out.write_all(&script)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    note(&format!("cannot write the completion script: {e}"));
                    ExitCode::from(2)
                }
            }
        }
        Command::Openapi => match print(|out| out.write_all(kiln::api::openapi().as_bytes())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                note(&format!("cannot write the document: {e}"));
                ExitCode::from(2)
            }
        },
    }
}

/// `kiln serve`: its config file laid under the flags and environment clap read, then the
/// settings printed (`--print-config`) or served.
fn settle_and_serve(runtime: &tokio::runtime::Runtime, given: &clap::ArgMatches) -> ExitCode {
    match Settled::from_matches(given) {
        Ok(settled) if settled.print_only() => {
            let printed = print(|out| write!(out, "{}", settled.render()));
            exit_code(printed.map(|()| Conclusion::Success))
        }
        Ok(settled) => runtime.block_on(serve(settled.args)),
        Err(e) => {
            note(&e.to_string());
            ExitCode::from(2)
        }
    }
}

/// See the module doc.
fn exit_code(done: Result<Conclusion, impl std::fmt::Display>) -> ExitCode {
    match done {
        Ok(Conclusion::Success) => ExitCode::SUCCESS,
        Ok(Conclusion::Failure) => ExitCode::FAILURE,
        Ok(Conclusion::Pending) => ExitCode::from(3),
        Ok(Conclusion::Interrupted) => ExitCode::from(130),
        Err(e) => {
            note(&e.to_string());
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let log_format = args.log_format;
    init_logging(log_format);
    let result = kiln::server::run(args.config(), shutdown_signal(), |addr| {
        // One line on stdout, for scripts and tests that start the server on port 0. Nobody
        // reading it is no reason to stop serving.
        let _ = print(|out| writeln!(out, "kiln listening on http://{addr}"));
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once, on stderr either way: as a plain line beside text logs, as a log line where
        // the logs are JSON for a collector.
        Err(e) => {
            match log_format {
                LogFormat::Text => note(&e.to_string()),
                LogFormat::Json => tracing::error!(error = %e, "kiln stopped"),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal who has not asked for none: never in a log file.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
