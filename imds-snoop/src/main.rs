//! imds-snoop: argument parsing and wiring only; the data path lives in the library's
//! modules (lib.rs), in order: capture -> decode -> http -> process -> output.

use clap::Parser;
use imds_snoop::{cli, daemon, readiness, report};

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Check { ready_file }) => return readiness::check(&ready_file),
        Some(cli::Command::Report(args)) => {
            return report::run(&args).unwrap_or_else(|e| {
                eprintln!("imds-snoop report: {}", error_chain(&e));
                std::process::ExitCode::FAILURE
            });
        }
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imds-snoop: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(cli.run)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text an outer message
/// already includes (our error types name their cause in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}
