//! The `tailgate` command line: `serve` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tailgate::conf::{Config, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "tailgate",
    version,
    about = "Origin sidecar serving head+tail composite objects from S3"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve in the foreground with the given configuration.
    Serve {
        /// The configuration file.
        #[arg(short = 'c', long = "conf", default_value = "conf/tailgate.conf")]
        conf: PathBuf,
    },
    /// Check a configuration file and exit (0 when valid), like `nginx -t`.
    Check {
        #[arg(short = 'c', long = "conf", default_value = "conf/tailgate.conf")]
        conf: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { conf } => match Config::load(&conf, &ProcessEnv) {
            Ok(_) => {
                println!(
                    "tailgate: configuration file {} test is successful",
                    conf.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tailgate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { conf } => match tailgate::server::run(&conf) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tailgate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
