//! The server a client connects to: `https://HOST[:PORT][/PATH]` (TLS to a load
//! balancer or to the router's direct port) or `http://HOST:PORT[/PATH]` (plain
//! HTTP to Envoy, for tests and private networks). The path is the upgrade path.
//! Small enough to parse here rather than pull in a URL crate.

use std::fmt;

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
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: the server must be https://HOST[:PORT] (or http://HOST:PORT)"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            "/connectionupgrade"
        } else {
            path
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse()
                .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
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

    #[test]
    fn forms_of_urls() {
        let u = ServerUrl::parse("https://lb.example.com").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "lb.example.com", 443, "/connectionupgrade")
        );
        let u = ServerUrl::parse("http://127.0.0.1:8080/tunnel").unwrap();
        assert_eq!(
            (u.tls, u.port, u.path.as_str(), u.authority()),
            (false, 8080, "/tunnel", "127.0.0.1:8080".to_string())
        );
        let u = ServerUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::1", "[::1]:8443".to_string())
        );
        for bad in [
            "lb.example.com",
            "ftp://x",
            "https://",
            "https://h:port",
            "https://[::1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
