//! The `dbtool` command line: parse, run, print the error chain, exit.

mod cli;
mod cmd;
mod config;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::init_tracing(cli.verbose, cli.quiet, cli.log_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(cmd::exit_code_of(&e));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let text = cmd::render(&e);
            eprintln!("error: {text}");
            cli::log_error(&text);
            ExitCode::from(cmd::exit_code_of(&e))
        }
    }
}
