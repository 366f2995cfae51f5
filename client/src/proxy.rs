//! HTTP proxies for the outer connection: which proxy applies to a server
//! (`--proxy`, the proxy environment variables and `no_proxy`, with curl's
//! conventions), and the `CONNECT` exchange that turns a TCP connection to the
//! proxy into one to the server. Everything after it (outer TLS, the upgrade,
//! the inner TLS, or detection's test handshake) runs inside that tunnel.
//!
//! The choice is a pure function of the server, the flags and an environment
//! lookup, so that it is tested without touching the process's environment.

use std::fmt;
use std::io;
use std::net::IpAddr;

use base64::Engine as _;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server_url::ServerUrl;

/// A proxy's port when its URL names none: 1080, as in curl.
pub const DEFAULT_PORT: u16 = 1080;

/// The most a proxy's answer to `CONNECT` (status line and headers) may take.
const MAX_HEAD: usize = 16 * 1024;

/// The value of `--proxy` that turns proxies off, whatever the environment says.
pub const NONE: &str = "none";

/// Basic authentication for a proxy. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password; kept out of logs and errors.
    password: String,
}

impl Credentials {
    /// `user` and `password`.
    pub fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// Parses `USER:PASSWORD` (as `--proxy-auth` takes it; the password may
    /// contain `:`).
    pub fn parse(s: &str) -> Result<Credentials, String> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials::new(user, password)),
            _ => Err("the proxy credentials must be USER:PASSWORD".into()),
        }
    }

    /// The `Proxy-Authorization` header's value.
    fn header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, password hidden)", self.user)
    }
}

/// An HTTP proxy: `http://[USER[:PASSWORD]@]HOST[:PORT][/]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port ([`DEFAULT_PORT`] when the URL names none).
    pub port: u16,
    /// Basic authentication, from the URL's user info or `--proxy-auth`.
    pub auth: Option<Credentials>,
}

impl ProxyUrl {
    /// Parses a proxy URL. No scheme means `http://`, as in curl; user info is
    /// percent-decoded. `https://` (TLS to the proxy) and SOCKS are refused.
    pub fn parse(url: &str) -> Result<ProxyUrl, String> {
        let form = "a proxy is http://[USER:PASSWORD@]HOST[:PORT]";
        let rest = match url.split_once("://") {
            None => url,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported (only HTTP proxies, with CONNECT); {form}"
                ))
            }
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..] != *"/" => {
                return Err(format!(
                    "a proxy URL has no path, query or fragment; {form}"
                ))
            }
            Some(i) => &rest[..i],
            None => rest,
        };
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let auth = Credentials::new(&percent_decode(user)?, &percent_decode(password)?);
                (Some(auth), hostport)
            }
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| format!("no host; {form}"))?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port; {form}"))?,
        };
        Ok(ProxyUrl {
            host: host.to_string(),
            port,
            auth,
        })
    }

    /// `HOST:PORT` to connect to (IPv6 in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// Without the credentials: safe for logs and errors.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// The proxy a client goes through, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy.
    pub url: ProxyUrl,
    /// What set it: `--proxy` or the environment variable's name (for the
    /// probe and the log, so that a surprising proxy can be traced).
    pub source: String,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.url, self.source)
    }
}

/// Chooses the proxy for `server`, curl's way:
/// - `flag` (`--proxy`): a URL overrides the environment; `none` or an empty
///   value turns proxies off;
/// - otherwise, for an `https://` server `https_proxy`, then `HTTPS_PROXY`;
///   for an `http://` server only `http_proxy` (the upper-case form is ignored,
///   as curl does, since CGI programs get it from a request header); then
///   `all_proxy`, then `ALL_PROXY`. An empty variable counts as unset;
/// - `no_proxy`, else `NO_PROXY`, then exempts the server whatever set the proxy
///   (see [`no_proxy_matches`]);
/// - `auth` (`--proxy-auth`) replaces the URL's user info.
pub fn choose(
    server: &ServerUrl,
    flag: Option<&str>,
    auth: Option<Credentials>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, String> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let (url, source) = match flag {
        Some(f) if f.is_empty() || f.eq_ignore_ascii_case(NONE) => return Ok(None),
        Some(f) => (f.to_string(), "--proxy".to_string()),
        None => {
            let names: &[&str] = match server.tls {
                true => &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"],
                false => &["http_proxy", "all_proxy", "ALL_PROXY"],
            };
            let Some((name, url)) = names
                .iter()
                .find_map(|name| env(name).map(|url| (*name, url)))
            else {
                return Ok(None);
            };
            (url, name.to_string())
        }
    };
    if let Some(list) = env("no_proxy").or_else(|| env("NO_PROXY")) {
        if no_proxy_matches(&list, &server.host, server.port) {
            return Ok(None);
        }
    }
    let mut url = ProxyUrl::parse(&url).map_err(|e| format!("{source}: {e}"))?;
    if auth.is_some() {
        url.auth = auth;
    }
    Ok(Some(Proxy { url, source }))
}

/// Whether `host:port` is exempt by the `no_proxy` list `list`: entries are
/// separated by commas (and spaces); `*` alone exempts every host; a name
/// exempts itself and its subdomains, with or without a leading dot (curl's
/// rule: `example.com` and `.example.com` both match `example.com` and
/// `db.example.com`, never `badexample.com`); an address or a CIDR block
/// exempts the addresses in it (a name is not resolved for this); `ENTRY:PORT`
/// (`[V6]:PORT` for IPv6) exempts only that port.
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            // A bare address or block first: `::1` and `fd00::/8` contain colons.
            let (pattern, entry_port) =
                if entry.parse::<IpAddr>().is_ok() || entry.parse::<IpNet>().is_ok() {
                    (entry, None)
                } else {
                    match split_host_port(entry) {
                        Some((h, Some(p))) => match p.parse::<u16>() {
                            Ok(p) => (h, Some(p)),
                            Err(_) => return false,
                        },
                        Some((h, None)) => (h, None),
                        None => return false,
                    }
                };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            if let Ok(ip) = pattern.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            if let Ok(net) = pattern.parse::<IpNet>() {
                return host_ip.is_some_and(|ip| net.contains(&ip));
            }
            if host_ip.is_some() {
                return false;
            }
            let name = pattern
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            !name.is_empty()
                && (host == name
                    || host
                        .strip_suffix(&name)
                        .is_some_and(|prefix| prefix.ends_with('.')))
        })
}

/// Why the way through the proxy failed. Each message names the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// TCP to the proxy failed.
    #[error("cannot connect to the proxy {proxy}: {error} (check the proxy setting, or bypass it with --proxy none or no_proxy)")]
    Connect {
        /// The proxy (from where).
        proxy: Proxy,
        /// Why.
        error: io::Error,
    },
    /// The proxy answered `CONNECT` with something other than 2xx.
    #[error("the proxy {proxy} refused CONNECT to {target}: {status} {reason}{}", refusal_hint(*.status, .proxy))]
    Refused {
        /// The proxy (from where).
        proxy: Proxy,
        /// The server asked for.
        target: String,
        /// The proxy's status code.
        status: u16,
        /// The proxy's reason phrase.
        reason: String,
    },
    /// The proxy's answer was not HTTP, or too long.
    #[error("the proxy {proxy} answered CONNECT to {target} with something that is not an HTTP answer: {why}")]
    Malformed {
        /// The proxy (from where).
        proxy: Proxy,
        /// The server asked for.
        target: String,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing the exchange failed, or the proxy closed first.
    #[error("the proxy {proxy} failed during CONNECT to {target}: {error}")]
    Io {
        /// The proxy (from where).
        proxy: Proxy,
        /// The server asked for.
        target: String,
        /// Why.
        error: io::Error,
    },
}

fn refusal_hint(status: u16, proxy: &Proxy) -> &'static str {
    match (status, &proxy.url.auth) {
        (407 | 401, None) => {
            " (the proxy requires authentication: give http://USER:PASSWORD@HOST:PORT or --proxy-auth USER:PASSWORD)"
        }
        (407 | 401, Some(_)) => " (the proxy did not accept the credentials)",
        (403, _) => " (the proxy does not allow this destination or port: ask its operator, or bypass it with no_proxy)",
        (502..=504, _) => " (the proxy could not reach the server)",
        _ => "",
    }
}

/// The `CONNECT` request for `target` (`HOST:PORT`).
fn request(target: &str, auth: Option<&Credentials>) -> String {
    let mut r = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: alpn-tunnel/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(auth) = auth {
        r.push_str(&format!("Proxy-Authorization: {}\r\n", auth.header()));
    }
    r.push_str("\r\n");
    r
}

/// The status and reason of a complete answer head, `None` while incomplete.
fn parse_answer(head: &[u8]) -> Result<Option<(u16, String)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut headers);
    match answer.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok(Some((
            answer.code.unwrap_or_default(),
            answer.reason.unwrap_or_default().to_string(),
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the proxy on `tcp` for a tunnel to `target` (`HOST:PORT`) and reads its
/// answer; returns the status line (for the probe). Reads no byte past the
/// answer's head, which belong to the server. The caller sets the deadline.
pub(crate) async fn connect(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    target: &str,
) -> Result<String, ProxyError> {
    let io_failed = |error| ProxyError::Io {
        proxy: proxy.clone(),
        target: target.to_string(),
        error,
    };
    tcp.write_all(request(target, proxy.url.auth.as_ref()).as_bytes())
        .await
        .map_err(io_failed)?;
    let mut head = Vec::with_capacity(256);
    loop {
        // Read at most what is left of a "\r\n\r\n" that the head may end in.
        let want = if head.ends_with(b"\r\n\r") {
            1
        } else if head.ends_with(b"\r\n") {
            2
        } else if head.ends_with(b"\r") {
            3
        } else {
            4
        };
        let mut buf = [0u8; 4];
        let n = tcp.read(&mut buf[..want]).await.map_err(io_failed)?;
        if n == 0 {
            return Err(io_failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before answering",
            )));
        }
        head.extend_from_slice(&buf[..n]);
        let malformed = |why: String| ProxyError::Malformed {
            proxy: proxy.clone(),
            target: target.to_string(),
            why,
        };
        match parse_answer(&head).map_err(malformed)? {
            Some((status, reason)) if (200..300).contains(&status) => {
                return Ok(format!("{status} {reason}"))
            }
            Some((status, reason)) => {
                return Err(ProxyError::Refused {
                    proxy: proxy.clone(),
                    target: target.to_string(),
                    status,
                    reason,
                })
            }
            None if head.len() >= MAX_HEAD => {
                return Err(malformed(format!("no end of the head in {MAX_HEAD} bytes")))
            }
            None => {}
        }
    }
}

/// `HOST:PORT`, with IPv6 in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `HOST[:PORT]` or `[V6][:PORT]` into the host (without brackets) and the
/// port's text; `None` for an empty host or an unclosed bracket.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            match after {
                "" => (h, None),
                _ => (h, Some(after.strip_prefix(':')?)),
            }
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    (!host.is_empty()).then_some((host, port))
}

/// Decodes `%XX` escapes (user info in a URL).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                // Not shown: the user info holds the password.
                .ok_or("bad %-escape in the proxy's user info")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the proxy's user info is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn server(url: &str) -> ServerUrl {
        ServerUrl::parse(url).unwrap()
    }

    /// The proxy chosen for `url` with `vars` as the whole environment.
    fn chosen(url: &str, flag: Option<&str>, vars: &[(&str, &str)]) -> Option<String> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        choose(&server(url), flag, None, |k| env.get(k).cloned())
            .unwrap()
            .map(|p| p.to_string())
    }

    #[test]
    fn lower_case_before_upper_case_then_all_proxy() {
        let all = [
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
            ("all_proxy", "http://all:3"),
            ("ALL_PROXY", "http://ALL:4"),
        ];
        let h = "https://db.example.com";
        assert_eq!(
            chosen(h, None, &all).as_deref(),
            Some("http://lower:1 (from https_proxy)")
        );
        assert_eq!(
            chosen(h, None, &all[1..]).as_deref(),
            Some("http://upper:2 (from HTTPS_PROXY)")
        );
        assert_eq!(
            chosen(h, None, &all[2..]).as_deref(),
            Some("http://all:3 (from all_proxy)")
        );
        assert_eq!(
            chosen(h, None, &all[3..]).as_deref(),
            Some("http://ALL:4 (from ALL_PROXY)")
        );
        assert_eq!(chosen(h, None, &[]), None);
        // An empty variable counts as unset.
        assert_eq!(
            chosen(
                h,
                None,
                &[("https_proxy", ""), ("HTTPS_PROXY", "http://u:2")]
            )
            .as_deref(),
            Some("http://u:2 (from HTTPS_PROXY)")
        );
    }

    #[test]
    fn an_http_server_takes_only_lower_case_http_proxy() {
        let h = "http://web.example.com:8080";
        assert_eq!(
            chosen(h, None, &[("HTTP_PROXY", "http://upper:2")]),
            None,
            "HTTP_PROXY is ignored, as curl does"
        );
        assert_eq!(
            chosen(
                h,
                None,
                &[("http_proxy", "http://p:1"), ("https_proxy", "http://s:2")]
            )
            .as_deref(),
            Some("http://p:1 (from http_proxy)")
        );
        assert_eq!(
            chosen(h, None, &[("ALL_PROXY", "http://a:3")]).as_deref(),
            Some("http://a:3 (from ALL_PROXY)")
        );
        // And https_proxy is not for http:// servers.
        assert_eq!(chosen(h, None, &[("https_proxy", "http://s:2")]), None);
    }

    #[test]
    fn the_flag_overrides_the_environment_and_none_turns_proxies_off() {
        let env = [("https_proxy", "http://env:1")];
        let h = "https://db.example.com";
        assert_eq!(
            chosen(h, Some("http://flag:2"), &env).as_deref(),
            Some("http://flag:2 (from --proxy)")
        );
        assert_eq!(chosen(h, Some("none"), &env), None);
        assert_eq!(chosen(h, Some(""), &env), None);
        // no_proxy applies to --proxy too, as in curl.
        assert_eq!(
            chosen(h, Some("http://flag:2"), &[("no_proxy", "example.com")]),
            None
        );
    }

    #[test]
    fn lower_case_no_proxy_wins_over_upper_case() {
        let h = "https://db.example.com";
        let env = [
            ("https_proxy", "http://p:1"),
            ("no_proxy", "other.com"),
            ("NO_PROXY", "example.com"),
        ];
        assert!(chosen(h, None, &env).is_some());
        assert_eq!(
            chosen(
                h,
                None,
                &env[..1]
                    .iter()
                    .chain(&env[2..])
                    .copied()
                    .collect::<Vec<_>>()
            ),
            None
        );
    }

    #[test]
    fn proxy_auth_replaces_the_urls_user_info() {
        let p = choose(
            &server("https://db.example.com"),
            Some("http://a:b@proxy:3128"),
            Some(Credentials::new("c", "d")),
            |_| None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.url.auth, Some(Credentials::new("c", "d")));
    }

    #[test]
    fn a_bad_proxy_url_names_its_source() {
        let e = choose(&server("https://db.example.com"), None, None, |k| {
            (k == "HTTPS_PROXY").then(|| "socks5://p:1080".to_string())
        })
        .unwrap_err();
        assert!(e.starts_with("HTTPS_PROXY: proxy scheme \"socks5\""), "{e}");
    }

    #[test]
    fn no_proxy_names_match_themselves_and_subdomains() {
        for entry in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.com.",
        ] {
            assert!(no_proxy_matches(entry, "example.com", 443), "{entry}");
            assert!(no_proxy_matches(entry, "db.example.com", 443), "{entry}");
            assert!(no_proxy_matches(entry, "DB.Example.COM.", 443), "{entry}");
            assert!(!no_proxy_matches(entry, "badexample.com", 443), "{entry}");
            assert!(!no_proxy_matches(entry, "example.com.evil", 443), "{entry}");
        }
        assert!(no_proxy_matches("localhost", "localhost", 1));
        assert!(!no_proxy_matches("db.example.com", "example.com", 443));
        assert!(no_proxy_matches("a.test, b.test ,c.test", "b.test", 443));
        assert!(no_proxy_matches("a.test c.test", "c.test", 443));
        assert!(!no_proxy_matches("", "example.com", 443));
        assert!(!no_proxy_matches(",,", "example.com", 443));
    }

    #[test]
    fn a_star_alone_matches_everything() {
        assert!(no_proxy_matches("*", "anything.test", 443));
        assert!(no_proxy_matches("a.test,*", "10.0.0.1", 443));
        assert!(!no_proxy_matches("*x", "anything.test", 443));
    }

    #[test]
    fn no_proxy_addresses_and_cidr_blocks() {
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1", 443));
        assert!(!no_proxy_matches("127.0.0.1", "127.0.0.2", 443));
        assert!(no_proxy_matches("10.0.0.0/8", "10.1.2.3", 443));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.1.2.3", 443));
        assert!(no_proxy_matches("::1", "::1", 443));
        assert!(no_proxy_matches("fd00::/8", "fd12::5", 443));
        assert!(!no_proxy_matches("fd00::/8", "fe80::1", 443));
        // Names are not resolved, and addresses are not suffixes.
        assert!(!no_proxy_matches("127.0.0.0/8", "localhost", 443));
        assert!(!no_proxy_matches("0.0.1", "10.0.0.1", 443));
    }

    #[test]
    fn no_proxy_ports_exempt_only_that_port() {
        assert!(no_proxy_matches("example.com:8443", "db.example.com", 8443));
        assert!(!no_proxy_matches("example.com:8443", "db.example.com", 443));
        assert!(no_proxy_matches("127.0.0.1:9000", "127.0.0.1", 9000));
        assert!(!no_proxy_matches("127.0.0.1:9000", "127.0.0.1", 9001));
        assert!(no_proxy_matches("[::1]:9000", "::1", 9000));
        assert!(!no_proxy_matches("[::1]:9000", "::1", 9001));
        assert!(!no_proxy_matches("example.com:nope", "example.com", 443));
    }

    #[test]
    fn proxy_urls() {
        let p = ProxyUrl::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.auth),
            ("proxy.corp", 3128, None)
        );
        let p = ProxyUrl::parse("proxy.corp").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", DEFAULT_PORT));
        let p = ProxyUrl::parse("HTTP://[::1]:8080/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        assert_eq!(p.to_string(), "http://[::1]:8080");
        let p = ProxyUrl::parse("http://al%40ice:p%3Ass@proxy:3128").unwrap();
        assert_eq!(p.auth, Some(Credentials::new("al@ice", "p:ss")));
        assert_eq!(p.to_string(), "http://proxy:3128", "no credentials shown");
        assert!(!format!("{p:?}").contains("p:ss"), "{p:?}");
        for (bad, why) in [
            ("https://proxy:443", "\"https\" is not supported"),
            ("socks5://proxy:1080", "\"socks5\" is not supported"),
            ("http://proxy:99999", "is not a port"),
            ("http://proxy:0", "is not a port"),
            ("http://:3128", "no host"),
            ("http://proxy:3128/path", "no path"),
            ("http://a:%zz@proxy", "bad %-escape"),
        ] {
            let e = ProxyUrl::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_from_the_flag() {
        assert_eq!(
            Credentials::parse("alice:pa:ss").unwrap(),
            Credentials::new("alice", "pa:ss")
        );
        assert!(Credentials::parse("alice").is_err());
        assert!(Credentials::parse(":x").is_err());
    }

    #[test]
    fn the_connect_request() {
        let r = request("[::1]:443", Some(&Credentials::new("alice", "s3cret")));
        assert!(
            r.starts_with("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"),
            "{r}"
        );
        // base64("alice:s3cret")
        assert!(
            r.contains("\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"));
        assert!(!request("h:1", None).contains("Proxy-Authorization"));
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(),
            Some((200, "Connection established".into()))
        );
        assert_eq!(parse_answer(b"HTTP/1.0 407 Proxy Auth").unwrap(), None);
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    async fn answered_with(answer: &'static [u8]) -> (Result<String, ProxyError>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(answer).await.unwrap();
            // Whatever follows belongs to the tunnel.
            s.write_all(b"after").await.unwrap();
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let proxy = Proxy {
            url: ProxyUrl::parse(&format!("http://{addr}")).unwrap(),
            source: "--proxy".into(),
        };
        let result = connect(&mut tcp, &proxy, "db.example.com:443").await;
        server.await.unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        (result, rest)
    }

    #[tokio::test]
    async fn a_2xx_answer_leaves_the_rest_of_the_stream_alone() {
        let (result, rest) =
            answered_with(b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n").await;
        assert_eq!(result.unwrap(), "200 Connection established");
        assert_eq!(rest, b"after");
    }

    #[tokio::test]
    async fn a_refusal_is_the_proxys_with_its_status_and_reason() {
        let (result, _) =
            answered_with(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").await;
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with("the proxy http://127.0.0.1:") && e.contains(
                " (from --proxy) refused CONNECT to db.example.com:443: 407 Proxy Authentication Required (the proxy requires authentication"
            ),
            "{e}"
        );
    }
}
