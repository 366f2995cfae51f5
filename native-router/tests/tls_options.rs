//! The router's TLS options end to end: TLS to the backend (verified with the
//! route's CA and SNI, its sessions resumed across dials, a new CA taking effect
//! at reload), TLS on the upgrade listener (Envoy to router), server
//! certificates per SNI, and TLS 1.2 beside 1.3.

mod support;

use std::sync::Arc;
use std::time::Duration;

use alpn_protocol::framing::Framing;
use alpn_tunnel as client;
use alpn_tunnel::tls::{client_config, provider, root_store};
use integration_tests::tls::ca;
use rustls::pki_types::ServerName;
use support::{
    backend, config, echo, other_cert, tls_echo_backend, tunnel, Backend, InProcessRouter, Pki,
    RouterProcess, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

async fn echo_once(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
) -> std::io::Result<Vec<u8>> {
    stream.write_all(b"hello backend").await?;
    let mut back = vec![0u8; 13];
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .map_err(std::io::Error::other)??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_backend_is_verified_with_the_routes_ca_and_sni() {
    let pki = Pki::new();
    let secure = tls_echo_backend(pki.dir.path());
    let routes = format!(
        "[[route]]\nalpn = \"good\"\nbackend = \"{a}\"\nbackend_tls = {{ ca = \"backend-ca.pem\", sni = \"backend.test\" }}\n\
         [[route]]\nalpn = \"wrong-name\"\nbackend = \"{a}\"\nbackend_tls = {{ ca = \"backend-ca.pem\", sni = \"elsewhere.test\" }}\n",
        a = secure.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let (mut s, _) = tunnel(&pki, router.direct, None, &["good"], None)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut s).await.unwrap(), b"hello backend");

    let (mut s, _) = tunnel(&pki, router.direct, None, &["wrong-name"], None)
        .await
        .unwrap();
    assert!(
        echo_once(&mut s).await.is_err(),
        "a backend certificate for another name must be refused"
    );
    let line = router.wait_for("backend unreachable");
    assert!(
        line.contains("route=wrong-name") && line.contains("TLS to"),
        "{line}"
    );
}

/// The backend's handshakes so far, `full` or `resumed`.
fn handshakes(backend: &Backend) -> Vec<String> {
    let seen = backend.seen.lock().unwrap();
    seen.iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_sessions_resume_across_dials_and_a_reload_takes_a_new_ca() {
    let pki = Pki::new();
    let secure = tls_echo_backend(pki.dir.path());
    let routes = format!(
        "[[route]]\nalpn = \"good\"\nbackend = \"{}\"\nbackend_tls = {{ ca = \"backend-ca.pem\", sni = \"backend.test\" }}\n",
        secure.addr
    );
    let toml = config(&routes);
    // The binary: the new CA comes with a reload (SIGHUP).
    let mut router = RouterProcess::start(pki.dir.path(), &toml);
    for _ in 0..2 {
        let (mut s, _) = tunnel(&pki, router.direct, None, &["good"], None)
            .await
            .unwrap();
        assert_eq!(echo_once(&mut s).await.unwrap(), b"hello backend");
    }
    assert_eq!(
        handshakes(&secure),
        ["full", "resumed"],
        "the route's second dial resumes the first one's TLS session with the backend"
    );

    // A reload builds the backend configuration anew: a CA that does not
    // verify the backend takes effect at once (a session kept from the old
    // generation would skip the certificate check).
    std::fs::write(pki.path("backend-ca.pem"), ca("not the backend's CA").pem()).unwrap();
    router.rewrite(&toml);
    router.signal("HUP");
    router.wait_for("reload: now serving routes");
    let (mut s, _) = tunnel(&pki, router.direct, None, &["good"], None)
        .await
        .unwrap();
    assert!(
        echo_once(&mut s).await.is_err(),
        "after the reload the backend is verified with the new CA"
    );
    let line = router.wait_for("backend unreachable");
    assert!(line.contains("TLS to"), "{line}");
    assert_eq!(handshakes(&secure), ["full", "resumed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_listener_can_take_tls_from_envoy() {
    let pki = Pki::new();
    let plain = backend(echo);
    let toml = config(&format!(
        "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
        plain.addr
    ))
    .replace(
        "ping_interval = \"30s\"\n",
        "ping_interval = \"30s\"\ntls = { cert = \"server.pem\", key = \"server.key\" }\n",
    );
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    // The outer TLS, as Envoy's upstream TLS would do it, then the upgrade, then the inner TLS.
    let outer = client_config(std::slice::from_ref(&pki.server_ca), &["http/1.1"], None).unwrap();
    let tcp = tokio::net::TcpStream::connect(router.upgrade)
        .await
        .unwrap();
    let outer = client::inner_tls(tcp, outer, "router.test").await.unwrap();
    let framed = client::upgrade(
        outer,
        Framing::AlpnPing,
        "router.test",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let inner = client_config(std::slice::from_ref(&pki.server_ca), &["redis"], None).unwrap();
    let mut tls = client::inner_tls(framed, inner, "router.test")
        .await
        .unwrap();
    assert_eq!(echo_once(&mut tls).await.unwrap(), b"hello backend");

    // A plain-text upgrade to a TLS listener does not get through.
    assert!(
        tunnel(&pki, router.upgrade, Some(Framing::Alpn), &["redis"], None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificates_per_sni_and_tls_1_2() {
    let pki = Pki::new();
    let other_ca = other_cert(pki.dir.path());
    let plain = backend(echo);
    let toml = config(&format!("[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n", plain.addr)).replace(
        "key = \"server.key\"\n",
        "key = \"server.key\"\nsni = [{ name = \"other.test\", cert = \"other.pem\", key = \"other.key\" }]\n",
    );
    let router = InProcessRouter::start(pki.dir.path(), &toml);

    // other.test is served with its own certificate, which only its CA verifies.
    let config = client_config(&[other_ca], &["redis"], None).unwrap();
    let tcp = tokio::net::TcpStream::connect(router.direct).await.unwrap();
    let mut tls = client::inner_tls(tcp, config, "other.test").await.unwrap();
    assert_eq!(echo_once(&mut tls).await.unwrap(), b"hello backend");

    // Any other name gets the default certificate; TLS 1.2 works as well as 1.3.
    let roots = root_store(std::slice::from_ref(&pki.server_ca)).unwrap();
    let mut tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls12.alpn_protocols = vec![b"redis".to_vec()];
    let tcp = tokio::net::TcpStream::connect(router.direct).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("router.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(echo_once(&mut tls).await.unwrap(), b"hello backend");
}

/// The inner TLS of a connection from `config`, and whether it resumed; one
/// echo goes through first, so the session tickets have arrived.
async fn inner_handshake(
    router: &InProcessRouter,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(router.direct).await?;
    let mut tls = client::inner_tls(tcp, config, "router.test").await?;
    assert_eq!(echo_once(&mut tls).await?, b"hello backend");
    Ok(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_resumes_its_inner_tls_session_on_the_route_that_issued_it() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{a}\"\n\
         [[route]]\nalpn = \"pg\"\nbackend = \"{a}\"\nclient_ca = \"clients-ca.pem\"\n",
        a = echo_backend.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    // More clients than a server-side session cache of 256 holds (rustls's
    // default, two sessions per full handshake): each has a cache of its own.
    let clients: Vec<_> = (0..200)
        .map(|_| client_config(std::slice::from_ref(&pki.server_ca), &["echo"], None).unwrap())
        .collect();
    for config in &clients {
        assert!(
            !inner_handshake(&router, config.clone()).await.unwrap(),
            "a client's first handshake is a full one"
        );
    }
    let mut full = 0;
    for config in &clients {
        if !inner_handshake(&router, config.clone()).await.unwrap() {
            full += 1;
        }
    }
    assert_eq!(full, 0, "of 200 clients, {full} could not resume");
    router.wait_for("tls=resumed");

    // The same client's ticket on the route that asks for a client certificate:
    // a full handshake, which asks for it.
    let mut pg = (*client_config(
        std::slice::from_ref(&pki.server_ca),
        &["pg"],
        Some(&pki.client),
    )
    .unwrap())
    .clone();
    pg.resumption = clients[0].resumption.clone();
    assert!(
        !inner_handshake(&router, Arc::new(pg)).await.unwrap(),
        "a ticket of route echo must not resume on route pg"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_tunnel_resumes_the_inner_tls_for_its_later_tunnels() {
    use alpn_tunnel::{Client, Options, ServerUrl, UpgradeMode};
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let client = Client::new(
        ServerUrl::parse(&format!("https://{}", router.direct)).unwrap(),
        "echo",
        Options {
            sni: Some("router.test".into()),
            ca: Some(vec![pki.server_ca.clone()]),
            upgrade: UpgradeMode::Never,
            ..Options::default()
        },
    )
    .unwrap();
    for _ in 0..3 {
        let (mut s, _) = client.connect().await.unwrap();
        assert_eq!(echo_once(&mut s).await.unwrap(), b"hello backend");
    }
    let log = router.log();
    let kinds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnel open"))
        .map(|l| {
            if l.contains("tls=resumed") {
                "resumed"
            } else {
                "full"
            }
        })
        .collect();
    assert_eq!(kinds, ["full", "resumed", "resumed"], "{log}");
}
