//! `alpn-tunnel`: a local port (or stdin/stdout) to a service routed by ALPN,
//! through whatever load balancer is in the way.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alpn_protocol::names::Names;
use alpn_protocol::names_config::{NamesConfig, SubprotocolTokens, TypeTokens};
use alpn_tunnel::cache::{self, Cache};
use alpn_tunnel::pem::{read_cert_key, read_certs};
use alpn_tunnel::proxy::{self, Credentials};
use alpn_tunnel::{
    config_file, explain, probe, up, Client, Options, ServerUrl, Timeouts, UpgradeMode,
};
use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use log::{error, info};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Reach a service routed by ALPN (PostgreSQL, Redis, SSH, ...) through an HTTP
/// load balancer: a local port per service, or one stream on stdin/stdout.
///
/// Whether a load balancer is in the way is detected once per server (a TLS
/// handshake offering only the service's ALPN) and cached, with the framing
/// that worked, for --cache-ttl; --upgrade or ALPN_TUNNEL_UPGRADE override it.
/// An HTTP proxy (--proxy, or HTTPS_PROXY and the like, as curl reads them)
/// carries the outer connection with CONNECT. Run `alpn-tunnel probe` first
/// when something does not connect.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept local TCP connections and carry each as its own tunnel.
    ///
    /// With --pool N, N tunnels per service are kept pre-opened: connected
    /// through the load balancer and upgraded, kept alive by pings, inner TLS
    /// not started; a new local connection takes one and needs only the inner
    /// TLS handshake, and the pool opens another in its place.
    ///
    /// Example: alpn-tunnel forward --server https://db.example.com --alpn postgresql
    /// --listen 127.0.0.1:5432 --ca router-ca.pem --cert me.pem --key me.key
    Forward {
        #[command(flatten)]
        common: Common,
        /// The service's ALPN, or ALPN=LISTEN for several services in one process.
        #[arg(long, required = true)]
        alpn: Vec<String>,
        /// Where to listen when a single --alpn has no =LISTEN.
        #[arg(long)]
        listen: Option<String>,
        /// Tunnels per service to keep pre-opened (0 to 100; 0: none). Each
        /// holds a connection through the load balancer and a place under the
        /// router's connection cap; the router ends one unused for its
        /// limits.preopen_timeout (5 minutes by default) and the pool opens
        /// another. Only upgraded paths are pooled (direct TLS is not), and a
        /// connection that finds none ready opens a tunnel as usual.
        #[arg(long, default_value = "0", value_parser = alpn_tunnel::pool::parse_size)]
        pool: usize,
    },
    /// Show every step of reaching the service, with timings and advice.
    Probe {
        #[command(flatten)]
        common: Common,
        /// The service's ALPN.
        #[arg(long)]
        alpn: String,
    },
    /// Drop cached detection results (all, or one server's), so that the next
    /// tunnel detects afresh.
    Forget {
        /// The server whose entries to drop (as given to --server); default: all.
        server: Option<String>,
    },
    /// One tunnel on stdin/stdout, e.g. as an SSH ProxyCommand:
    /// ssh -o ProxyCommand='alpn-tunnel connect --server https://%h --alpn ssh' host
    Connect {
        #[command(flatten)]
        common: Common,
        /// The service's ALPN.
        #[arg(long)]
        alpn: String,
    },
    /// Start the forwards of the configuration file (all, or those named),
    /// each on its own listener. SIGHUP reloads the file: unchanged forwards
    /// and their connections are untouched, removed or changed ones stop
    /// listening and their connections drain (up to the file's `drain`), new
    /// ones start; a bad file is refused and logged. SIGTERM or Ctrl-C stop all.
    ///
    /// Example: alpn-tunnel up            (every forward in the default file)
    ///          alpn-tunnel up --config tunnels.toml postgres redis
    Up {
        #[command(flatten)]
        file: ConfigArg,
        /// Forwards to start (their `name`, which defaults to the ALPN); default: all.
        names: Vec<String>,
    },
    /// Validate the configuration file (certificates included) and print a
    /// summary; a bad file is reported with the key that is wrong.
    CheckConfig {
        #[command(flatten)]
        file: ConfigArg,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The configuration file; default: $XDG_CONFIG_HOME/alpn-tunnel/config.toml
    /// (~/.config/alpn-tunnel/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.config {
            Some(p) => Ok(p.clone()),
            None => Ok(config_file::default_path()?),
        }
    }
}

#[derive(Args)]
struct Common {
    /// The server: https://HOST[:PORT][/PATH], the load balancer or the router's
    /// direct port (http://HOST:PORT for plain HTTP to Envoy). PATH defaults to
    /// /connectionupgrade.
    #[arg(long)]
    server: String,
    /// The inner TLS server name (SNI); default: the server's host.
    #[arg(long)]
    sni: Option<String>,
    /// CA file (PEM) that verifies the router; default: the system's roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM chain), for routes that require one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA file (PEM) that verifies the load balancer; default: the system's roots.
    #[arg(long)]
    outer_ca: Option<PathBuf>,
    /// auto (detect; an upgrade climbs the ladder websocket, alpn-ping, alpn
    /// when one is refused as "not this framing", and remembers the one that
    /// worked), never (direct TLS), always (an upgrade, climbing the same
    /// ladder), or a framing, which never falls back: websocket (offers subprotocols alpn-ping, then
    /// alpn; the server picks), websocket-ping (offers only alpn-ping),
    /// alpn-ping, or alpn (raw bytes: nothing can ping it, so a quiet tunnel
    /// dies at a load balancer's idle timeout). Logs and probe name the
    /// framing in use.
    #[arg(long, env = "ALPN_TUNNEL_UPGRADE", default_value = "auto", value_parser = UpgradeMode::parse)]
    upgrade: UpgradeMode,
    /// After this long with nothing sent, the client pings (a WebSocket Ping, or
    /// an empty alpn-ping frame) so that idle timeouts never fire, whether or
    /// not the server pings; keep it under the load balancer's idle timeout.
    /// Raw alpn cannot ping. 0s disables it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// The local address to connect from (on hosts with several addresses).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// The HTTP proxy for the outer connection: http://[USER:PASSWORD@]HOST[:PORT]
    /// (port 1080 by default, as in curl), reached with CONNECT; `none` turns
    /// proxies off. Default, as curl: https_proxy, HTTPS_PROXY (for an http://
    /// server only http_proxy), then all_proxy, ALL_PROXY. no_proxy / NO_PROXY
    /// (hosts, domain suffixes, addresses, CIDR blocks, HOST:PORT, `*`) lists
    /// the servers reached without one, whatever set it.
    #[arg(long, env = "ALPN_TUNNEL_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// USER:PASSWORD for the proxy's Basic authentication (instead of the
    /// proxy URL's user info).
    #[arg(long, env = "ALPN_TUNNEL_PROXY_AUTH", hide_env_values = true)]
    proxy_auth: Option<String>,
    /// On an upgrade, send the inner ClientHello right behind the request
    /// instead of after the 101: a fresh tunnel opens a round trip sooner,
    /// where every hop passes bytes sent before the answer (`probe` says
    /// whether this path does; one that does not makes the inner TLS
    /// handshake time out).
    #[arg(long, env = "ALPN_TUNNEL_EARLY_HELLO")]
    early_hello: bool,
    /// Deadline for each network step (connect, each TLS handshake, the upgrade answer).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long a detection result (and the framing that worked) is trusted,
    /// in $XDG_CACHE_HOME/alpn-tunnel/ (else ~/.cache/alpn-tunnel/); a failure
    /// that contradicts it drops it sooner. 0 turns the cache off.
    #[arg(long, env = "ALPN_TUNNEL_CACHE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    cache_ttl: Duration,
    #[command(flatten)]
    names: NameFlags,
}

/// The protocol's names where the server renamed them (the filter's and the
/// router's `type_tokens`, `subprotocol_tokens`, `duplicate_upgrade_header`);
/// the upgrade path is the server URL's.
#[derive(Args)]
#[command(next_help_heading = "Protocol names (when the server renamed them)")]
struct NameFlags {
    /// The token of upgrade type alpn (type_tokens.alpn).
    #[arg(long, env = "ALPN_TUNNEL_ALPN_TOKEN", value_name = "TOKEN")]
    alpn_token: Option<String>,
    /// The token of upgrade type alpn-ping (type_tokens.alpn_ping).
    #[arg(long, env = "ALPN_TUNNEL_ALPN_PING_TOKEN", value_name = "TOKEN")]
    alpn_ping_token: Option<String>,
    /// The token of upgrade type websocket (type_tokens.websocket).
    #[arg(long, env = "ALPN_TUNNEL_WEBSOCKET_TOKEN", value_name = "TOKEN")]
    websocket_token: Option<String>,
    /// The WebSocket subprotocol alpn's token (subprotocol_tokens.alpn).
    #[arg(long, env = "ALPN_TUNNEL_ALPN_SUBPROTOCOL", value_name = "TOKEN")]
    alpn_subprotocol: Option<String>,
    /// The WebSocket subprotocol alpn-ping's token (subprotocol_tokens.alpn_ping).
    #[arg(long, env = "ALPN_TUNNEL_ALPN_PING_SUBPROTOCOL", value_name = "TOKEN")]
    alpn_ping_subprotocol: Option<String>,
    /// The header repeating the upgrade type (duplicate_upgrade_header).
    #[arg(
        long,
        env = "ALPN_TUNNEL_DUPLICATE_UPGRADE_HEADER",
        value_name = "NAME"
    )]
    duplicate_upgrade_header: Option<String>,
}

impl NameFlags {
    /// The names, checked as the server checks its own; errors name the flag.
    fn names(&self) -> anyhow::Result<Names> {
        NamesConfig {
            type_tokens: Some(TypeTokens {
                alpn: self.alpn_token.clone(),
                alpn_ping: self.alpn_ping_token.clone(),
                websocket: self.websocket_token.clone(),
            }),
            subprotocol_tokens: Some(SubprotocolTokens {
                alpn: self.alpn_subprotocol.clone(),
                alpn_ping: self.alpn_ping_subprotocol.clone(),
            }),
            duplicate_upgrade_header: self.duplicate_upgrade_header.clone(),
            ..Default::default()
        }
        .into_names()
        .map_err(|e| {
            let flag = match e.key.as_str() {
                "type_tokens.alpn" => "--alpn-token",
                "type_tokens.alpn_ping" => "--alpn-ping-token",
                "type_tokens.websocket" => "--websocket-token",
                "subprotocol_tokens.alpn" => "--alpn-subprotocol",
                "subprotocol_tokens.alpn_ping" => "--alpn-ping-subprotocol",
                _ => "--duplicate-upgrade-header",
            };
            anyhow::anyhow!("{flag}: {}", e.message)
        })
    }
}

impl Common {
    fn client(&self, alpn: &str) -> anyhow::Result<Client> {
        let server = ServerUrl::parse(&self.server).map_err(anyhow::Error::msg)?;
        let load = |p: &Option<PathBuf>| {
            p.as_deref()
                .map(read_certs)
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        let client_cert = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(read_cert_key(c, k).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        let proxy = proxy::choose(
            &server,
            self.proxy.as_deref(),
            // Parsed here rather than by clap, whose errors would show the value.
            self.proxy_auth
                .as_deref()
                .map(Credentials::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--proxy-auth: {e}"))?,
            |name| std::env::var(name).ok(),
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(p) = &proxy {
            info!("{server}: through the proxy {p}");
        }
        let options = Options {
            sni: self.sni.clone(),
            ca: load(&self.ca)?,
            client_cert,
            outer_ca: load(&self.outer_ca)?,
            upgrade: self.upgrade,
            names: self.names.names()?,
            ping_interval: self.ping_interval,
            bind: self.bind,
            proxy,
            cache: Cache::user(self.cache_ttl),
            early_hello: self.early_hello,
            timeouts: Timeouts {
                connect: self.timeout,
                tls: self.timeout,
                upgrade: self.timeout,
            },
        };
        Ok(Client::new(server, alpn, options)?)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match Cli::parse().command {
            Command::Forward {
                common,
                alpn,
                listen,
                pool,
            } => forward(&common, &alpn, listen.as_deref(), pool).await,
            Command::Probe { common, alpn } => {
                let client = common.client(&alpn)?;
                let report = probe::probe(&client).await;
                print!("{}", report.render(&client));
                if report.path.is_none() {
                    bail!("probe failed");
                }
                Ok(())
            }
            Command::Connect { common, alpn } => connect(&common, &alpn).await,
            Command::Forget { server } => forget(server.as_deref()),
            Command::Up { file, names } => {
                let (reloads, shutdown) = up::signals().context("installing signal handlers")?;
                Ok(up::up(&file.path()?, &names, reloads, shutdown).await?)
            }
            Command::CheckConfig { file } => {
                print!("{}", up::check(&file.path()?)?);
                Ok(())
            }
        }
    });
    // A read of stdin may still be blocked on a thread of its own (a tunnel
    // that was cut does not wait for stdin's EOF): do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn forget(server: Option<&str>) -> anyhow::Result<()> {
    let Some(dir) = cache::user_dir() else {
        bail!("no cache directory: neither XDG_CACHE_HOME nor HOME is set");
    };
    let server = server
        .map(ServerUrl::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let forgotten = cache::forget(&dir, server.as_ref())
        .with_context(|| format!("clearing {}", dir.display()))?;
    let what = server.map_or_else(|| "any server".to_string(), |s| s.to_string());
    if forgotten.is_empty() {
        println!("nothing cached for {what} in {}", dir.display());
    }
    for entry in forgotten {
        println!("forgot {entry}");
    }
    Ok(())
}

async fn connect(common: &Common, alpn: &str) -> anyhow::Result<()> {
    let client = common.client(alpn)?;
    let (mut tunnel, path) = client.connect().await?;
    info!("connected to {} for {alpn} via {path}", client.server());
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    match tokio::io::copy_bidirectional(&mut stdio, &mut tunnel).await {
        Ok((up, down)) => {
            info!("closed: {up} bytes sent, {down} received");
            Ok(())
        }
        Err(e) => {
            // Hand on what did arrive (stdout writes complete on a thread of
            // their own) before reporting the failure.
            let _ = tokio::time::timeout(common.timeout, stdio.flush()).await;
            bail!("the tunnel via {path}: {}", explain(&e, path))
        }
    }
}

async fn forward(
    common: &Common,
    alpns: &[String],
    listen: Option<&str>,
    pool: usize,
) -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    for a in alpns {
        match a.split_once('=') {
            Some((alpn, addr)) => pairs.push((alpn.to_string(), addr.to_string())),
            None if alpns.len() == 1 => match listen {
                Some(addr) => pairs.push((a.clone(), addr.to_string())),
                None => bail!("--alpn {a} needs --listen ADDR (or write --alpn {a}=ADDR)"),
            },
            None => bail!(
                "with several services, write each as --alpn ALPN=LISTEN ({a:?} has no =LISTEN)"
            ),
        }
    }
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for (alpn, addr) in pairs {
        let client = common.client(&alpn)?;
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        info!(
            "listening on {} for {alpn} at {}",
            listener.local_addr()?,
            client.server()
        );
        tasks.push(tokio::spawn(alpn_tunnel::forward_pooled(
            listener,
            client,
            pool,
            shutdown.clone(),
        )));
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    info!("Ctrl-C: stopping");
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}
