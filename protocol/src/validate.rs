//! Validation of an upgrade request (PROTOCOL.md sections 2 and 3): from the
//! facts of a request to a verdict, pass (not ours), approve (with the type and
//! subprotocol chosen) or refuse (status, reason, headers). The refusal kinds
//! include the policy refusals (403, 429) that deployments add on top, so the
//! table of statuses lives in one place.

use crate::framing::Framing;
use crate::names::{Names, Subprotocol, UpgradeType};
use crate::request::Request;
use crate::websocket::valid_key;

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not an upgrade and not on the upgrade path: pass it on untouched.
    Pass,
    /// A well-formed upgrade: forward it to the router.
    Approve(Approval),
    /// Answer locally with this refusal.
    Refuse(Refusal),
}

/// An approved upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The upgrade type.
    pub upgrade_type: UpgradeType,
    /// For WebSocket, the subprotocol the router will choose.
    pub subprotocol: Option<Subprotocol>,
    /// The type came from the duplicate header because `Upgrade` was scrubbed.
    pub from_duplicate_header: bool,
}

impl Approval {
    /// How the upgraded stream is framed.
    pub fn framing(&self) -> Framing {
        Framing::of(self.upgrade_type, self.subprotocol)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Upgrade path, method not GET.
    MethodNotAllowed,
    /// Upgrade path, no upgrade requested.
    NoUpgrade,
    /// Upgrade path, an upgrade type that is not allowed.
    TypeNotAllowed,
    /// More than one `Upgrade` value.
    SeveralUpgrades,
    /// `Upgrade` and the duplicate header name different types.
    UpgradeMismatch,
    /// `Connection` lacks the `upgrade` token.
    ConnectionLacksUpgrade,
    /// A request body (`Content-Length` other than 0, or `Transfer-Encoding`).
    Body,
    /// WebSocket without `Sec-WebSocket-Version: 13`.
    WebSocketVersion,
    /// WebSocket without a key that decodes to 16 bytes.
    WebSocketKey,
    /// WebSocket without an allowed subprotocol.
    WebSocketSubprotocol,
    /// An ALPN tunnel upgrade on a path that is not an upgrade path.
    WrongPath,
    /// The client address is outside `allowed_sources`.
    SourceNotAllowed,
    /// The client is over its upgrade rate limit.
    RateLimited,
}

impl RefusalKind {
    /// Every kind, for defining one metric each.
    pub const ALL: [RefusalKind; 13] = [
        RefusalKind::MethodNotAllowed,
        RefusalKind::NoUpgrade,
        RefusalKind::TypeNotAllowed,
        RefusalKind::SeveralUpgrades,
        RefusalKind::UpgradeMismatch,
        RefusalKind::ConnectionLacksUpgrade,
        RefusalKind::Body,
        RefusalKind::WebSocketVersion,
        RefusalKind::WebSocketKey,
        RefusalKind::WebSocketSubprotocol,
        RefusalKind::WrongPath,
        RefusalKind::SourceNotAllowed,
        RefusalKind::RateLimited,
    ];

    /// The HTTP status of PROTOCOL.md section 3.
    pub fn status(self) -> u32 {
        match self {
            RefusalKind::MethodNotAllowed => 405,
            RefusalKind::NoUpgrade | RefusalKind::TypeNotAllowed => 426,
            RefusalKind::WrongPath => 404,
            RefusalKind::SourceNotAllowed => 403,
            RefusalKind::RateLimited => 429,
            RefusalKind::SeveralUpgrades
            | RefusalKind::UpgradeMismatch
            | RefusalKind::ConnectionLacksUpgrade
            | RefusalKind::Body
            | RefusalKind::WebSocketVersion
            | RefusalKind::WebSocketKey
            | RefusalKind::WebSocketSubprotocol => 400,
        }
    }

    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            RefusalKind::MethodNotAllowed => "method_not_allowed",
            RefusalKind::NoUpgrade => "no_upgrade",
            RefusalKind::TypeNotAllowed => "type_not_allowed",
            RefusalKind::SeveralUpgrades => "several_upgrades",
            RefusalKind::UpgradeMismatch => "upgrade_mismatch",
            RefusalKind::ConnectionLacksUpgrade => "connection_lacks_upgrade",
            RefusalKind::Body => "body",
            RefusalKind::WebSocketVersion => "websocket_version",
            RefusalKind::WebSocketKey => "websocket_key",
            RefusalKind::WebSocketSubprotocol => "websocket_subprotocol",
            RefusalKind::WrongPath => "wrong_path",
            RefusalKind::SourceNotAllowed => "source_not_allowed",
            RefusalKind::RateLimited => "rate_limited",
        }
    }
}

/// A refusal: its kind, the one-line reason sent as the `text/plain` body, and
/// the extra response headers it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was wrong.
    pub kind: RefusalKind,
    /// One line for the client, without the trailing newline.
    pub reason: String,
    /// Headers the answer carries besides `Content-Type`.
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// The body sent to the client.
    pub fn body(&self) -> String {
        format!("{}\n", self.reason)
    }
}

/// Validates `req` against the protocol with `names`. Policy (who may upgrade,
/// how often) is the caller's, applied around this.
pub fn validate(req: &Request<'_>, names: &Names) -> Verdict {
    let upgrades = req.tokens("upgrade");
    let duplicates = req.tokens(&names.duplicate_upgrade_header);
    let path = req.path_only();

    if !names.is_upgrade_path(path) {
        // Only ALPN tunnel types are ours elsewhere: the web application may
        // well serve WebSockets of its own.
        let tunnel_type = upgrades.iter().chain(&duplicates).any(|t| {
            names
                .type_named(t)
                .is_some_and(|t| t != UpgradeType::WebSocket && names.allowed_types.contains(&t))
        });
        if tunnel_type {
            return refuse(
                RefusalKind::WrongPath,
                format!(
                    "{path} is not an upgrade path: send ALPN tunnel upgrades to {}",
                    names.upgrade_paths.join(" or ")
                ),
            );
        }
        return Verdict::Pass;
    }

    if req.method != "GET" {
        return refuse_with(
            RefusalKind::MethodNotAllowed,
            format!(
                "method {} is not allowed on the upgrade path: use GET",
                req.method
            ),
            "allow",
            "GET".into(),
        );
    }

    let allowed = names.allowed_list();
    let (chosen, from_duplicate) = match (upgrades.as_slice(), duplicates.as_slice()) {
        ([], []) => {
            return upgrade_required(
                RefusalKind::NoUpgrade,
                format!("this path only accepts connection upgrades: send Connection: Upgrade and Upgrade: one of {allowed}"),
                &allowed,
            )
        }
        ([_, _, ..], _) | ([], [_, _, ..]) => {
            return refuse(
                RefusalKind::SeveralUpgrades,
                format!("several Upgrade values: send exactly one of {allowed}"),
            )
        }
        ([one], []) => (*one, false),
        ([], [dup]) => (*dup, true),
        ([one], dups) => {
            if !dups.iter().all(|d| d.eq_ignore_ascii_case(one)) {
                return refuse(
                    RefusalKind::UpgradeMismatch,
                    format!("{} ({}) does not match Upgrade ({one})", names.duplicate_upgrade_header, dups.join(", ")),
                );
            }
            (*one, false)
        }
    };
    let Some(upgrade_type) = names
        .type_named(chosen)
        .filter(|t| names.allowed_types.contains(t))
    else {
        return upgrade_required(
            RefusalKind::TypeNotAllowed,
            format!("upgrade type {chosen:?} is not allowed: use one of {allowed}"),
            &allowed,
        );
    };

    if !req
        .tokens("connection")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return refuse(
            RefusalKind::ConnectionLacksUpgrade,
            "the Connection header must contain the upgrade token".into(),
        );
    }

    let has_body =
        req.has("transfer-encoding") || req.values("content-length").any(|v| v.trim() != "0");
    if has_body {
        return refuse(
            RefusalKind::Body,
            "an upgrade request must not have a body (Content-Length other than 0 or Transfer-Encoding)".into(),
        );
    }

    let mut subprotocol = None;
    if upgrade_type == UpgradeType::WebSocket {
        if req.single("sec-websocket-version") != Some("13") {
            return refuse_with(
                RefusalKind::WebSocketVersion,
                "WebSocket upgrades need Sec-WebSocket-Version: 13".into(),
                "sec-websocket-version",
                "13".into(),
            );
        }
        if !req.single("sec-websocket-key").is_some_and(valid_key) {
            return refuse(
                RefusalKind::WebSocketKey,
                "WebSocket upgrades need a Sec-WebSocket-Key that is base64 of 16 bytes".into(),
            );
        }
        let offered = req.tokens("sec-websocket-protocol");
        // The client's order of preference decides (RFC 6455 section 4.2.2).
        let Some(chosen) = offered.iter().find_map(|o| {
            names
                .subprotocol_named(o)
                .filter(|s| names.websocket_subprotocols.contains(s))
        }) else {
            return refuse(
                RefusalKind::WebSocketSubprotocol,
                format!(
                    "WebSocket upgrades need Sec-WebSocket-Protocol with one of {}",
                    names.subprotocol_list()
                ),
            );
        };
        subprotocol = Some(chosen);
    }

    Verdict::Approve(Approval {
        upgrade_type,
        subprotocol,
        from_duplicate_header: from_duplicate,
    })
}

/// A refusal verdict with no extra headers.
pub fn refuse(kind: RefusalKind, reason: String) -> Verdict {
    Verdict::Refuse(Refusal {
        kind,
        reason,
        headers: Vec::new(),
    })
}

/// A refusal verdict carrying one extra header.
pub fn refuse_with(
    kind: RefusalKind,
    reason: String,
    name: &'static str,
    value: String,
) -> Verdict {
    Verdict::Refuse(Refusal {
        kind,
        reason,
        headers: vec![(name, value)],
    })
}

/// A 426 carries the allowed list in `Upgrade`; RFC 9110 requires the
/// `upgrade` connection option beside it, and Envoy forwards `Upgrade` only then.
fn upgrade_required(kind: RefusalKind, reason: String, allowed: &str) -> Verdict {
    Verdict::Refuse(Refusal {
        kind,
        reason,
        headers: vec![
            ("upgrade", allowed.to_string()),
            ("connection", "Upgrade".into()),
        ],
    })
}
