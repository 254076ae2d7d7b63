//! The `drisc` command: run the server, or mint a development token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use drisc::config::Settings;
use drisc::{App, healthcheck, telemetry};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// jemalloc (see BENCHMARKS.md for why not the system allocator), where it builds:
/// not with MSVC, which keeps the system allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "drisc",
    version,
    about = "Session-control server for video streaming (the DRISC protocol)",
    long_about = "Session-control server for video streaming, speaking the DRISC \
                  (Simultaneous Session Control) protocol.\n\n\
                  Start it with `drisc serve` (or just `drisc`): it listens on 127.0.0.1:8080 \
                  with development keys and keeps its data in ./drisc-data.\n\
                  Then mint a customer token with `drisc token --publisher 1 --customer 42` \
                  and call POST /sessions with it. See README.md for a walk-through."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Print a development customer token (a JWT) for a publisher and a customer.
    Token(TokenArgs),
    /// Check the configuration and print the settings in effect, as TOML (secrets redacted).
    CheckConfig(ConfigArg),
    /// Exit 0 if the server answers GET /readyz with 200 (ready to admit), 1 otherwise:
    /// for container HEALTHCHECKs and supervisors.
    Healthcheck(HealthcheckArgs),
}

#[derive(clap::Args)]
struct HealthcheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The readiness URL; default: http://<server.host>:<server.port>/readyz, with
    /// 127.0.0.1 (or ::1) in place of a wildcard host.
    #[arg(long)]
    url: Option<String>,
    /// How long to wait for the whole answer.
    #[arg(long, default_value = "2s")]
    timeout: humantime::Duration,
}

#[derive(clap::Args, Default)]
struct ConfigArg {
    /// A TOML file overriding config/default.toml (environment variables DRISC__SECTION__KEY override both).
    #[arg(long, short, env = "DRISC_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Interface to listen on (server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (server.port); 0 picks a free port.
    #[arg(long, short)]
    port: Option<u16>,
    /// Directory of the embedded database (storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The publisherId claim.
    #[arg(long)]
    publisher: String,
    /// The customerId claim.
    #[arg(long)]
    customer: String,
    /// How long the token is valid, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "12h")]
    ttl: humantime::Duration,
    /// HMAC secret to sign with; default: the server's auth.customer_key.
    #[arg(long)]
    secret: Option<String>,
    /// Signing algorithm: HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    alg: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Healthcheck(args) => healthcheck::run(args.config.config.as_deref(), args.url, args.timeout.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drisc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.config.as_deref())?;
    if let Some(host) = args.host {
        settings.server.host = host;
    }
    if let Some(port) = args.port {
        settings.server.port = port;
    }
    if let Some(dir) = args.data_dir {
        settings.storage.data_dir = dir;
    }
    telemetry::init(&settings.log);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let app = App::build(settings).await?;
        let stop = app.stop_token();
        let hurry = app.hurry_token();
        let mut signals = Signals::listen()?;
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!(
                "shutdown requested: /readyz answers 503; after server.drain_period, no new connections, \
                 sockets closed (1012) and sessions saved"
            );
            stop.cancel();
            signals.next().await;
            tracing::info!("second signal: skipping the drain and the wait for connections; saving sessions now");
            hurry.cancel();
        });
        app.run().await
    });
    // Sockets still closing (a peer that never reads) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// SIGTERM and SIGINT (Ctrl-C), listened to once for the whole run, so that a second
/// signal is never missed between two waits.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_config(args: ConfigArg) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    print!("{}", settings.to_toml()?);
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => s,
        None => {
            let settings = Settings::load(args.config.config.as_deref())?;
            settings
                .customer_key()?
                .filter(|k| !k.trim_start().starts_with("-----BEGIN"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "auth.customer_key is not an HMAC secret (or auth.jwks_uri replaces it): pass --secret, or sign with your identity provider"
                    )
                })?
        }
    };
    let alg = match args.alg.to_ascii_uppercase().as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => anyhow::bail!("--alg {other}: use HS256, HS384 or HS512"),
    };
    let ttl: Duration = args.ttl.into();
    let exp = jsonwebtoken::get_current_timestamp() + ttl.as_secs();
    let claims = serde_json::json!({
        "publisherId": args.publisher,
        "customerId": args.customer,
        "exp": exp,
    });
    let token = jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.trim().as_bytes()),
    )?;
    println!("{token}");
    Ok(())
}
