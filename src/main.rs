//! The `tailgate` command line: `serve`, `check`, `pack` and `channel`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tailgate::conf::{Config, ProcessEnv};
use tailgate::pack;

fn fail(msg: &str) -> ExitCode {
    eprintln!("tailgate: {msg}");
    ExitCode::FAILURE
}

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
    /// Write the head+tails layout of a signed APK: the base once, one tail per channel,
    /// the manifest last.
    Pack {
        /// The signed base APK (v1, v2 or v3).
        #[arg(long)]
        apk: PathBuf,
        /// One channel per line; `#` comments and blank lines are ignored.
        #[arg(long)]
        channels: PathBuf,
        /// s3://bucket/<package>: S3 from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, or from -c.
        #[arg(long, conflicts_with = "out", required_unless_present = "out")]
        dest: Option<String>,
        /// Write the layout below this directory instead (keys as in the bucket).
        #[arg(long, requires = "package")]
        out: Option<PathBuf>,
        /// The package prefix for --out (e.g. apps/foo/1.2.3).
        #[arg(long)]
        package: Option<String>,
        /// Channel scheme for v2/v3 APKs (v1-only APKs always use the ZIP comment).
        #[arg(long, value_enum, default_value = "walle")]
        scheme: SchemeArg,
        /// Walle extra key=value, repeatable.
        #[arg(long = "extra", value_parser = key_value)]
        extras: Vec<(String, String)>,
        /// Take S3 from an s3 block of this conf file.
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        /// The s3 block's name (when the conf file has more than one).
        #[arg(long = "s3", requires = "conf")]
        s3: Option<String>,
    },
    /// Print the channel of a whole APK, then Walle extras as key=value lines.
    Channel { apk: PathBuf },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemeArg {
    Walle,
    Vasdolly,
    Both,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expecting key=value")),
    }
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
        Command::Pack {
            apk,
            channels,
            dest,
            out,
            package,
            scheme,
            extras,
            conf,
            s3,
        } => {
            let dest = match (dest, out, package) {
                (Some(url), _, _) => match pack::parse_s3_url(&url) {
                    Ok((bucket, package)) => pack::Dest::S3 {
                        bucket,
                        package,
                        conf: conf.map(|c| (c, s3)),
                    },
                    Err(e) => return fail(&e),
                },
                (None, Some(dir), Some(package)) => pack::Dest::Dir { dir, package },
                _ => return fail("--dest or --out with --package is required"),
            };
            let scheme = match scheme {
                SchemeArg::Walle => pack::Scheme::Walle,
                SchemeArg::Vasdolly => pack::Scheme::VasDolly,
                SchemeArg::Both => pack::Scheme::Both,
            };
            match pack::pack(&pack::PackArgs {
                apk,
                channels,
                dest,
                scheme,
                extras,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Channel { apk } => match pack::read_channel(&apk) {
            Ok(Some(info)) => {
                println!("{}", info.channel);
                for (k, v) in info.extras {
                    println!("{k}={v}");
                }
                ExitCode::SUCCESS
            }
            Ok(None) => fail(&format!("{}: no channel found", apk.display())),
            Err(e) => fail(&e),
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
