//! The filter's decision: the protocol's validation of the request
//! ([`alpn_protocol::validate`]) with the filter's policy around it (the source
//! allow-list before it, the rate limit after it). A plain function with no
//! host calls, so it is tested on the host and under wasm32 alike; the
//! proxy-wasm glue only gathers facts and acts on the verdict.

use std::net::IpAddr;

use alpn_protocol::request::Request;
use alpn_protocol::validate::{refuse, refuse_with, validate};

use crate::config::Config;
use crate::rate_limit::{self, Admission, BucketStore};

pub use alpn_protocol::validate::{Approval, Refusal, RefusalKind, Verdict};

/// Decides what to do with `req`. `client` is the derived client address;
/// `store` and `now_ms` serve the rate limit when one is configured.
pub fn decide(
    req: &Request<'_>,
    config: &Config,
    client: Option<IpAddr>,
    store: &mut dyn BucketStore,
    now_ms: u64,
) -> Verdict {
    if config.names.is_upgrade_path(req.path_only()) {
        if let Some(nets) = &config.allowed_sources {
            if !client.is_some_and(|c| nets.iter().any(|n| n.contains(&c))) {
                let who =
                    client.map_or_else(|| "an unknown address".to_string(), |c| c.to_string());
                return refuse(
                    RefusalKind::SourceNotAllowed,
                    format!("tunnels from {who} are not allowed"),
                );
            }
        }
    }
    let approval = match validate(req, &config.names) {
        Verdict::Approve(a) => a,
        other => return other,
    };
    if let Some(limit) = &config.rate_limit {
        let key = client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if let Admission::Limited { retry_after_s } = rate_limit::admit(limit, store, key, now_ms) {
            return refuse_with(
                RefusalKind::RateLimited,
                format!(
                    "too many upgrades from {key}: at most {} per {} s, retry in {retry_after_s} s",
                    limit.upgrades, limit.per_seconds
                ),
                "retry-after",
                retry_after_s.to_string(),
            );
        }
    }
    Verdict::Approve(approval)
}
