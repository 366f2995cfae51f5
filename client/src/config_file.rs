//! The configuration file of `alpn-tunnel up` and `check-config`: servers (how
//! to reach a router) and forwards (a local listener per service), in TOML.
//! Everything is checked when the file is loaded, certificates included, so a
//! bad file fails at start (or is refused on reload) with the key that is
//! wrong (`servers.db.ca`, `forward[2].listen`). Paths are relative to the
//! file's directory; durations are strings like `"30s"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use alpn_protocol::names::Names;
use alpn_protocol::names_config::{NamesConfig, SubprotocolTokens, TypeTokens};

use crate::cache::Cache;
use crate::pem::{read_cert_key, read_certs, CertKey};
use crate::proxy::{self, Proxy};
use crate::{Client, ClientError, Options, ServerUrl, Timeouts, UpgradeMode};

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// No `--config` was given and no default location is known.
    #[error("no configuration file: pass --config FILE, or set XDG_CONFIG_HOME or HOME")]
    NoPath,
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A value is wrong: not TOML, an unknown key, a value of the wrong type
    /// or out of range, a file it names that cannot be used, or a rule across
    /// keys (a duplicate name or listen address, an unknown server).
    #[error("{path}: key {key:?}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path (`forward[1].listen`), or `.` for the whole file.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// `up NAME` names a forward the file does not have.
    #[error("{path}: no forward named {name:?} (the file has: {known})")]
    UnknownForward {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names the file has, comma-separated.
        known: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default = "de::default_drain", with = "humantime_serde")]
    drain: Duration,
    #[serde(default = "de::default_cache_ttl", with = "humantime_serde")]
    cache_ttl: Duration,
    #[serde(default)]
    servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    forward: Vec<RawForward>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(deserialize_with = "de::url")]
    url: ServerUrl,
    #[serde(default, deserialize_with = "de::sni")]
    sni: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    outer_ca: Option<PathBuf>,
    #[serde(default = "de::default_upgrade", deserialize_with = "de::upgrade")]
    upgrade: UpgradeMode,
    #[serde(default = "de::default_ping_interval", with = "humantime_serde")]
    ping_interval: Duration,
    #[serde(
        default = "de::default_timeout",
        deserialize_with = "de::nonzero_duration"
    )]
    timeout: Duration,
    bind: Option<IpAddr>,
    proxy: Option<String>,
    #[serde(default)]
    early_hello: bool,
    #[serde(default)]
    names: RawNames,
}

/// The protocol's names a client uses, where the server renamed them (the
/// filter's and the router's keys; the upgrade path is the URL's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNames {
    type_tokens: Option<TypeTokens>,
    subprotocol_tokens: Option<SubprotocolTokens>,
    duplicate_upgrade_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default, deserialize_with = "de::name")]
    name: Option<String>,
    server: String,
    #[serde(deserialize_with = "de::alpn")]
    alpn: String,
    #[serde(deserialize_with = "de::listen")]
    listen: SocketAddr,
    #[serde(default)]
    pool: usize,
}

/// Something read from a file the configuration names, with the file's path
/// (for summaries and logs).
#[derive(Debug, Clone, PartialEq)]
pub struct FromFile<T> {
    /// The file, resolved against the configuration file's directory.
    pub path: PathBuf,
    /// What it holds.
    pub value: T,
}

/// A client certificate and its key, as read from `cert` and `key`.
#[derive(Debug, PartialEq)]
pub struct ClientCert {
    /// The `cert` file.
    pub cert: PathBuf,
    /// The `key` file.
    pub key: PathBuf,
    /// The chain and the key, checked to belong together.
    pub value: CertKey,
}

impl Clone for ClientCert {
    fn clone(&self) -> Self {
        ClientCert {
            cert: self.cert.clone(),
            key: self.key.clone(),
            value: CertKey {
                chain: self.value.chain.clone(),
                key: self.value.key.clone_key(),
            },
        }
    }
}

/// How to reach one router: a `[servers.NAME]` table. Two equal values reach
/// the router the same way, certificates included, so a reload compares them
/// to see what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// The table's name.
    pub name: String,
    /// The load balancer or the router's direct port.
    pub url: ServerUrl,
    /// The inner TLS server name; default: the URL's host.
    pub sni: Option<String>,
    /// CAs that verify the router; default: the system's roots.
    pub ca: Option<FromFile<Vec<CertificateDer<'static>>>>,
    /// For routes that require a client certificate.
    pub client_cert: Option<ClientCert>,
    /// CAs that verify the load balancer; default: the system's roots.
    pub outer_ca: Option<FromFile<Vec<CertificateDer<'static>>>>,
    /// Detect, or force a path or a framing.
    pub upgrade: UpgradeMode,
    /// Pings after this long with nothing sent; zero disables them.
    pub ping_interval: Duration,
    /// Deadline of each network step.
    pub timeout: Duration,
    /// The local address to connect from.
    pub bind: Option<IpAddr>,
    /// The HTTP proxy the outer connection goes through: the `proxy` key,
    /// else the proxy variables as the command line reads them (`none` turns
    /// them off).
    pub proxy: Option<Proxy>,
    /// The protocol's tokens and duplicate header (the server's).
    pub names: Names,
    /// How long detection results are kept across runs (zero: not at all).
    pub cache_ttl: Duration,
    /// The inner ClientHello right behind the upgrade request (`--early-hello`).
    pub early_hello: bool,
}

impl Server {
    /// The client options this server's settings make.
    pub fn options(&self) -> Options {
        Options {
            sni: self.sni.clone(),
            ca: self.ca.as_ref().map(|c| c.value.clone()),
            client_cert: self.client_cert.clone().map(|c| c.value),
            outer_ca: self.outer_ca.as_ref().map(|c| c.value.clone()),
            upgrade: self.upgrade,
            names: self.names.clone(),
            ping_interval: self.ping_interval,
            bind: self.bind,
            proxy: self.proxy.clone(),
            cache: Cache::user(self.cache_ttl),
            early_hello: self.early_hello,
            timeouts: Timeouts {
                connect: self.timeout,
                tls: self.timeout,
                upgrade: self.timeout,
            },
        }
    }
}

/// A local listener for one service: a `[[forward]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The name `up NAME` and the logs use; default: the ALPN.
    pub name: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The service's ALPN.
    pub alpn: String,
    /// The server it goes through (a copy, so that a changed server shows as
    /// a changed forward).
    pub server: Server,
    /// Tunnels kept pre-opened, as `forward --pool` (0: none).
    pub pool: usize,
}

impl Forward {
    /// A client for this forward's server and ALPN.
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(self.server.url.clone(), &self.alpn, self.server.options())
    }
}

/// A loaded, valid configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file.
    pub path: PathBuf,
    /// How long the connections of a forward that a reload removes or changes
    /// may go on after its listener closes, before they are cut.
    pub drain: Duration,
    /// The servers, by name.
    pub servers: BTreeMap<String, Server>,
    /// The forwards, in the file's order.
    pub forwards: Vec<Forward>,
}

/// `$XDG_CONFIG_HOME/alpn-tunnel/config.toml`, or `~/.config/alpn-tunnel/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigFileError> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".config"))
        })
        .ok_or(ConfigFileError::NoPath)?;
    Ok(base.join("alpn-tunnel").join("config.toml"))
}

/// Reading the files a configuration names, relative to its directory.
struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigFileError {
        ConfigFileError::Key {
            path: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn certs(
        &self,
        key: String,
        path: Option<PathBuf>,
    ) -> Result<Option<FromFile<Vec<CertificateDer<'static>>>>, ConfigFileError> {
        let Some(path) = path else { return Ok(None) };
        let path = self.dir.join(path);
        let value = read_certs(&path).map_err(|e| self.error(key, e))?;
        Ok(Some(FromFile { path, value }))
    }
}

impl ConfigFile {
    /// Reads, parses and validates `file`, loading every certificate it names.
    pub fn load(file: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigFileError::Read {
            path: file.to_path_buf(),
            error,
        })?;
        ConfigFile::parse(&text, file)
    }

    /// Parses and validates `text` as the contents of `file`: the files it
    /// names are read relative to `file`'s directory, and errors name `file`.
    pub fn parse(text: &str, file: &Path) -> Result<ConfigFile, ConfigFileError> {
        let ctx = Ctx {
            file,
            dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let document = toml::Deserializer::parse(text)
            .map_err(|e| ctx.error(".", e.to_string().trim().to_string()))?;
        let raw: RawFile = serde_path_to_error::deserialize(document)
            .map_err(|e| ctx.error(e.path().to_string(), e.inner().message().trim()))?;
        ConfigFile::validate(raw, &ctx)
    }

    /// What no single value can check: files read from disk, a key that
    /// matches its certificate, names and listen addresses used twice, a
    /// forward's server.
    fn validate(raw: RawFile, ctx: &Ctx<'_>) -> Result<ConfigFile, ConfigFileError> {
        let mut servers = BTreeMap::new();
        for (name, s) in raw.servers {
            let at = |key: &str| format!("servers.{name}.{key}");
            let proxy = proxy::choose(&s.url, s.proxy.as_deref(), None, |n| std::env::var(n).ok())
                .map_err(|e| ctx.error(at("proxy"), e))?
                .map(|p| match s.proxy {
                    // Where it came from, for the log and probe.
                    Some(_) => Proxy {
                        source: at("proxy"),
                        ..p
                    },
                    None => p,
                });
            let names = NamesConfig {
                type_tokens: s.names.type_tokens,
                subprotocol_tokens: s.names.subprotocol_tokens,
                duplicate_upgrade_header: s.names.duplicate_upgrade_header,
                ..Default::default()
            }
            .into_names()
            .map_err(|e| ctx.error(at(&format!("names.{}", e.key)), e.message))?;
            let client_cert = match (s.cert, s.key) {
                (Some(cert), Some(key)) => {
                    let (cert, key) = (ctx.dir.join(cert), ctx.dir.join(key));
                    read_certs(&cert).map_err(|e| ctx.error(at("cert"), e))?;
                    let value = read_cert_key(&cert, &key).map_err(|e| ctx.error(at("key"), e))?;
                    Some(ClientCert { cert, key, value })
                }
                (Some(_), None) => return Err(ctx.error(at("key"), "cert needs key")),
                (None, Some(_)) => return Err(ctx.error(at("cert"), "key needs cert")),
                (None, None) => None,
            };
            let server = Server {
                name: name.clone(),
                url: s.url,
                sni: s.sni,
                ca: ctx.certs(at("ca"), s.ca)?,
                client_cert,
                outer_ca: ctx.certs(at("outer_ca"), s.outer_ca)?,
                upgrade: s.upgrade,
                ping_interval: s.ping_interval,
                timeout: s.timeout,
                bind: s.bind,
                proxy,
                names,
                cache_ttl: raw.cache_ttl,
                early_hello: s.early_hello,
            };
            servers.insert(name, server);
        }
        let mut forwards: Vec<Forward> = Vec::new();
        for (i, f) in raw.forward.into_iter().enumerate() {
            let at = |key: &str| format!("forward[{i}].{key}");
            let server = servers.get(&f.server).ok_or_else(|| {
                let known: Vec<&str> = servers.keys().map(String::as_str).collect();
                ctx.error(
                    at("server"),
                    format!(
                        "no [servers.{}] in this file (it has: {})",
                        f.server,
                        list(&known)
                    ),
                )
            })?;
            let defaulted = f.name.is_none();
            let name = f.name.unwrap_or_else(|| f.alpn.clone());
            if let Some(j) = forwards.iter().position(|o| o.name == name) {
                let why = match defaulted {
                    true => " (a forward without a name is named after its ALPN)",
                    false => "",
                };
                return Err(ctx.error(
                    at("name"),
                    format!("forward[{j}] is already named {name:?}{why}; give each forward a distinct name"),
                ));
            }
            if let Some(j) = forwards.iter().position(|o| clash(o.listen, f.listen)) {
                return Err(ctx.error(
                    at("listen"),
                    format!(
                        "{} clashes with forward[{j}] ({:?}) listening on {}",
                        f.listen, forwards[j].name, forwards[j].listen
                    ),
                ));
            }
            let pool = crate::pool::check_size(f.pool).map_err(|e| ctx.error(at("pool"), e))?;
            forwards.push(Forward {
                name,
                listen: f.listen,
                alpn: f.alpn,
                server: server.clone(),
                pool,
            });
        }
        Ok(ConfigFile {
            path: ctx.file.to_path_buf(),
            drain: raw.drain,
            servers,
            forwards,
        })
    }

    /// The forwards named in `names`, in the file's order; all of them when
    /// `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<Forward>, ConfigFileError> {
        for name in names {
            if !self.forwards.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = self.forwards.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigFileError::UnknownForward {
                    path: self.path.clone(),
                    name: name.clone(),
                    known: list(&known),
                });
            }
        }
        Ok(self
            .forwards
            .iter()
            .filter(|f| names.is_empty() || names.contains(&f.name))
            .cloned()
            .collect())
    }
}

fn list(names: &[&str]) -> String {
    match names.is_empty() {
        true => "none".into(),
        false => names.join(", "),
    }
}

/// Whether two listen addresses cannot both be bound: the same port on the
/// same address or on a wildcard. Port 0 (any free port) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The summary `check-config` prints.
impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} server(s), {} forward(s); a reload drains removed forwards for up to {}",
            self.path.display(),
            self.servers.len(),
            self.forwards.len(),
            humantime::format_duration(self.drain)
        )?;
        for s in self.servers.values() {
            write!(
                f,
                "server {}: {} upgrade {}",
                s.name,
                s.url,
                upgrade_name(s.upgrade)
            )?;
            if let Some(sni) = &s.sni {
                write!(f, ", sni {sni}")?;
            }
            if let Some(ca) = &s.ca {
                write!(f, ", ca {}", ca.path.display())?;
            }
            if let Some(c) = &s.client_cert {
                write!(f, ", client certificate {}", c.cert.display())?;
            }
            if let Some(ca) = &s.outer_ca {
                write!(f, ", outer_ca {}", ca.path.display())?;
            }
            if s.early_hello {
                write!(f, ", early hello")?;
            }
            writeln!(f)?;
        }
        for fw in &self.forwards {
            write!(
                f,
                "forward {}: {} -> {} (ALPN {})",
                fw.name, fw.listen, fw.server.name, fw.alpn
            )?;
            if fw.pool > 0 {
                write!(f, ", {} pre-opened", fw.pool)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn upgrade_name(mode: UpgradeMode) -> &'static str {
    match mode {
        UpgradeMode::Auto => "auto",
        UpgradeMode::Never => "never",
        UpgradeMode::Always => "always",
        UpgradeMode::Framing(f) => f.name(),
    }
}

mod de {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    use crate::{ServerUrl, UpgradeMode};

    pub(super) fn default_drain() -> Duration {
        Duration::from_secs(30)
    }

    /// As `--cache-ttl`.
    pub(super) fn default_cache_ttl() -> Duration {
        Duration::from_secs(3600)
    }

    pub(super) fn default_ping_interval() -> Duration {
        crate::Options::default().ping_interval
    }

    pub(super) fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn default_upgrade() -> UpgradeMode {
        UpgradeMode::Auto
    }

    pub(super) fn url<'de, D: Deserializer<'de>>(d: D) -> Result<ServerUrl, D::Error> {
        ServerUrl::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    pub(super) fn upgrade<'de, D: Deserializer<'de>>(d: D) -> Result<UpgradeMode, D::Error> {
        UpgradeMode::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    pub(super) fn nonzero_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value: Duration = humantime_serde::deserialize(d)?;
        if value.is_zero() {
            return Err(D::Error::custom("must be longer than 0s"));
        }
        Ok(value)
    }

    pub(super) fn sni<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let name = String::deserialize(d)?;
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(D::Error::custom(format!(
                "{name:?} is not a DNS name or IP address"
            )));
        }
        Ok(Some(name))
    }

    pub(super) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(D::Error::custom(format!(
                "{name:?}: a name has letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(Some(name))
    }

    pub(super) fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not IP:PORT (such as 127.0.0.1:5432 or [::1]:5432)"
            ))
        })
    }

    pub(super) fn alpn<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let alpn = String::deserialize(d)?;
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(D::Error::custom("an ALPN protocol id has 1 to 255 bytes"));
        }
        Ok(alpn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<ConfigFile, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).unwrap();
        ConfigFile::load(&path)
    }

    /// The key a file is refused for, and the message.
    fn refused(toml: &str) -> (String, String) {
        match load(toml) {
            Err(ConfigFileError::Key { key, message, .. }) => (key, message),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    const SERVER: &str = "[servers.db]\nurl = \"https://db.example.com\"\n";

    fn forward(server: &str, alpn: &str, listen: &str) -> String {
        format!("[[forward]]\nserver = \"{server}\"\nalpn = \"{alpn}\"\nlisten = \"{listen}\"\n")
    }

    #[test]
    fn a_valid_file_has_its_defaults() {
        let file = load(&format!(
            "{SERVER}{}{}",
            forward("db", "pg", "127.0.0.1:5432"),
            forward("db", "redis", "127.0.0.1:0")
        ))
        .unwrap();
        assert_eq!(file.drain, Duration::from_secs(30));
        let names: Vec<_> = file.forwards.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["pg", "redis"], "a forward is named after its ALPN");
        let db = &file.servers["db"];
        assert_eq!(db.upgrade, UpgradeMode::Auto);
        assert_eq!(db.timeout, Duration::from_secs(10));
        assert_eq!(file.forwards[0].server, *db);
        assert_eq!(file.select(&["redis".into()]).unwrap().len(), 1);
        assert!(matches!(
            file.select(&["nope".into()]),
            Err(ConfigFileError::UnknownForward { .. })
        ));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                format!("{SERVER}colour = 1\n"),
                "servers.db.colour",
                "unknown field",
            ),
            (
                format!("{SERVER}ca = \"missing.pem\"\n"),
                "servers.db.ca",
                "missing.pem",
            ),
            (
                format!("{SERVER}cert = \"c.pem\"\n"),
                "servers.db.key",
                "cert needs key",
            ),
            (
                format!("{SERVER}upgrade = \"sometimes\"\n"),
                "servers.db.upgrade",
                "auto, never",
            ),
            (
                format!("{SERVER}timeout = \"0s\"\n"),
                "servers.db.timeout",
                "longer than 0s",
            ),
            (
                "[servers.db]\nurl = \"ftp://db\"\n".to_string(),
                "servers.db.url",
                "not supported",
            ),
            ("drain = \"soon\"\n".to_string(), "drain", ""),
            (
                format!("{SERVER}{}", forward("web", "pg", "127.0.0.1:1")),
                "forward[0].server",
                "no [servers.web]",
            ),
            (
                format!(
                    "{SERVER}{}{}",
                    forward("db", "pg", "127.0.0.1:1"),
                    forward("db", "x", "localhost:1")
                ),
                "forward[1].listen",
                "not IP:PORT",
            ),
            (
                format!(
                    "{SERVER}{}{}",
                    forward("db", "pg", "127.0.0.1:1"),
                    forward("db", "pg", "127.0.0.1:2")
                ),
                "forward[1].name",
                "named after its ALPN",
            ),
            (
                format!(
                    "{SERVER}{}{}{}{}",
                    forward("db", "a", "127.0.0.1:0"),
                    forward("db", "b", "127.0.0.1:0"),
                    forward("db", "c", "127.0.0.1:7"),
                    forward("db", "d", "0.0.0.0:7")
                ),
                "forward[3].listen",
                "clashes with forward[2]",
            ),
        ];
        for (toml, key, says) in cases {
            let (k, message) = refused(&toml);
            assert_eq!(k, key, "{toml}: {message}");
            assert!(message.contains(says), "{toml}: {message}");
        }
        let (key, _) = refused(
            "[[forward]]\nserver = \"db\"\nalpn = \"pg\"\nlisten = \"127.0.0.1:1\"\nport = 2\n",
        );
        assert_eq!(key, "forward[0].port");
    }

    /// `early_hello` is `--early-hello` in the file: off by default, in the
    /// client's options and the summary when on; only a boolean.
    #[test]
    fn a_servers_early_hello_reaches_its_clients_and_the_summary() {
        let fwd = forward("db", "pg", "127.0.0.1:0");
        let file = load(&format!(
            "{SERVER}early_hello = true
{fwd}"
        ))
        .unwrap();
        assert!(file.forwards[0].server.options().early_hello);
        assert!(
            file.to_string()
                .contains("server db: https://db.example.com:443/connectionupgrade upgrade auto, early hello\n"),
            "{file}"
        );
        let file = load(&format!("{SERVER}{fwd}")).unwrap();
        assert!(
            !file.forwards[0].server.options().early_hello,
            "off unless asked"
        );
        assert!(!file.to_string().contains("early hello"), "{file}");
        let (key, _) = refused(&format!("{SERVER}early_hello = \"yes\"\n{fwd}"));
        assert_eq!(key, "servers.db.early_hello");
    }

    /// `pool` is `--pool` in the file: 0 by default, at most 100, shown in
    /// the summary.
    #[test]
    fn a_forward_pool_is_bounded_and_summarised() {
        let fwd = forward("db", "pg", "127.0.0.1:0");
        let file = load(&format!(
            "{SERVER}{fwd}pool = 3\n{}",
            forward("db", "r", "127.0.0.1:0")
        ))
        .unwrap();
        assert_eq!(file.forwards[0].pool, 3);
        assert_eq!(file.forwards[1].pool, 0, "no pool unless asked");
        let summary = file.to_string();
        assert!(
            summary.contains("forward pg: 127.0.0.1:0 -> db (ALPN pg), 3 pre-opened\n"),
            "{summary}"
        );
        assert!(
            summary.contains("forward r: 127.0.0.1:0 -> db (ALPN r)\n"),
            "{summary}"
        );
        let (key, message) = refused(&format!("{SERVER}{fwd}pool = 101\n"));
        assert_eq!(key, "forward[0].pool");
        assert!(message.contains("more than 100"), "{message}");
        let (key, _) = refused(&format!("{SERVER}{fwd}pool = -1\n"));
        assert_eq!(key, "forward[0].pool");
    }

    /// A proxy that is not an HTTP one is refused naming the key; an HTTP one
    /// reaches the client's options.
    #[test]
    fn a_proxy_is_checked_and_passed_on() {
        let (key, message) = refused(&format!("{SERVER}proxy = \"socks5://p:1080\"\n"));
        assert_eq!(key, "servers.db.proxy");
        assert!(message.contains("http://"), "{message}");
        let fwd = forward("db", "pg", "127.0.0.1:0");
        let config = load(&format!(
            "{SERVER}proxy = \"http://proxy.example.com:3128\"\n{fwd}"
        ))
        .unwrap();
        let proxy = config.servers["db"].proxy.clone().expect("a proxy");
        assert_eq!(proxy.url.to_string(), "http://proxy.example.com:3128");
        assert_eq!(proxy.source, "servers.db.proxy");
        let config = load(&format!("{SERVER}proxy = \"none\"\n{fwd}")).unwrap();
        assert!(config.servers["db"].proxy.is_none());
    }

    #[test]
    fn renamed_protocol_names_reach_the_options_and_mistakes_name_the_key() {
        let fwd = forward("db", "pg", "127.0.0.1:0");
        let config = load(&format!(
            "{SERVER}names = {{ type_tokens = {{ alpn = \"tcp\" }}, duplicate_upgrade_header = \"x-t\" }}\n{fwd}"
        ))
        .unwrap();
        let names = &config.servers["db"].options().names;
        assert_eq!(
            names.type_token(alpn_protocol::names::UpgradeType::Alpn),
            "tcp"
        );
        assert_eq!(names.duplicate_upgrade_header, "x-t");
        let (key, _) = refused(&format!(
            "{SERVER}names = {{ type_tokens = {{ websocket = \"alpn\" }} }}\n"
        ));
        assert_eq!(key, "servers.db.names.type_tokens.websocket");
        let (key, _) = refused(&format!("{SERVER}names = {{ upgrade_paths = [\"/x\"] }}\n"));
        assert_eq!(key, "servers.db.names.upgrade_paths");
    }
}
