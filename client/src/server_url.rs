//! The server a client connects to: `https://HOST[:PORT][/PATH]` (TLS to a load
//! balancer or to the router's direct port) or `http://HOST:PORT[/PATH]` (plain
//! HTTP to Envoy, for tests and private networks). The path is the upgrade path.
//! Parsed with `http::Uri`; what a tunnel cannot use (user info, a query, a
//! fragment, another scheme) is refused rather than taken for part of the host.

use std::fmt;
use std::net::Ipv6Addr;

use http::Uri;

/// The upgrade path when the URL names none (PROTOCOL.md's default).
const DEFAULT_PATH: &str = "/connectionupgrade";

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Whether the connection starts with TLS (`https`).
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (443 / 80 by default).
    pub port: u16,
    /// The upgrade path.
    pub path: String,
}

impl ServerUrl {
    /// Parses `https://HOST[:PORT][/PATH]` or `http://...`.
    pub fn parse(url: &str) -> Result<ServerUrl, String> {
        let form = "the server must be https://HOST[:PORT][/PATH] (or http://HOST:PORT[/PATH])";
        // `http::Uri` drops a fragment silently: refuse it before parsing.
        if url.contains('#') {
            return Err(format!(
                "{url:?}: a fragment (#...) has no meaning here; {form}"
            ));
        }
        let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}; {form}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(format!(
                    "{url:?}: scheme {other:?} is not supported; {form}"
                ))
            }
            None => return Err(format!("{url:?}: no scheme; {form}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?}: no host; {form}"))?
            .as_str();
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: user info (USER@) is not supported: the client authenticates with --cert and --key"
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "{url:?}: a query (?...) has no meaning here; {form}"
            ));
        }
        let (host, after) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
                h.parse::<Ipv6Addr>()
                    .map_err(|_| format!("{url:?}: {h:?} is not an IPv6 address"))?;
                (h, after)
            }
            None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host; {form}"));
        }
        let port = match after {
            "" => {
                if tls {
                    443
                } else {
                    80
                }
            }
            _ => {
                let p = after.strip_prefix(':').unwrap_or(after);
                p.parse()
                    .map_err(|_| format!("{url:?}: {p:?} is not a port"))?
            }
        };
        let path = match uri.path() {
            "" | "/" => DEFAULT_PATH,
            p => p,
        };
        Ok(ServerUrl {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `host:port` for connecting and for the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (bool, String, u16, String) {
        let u = ServerUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (u.tls, u.host, u.port, u.path)
    }

    #[test]
    fn accepted_forms() {
        let t = |tls, host: &str, port, path: &str| (tls, host.to_string(), port, path.to_string());
        assert_eq!(
            parts("https://lb.example.com"),
            t(true, "lb.example.com", 443, "/connectionupgrade")
        );
        assert_eq!(
            parts("http://lb.example.com/"),
            t(false, "lb.example.com", 80, "/connectionupgrade")
        );
        assert_eq!(
            parts("http://127.0.0.1:8080/tunnel"),
            t(false, "127.0.0.1", 8080, "/tunnel")
        );
        assert_eq!(
            parts("https://[::1]:8443/"),
            t(true, "::1", 8443, "/connectionupgrade")
        );
        assert_eq!(
            parts("https://[2001:db8::7]/up/grade"),
            t(true, "2001:db8::7", 443, "/up/grade")
        );
        let u = ServerUrl::parse("https://[::1]:8443/x").unwrap();
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(u.to_string(), "https://[::1]:8443/x");
        let u = ServerUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/connectionupgrade");
    }

    #[test]
    fn refusals_say_why() {
        for (bad, why) in [
            ("lb.example.com", "no scheme"),
            ("ftp://x", "\"ftp\" is not supported"),
            ("wss://x", "\"wss\" is not supported"),
            ("https://user@host", "user info"),
            ("https://user:pw@host:443/p", "user info"),
            ("https://host/?junk=1", "a query"),
            ("https://host?junk", "a query"),
            ("https://host/p#frag", "a fragment"),
            ("https://h:port", "\"port\" is not a port"),
            ("https://h:70000", "\"70000\" is not a port"),
            ("https://h:", "\"\" is not a port"),
            ("https://[::1", "https://[::1"),
            ("https://[zz::1]", "not an IPv6 address"),
            ("https://", "https://"),
        ] {
            let e = ServerUrl::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
