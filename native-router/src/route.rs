//! Choosing the route from a ClientHello (PROTOCOL.md section 5): the first
//! protocol in the client's ALPN list that has a route wins; for that protocol
//! a route naming the client's SNI beats one that names none.

use crate::config::Route;

/// The route for a ClientHello's `sni` and ALPN list, in the client's order of
/// preference; `None` when no offered protocol has a route (the handshake then
/// fails with `no_application_protocol`).
pub(crate) fn choose<'r>(
    routes: &'r [Route],
    sni: Option<&str>,
    alpns: &[&[u8]],
) -> Option<&'r Route> {
    alpns.iter().find_map(|offered| {
        let for_alpn = routes.iter().filter(|r| r.alpn.as_bytes() == *offered);
        let mut generic = None;
        for r in for_alpn {
            match (&r.sni, sni) {
                (Some(want), Some(got)) if want.eq_ignore_ascii_case(got) => return Some(r),
                (None, _) if generic.is_none() => generic = Some(r),
                _ => {}
            }
        }
        generic
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(alpn: &str, sni: Option<&str>, backend: &str) -> Route {
        Route {
            alpn: alpn.into(),
            sni: sni.map(str::to_string),
            backend: backend.into(),
            client_ca: None,
            proxy_protocol: false,
            idle_timeout: None,
            backend_tls: None,
            early_data: false,
        }
    }

    fn pick<'r>(routes: &'r [Route], sni: Option<&str>, alpns: &[&str]) -> Option<&'r str> {
        let alpns: Vec<&[u8]> = alpns.iter().map(|a| a.as_bytes()).collect();
        choose(routes, sni, &alpns).map(|r| r.backend.as_str())
    }

    #[test]
    fn the_clients_first_routed_protocol_wins() {
        let routes = [
            route("redis", None, "r:1"),
            route("postgresql", None, "p:1"),
        ];
        assert_eq!(pick(&routes, None, &["postgresql", "redis"]), Some("p:1"));
        assert_eq!(
            pick(&routes, None, &["h2", "redis", "postgresql"]),
            Some("r:1")
        );
    }

    #[test]
    fn no_routed_protocol_means_no_route() {
        let routes = [route("redis", None, "r:1")];
        assert_eq!(pick(&routes, None, &["h2", "http/1.1"]), None);
        assert_eq!(pick(&routes, Some("redis"), &[]), None);
    }

    #[test]
    fn a_route_for_the_sni_beats_a_generic_one() {
        let routes = [
            route("postgresql", None, "any:1"),
            route("postgresql", Some("db2.example.com"), "db2:1"),
        ];
        assert_eq!(
            pick(&routes, Some("DB2.example.com"), &["postgresql"]),
            Some("db2:1")
        );
        assert_eq!(
            pick(&routes, Some("db1.example.com"), &["postgresql"]),
            Some("any:1")
        );
        assert_eq!(pick(&routes, None, &["postgresql"]), Some("any:1"));
    }

    #[test]
    fn an_sni_only_route_does_not_serve_other_names() {
        let routes = [route("ssh", Some("bastion.example.com"), "b:22")];
        assert_eq!(pick(&routes, Some("other.example.com"), &["ssh"]), None);
        assert_eq!(pick(&routes, None, &["ssh"]), None);
    }
}
