//! Where the session token travels and whether a request is HTTPS, through the real
//! `Router` (and a real `axum::serve` for the peer address): the token header, cookie and
//! header on one request, regenerate, destroy, tampering, rolling, touch, timeouts and key
//! rotation over the header; `Forwarded` and `X-Forwarded-Proto` from trusted and untrusted
//! peers; the TLS listener marker; and the configurations `check()` refuses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::visit::Visit;
use common::{get as get_req, send, Client, RecordingStore, Reply, TokenClient};
use session_core::store::MemoryStore;
use session_core::{
    Key, SameSite, Secure, Session, SessionId, SessionLayer, Store, TlsConnection, TokenHeader,
    Transport,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn routes() -> Router {
    common::visit::routes()
}

fn layer(store: impl Store) -> SessionLayer {
    SessionLayer::new(store, common::key())
}

fn header_app(layer: SessionLayer) -> Router {
    routes().layer(layer.with_transport(Transport::Header).check().unwrap())
}

const TOKEN: &str = "x-session-token";

/// The token a response carries in `X-Session-Token`, if any.
fn token(reply: &Reply) -> Option<&str> {
    reply.headers.get(TOKEN).map(|v| v.to_str().unwrap())
}

fn with_token(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri)
        .header(TOKEN, token)
        .body(Body::empty())
        .unwrap()
}

fn store_key(token: &str) -> session_core::StoreKey {
    SessionId::parse(&token[..32]).unwrap().store_key()
}

#[tokio::test]
async fn client_without_cookies_keeps_a_session_over_ten_requests_with_the_header_only() {
    let store = MemoryStore::new();
    let mut client = TokenClient::new(header_app(layer(store.clone())), TOKEN);
    for n in 1..=10 {
        let reply = client.get("/incr").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, format!("views: {n}"));
        assert!(reply.set_cookies().is_empty(), "{:?}", reply.set_cookies());
        if n == 1 {
            let issued = token(&reply).expect("the new session's token is in the response");
            assert_eq!(issued.len(), 76, "{issued}");
            assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
        } else {
            assert_eq!(token(&reply), None, "an unchanged token is not re-sent");
        }
    }
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn bearer_tokens_travel_in_the_authorization_header() {
    let app = header_app(layer(MemoryStore::new()).with_token_header(TokenHeader::Bearer));
    let mut client = TokenClient::new(app, "authorization");
    client.get("/incr").await;
    let sent = client.token.clone().unwrap();
    assert!(sent.starts_with("Bearer ") && sent.len() == 83, "{sent}");
    assert_eq!(client.get("/incr").await.body, "views: 2");
    // Another scheme, or a lower-case `bearer`, is read as such.
    let reply = send(
        &client.app,
        Request::get("/read")
            .header(header::AUTHORIZATION, "Basic dXNlcjpwdw==")
            .header(header::AUTHORIZATION, sent.replace("Bearer", "bearer"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.body, "views: 2");
}

#[tokio::test]
async fn the_header_wins_when_a_request_carries_a_cookie_too() {
    let store = MemoryStore::new();
    let app = routes().layer(layer(store.clone()).with_transport(Transport::Both));
    let mut browser = Client::new(app.clone());
    for _ in 0..3 {
        browser.get("/incr").await;
    }
    let cookie = browser.cookie.clone().unwrap();
    let mut api = TokenClient::new(app.clone(), TOKEN);
    api.get("/incr").await;
    let token_b = api.token.clone().unwrap();

    let both = Request::get("/incr")
        .header(header::COOKIE, &cookie)
        .header(TOKEN, &token_b)
        .body(Body::empty())
        .unwrap();
    let reply = send(&app, both).await;
    assert_eq!(reply.body, "views: 2", "the header's session counted");
    assert!(reply.set_cookies().is_empty(), "the cookie is not answered");
    assert_eq!(token(&reply), None, "the header's token is unchanged");
    assert_eq!(
        browser.get("/read").await.body,
        "views: 3",
        "cookie untouched"
    );

    // The header wins even when it does not verify: a new session, answered in the header.
    let mut forged = token_b.clone();
    forged.replace_range(75.., if forged.ends_with('A') { "B" } else { "A" });
    let forged = Request::get("/incr")
        .header(header::COOKIE, &cookie)
        .header(TOKEN, forged)
        .body(Body::empty())
        .unwrap();
    let reply = send(&app, forged).await;
    assert_eq!(reply.body, "views: 1");
    assert!(reply.set_cookies().is_empty());
    assert!(token(&reply).is_some_and(|t| t != token_b));
    assert_eq!(browser.get("/read").await.body, "views: 3");
}

#[tokio::test]
async fn both_transports_answer_on_the_one_the_request_used() {
    let app = routes().layer(layer(MemoryStore::new()).with_transport(Transport::Both));
    // A new visitor may be a browser or an API client: both get the token.
    let reply = send(&app, get_req("/incr", None)).await;
    let pair = reply.cookie_pair("sid").unwrap();
    assert_eq!(token(&reply), Some(&pair["sid=".len()..]));
    // A browser keeps to its cookie; the token is not exposed to scripts in a header.
    let mut browser = Client::new(app.clone());
    browser.cookie = Some(pair);
    let reply = browser.get("/login").await;
    assert!(reply.set_cookie("sid").is_some());
    assert_eq!(token(&reply), None);
    assert_eq!(browser.get("/name").await.body, "name: ada");
    // An API client keeps to its header.
    let mut api = TokenClient::new(app, TOKEN);
    api.get("/incr").await;
    let reply = api.get("/login").await;
    assert!(reply.set_cookies().is_empty());
    assert!(token(&reply).is_some());
    assert_eq!(api.get("/name").await.body, "name: ada");
}

#[tokio::test]
async fn regenerated_token_is_sent_back_and_the_old_one_is_dead() {
    let store = MemoryStore::new();
    let mut client = TokenClient::new(header_app(layer(store.clone())), TOKEN);
    client.get("/incr").await;
    client.get("/incr").await;
    let before = client.token.clone().unwrap();
    let reply = client.get("/login").await;
    let after = token(&reply)
        .expect("regenerate sends the new token")
        .to_owned();
    assert_ne!(after[..32], before[..32], "a new id");
    assert_eq!(client.get("/read").await.body, "views: 2");
    assert_eq!(client.get("/name").await.body, "name: ada");
    assert!(store.load(&store_key(&before)).await.unwrap().is_none());
    let stale = send(&client.app, with_token("/read", &before)).await;
    assert_eq!(stale.body, "views: 0");
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn tampered_token_gets_a_new_session_without_a_store_lookup() {
    let store = RecordingStore::new();
    let app = header_app(layer(store.clone()));
    let mut client = TokenClient::new(app.clone(), TOKEN);
    client.get("/incr").await;
    let good = client.token.clone().unwrap();
    let mut tampered = good.clone().into_bytes();
    tampered[40] = if tampered[40] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = {
        let other = Key::from_bytes(&[9u8; 32]).unwrap();
        let mut other_client = TokenClient::new(
            header_app(SessionLayer::new(MemoryStore::new(), other)),
            TOKEN,
        );
        other_client.get("/incr").await;
        other_client.token.unwrap()
    };
    for bad in [
        tampered.as_str(),
        foreign.as_str(),
        &good[..32],
        &good[..75],
        "",
        "x.y",
        &"a".repeat(4000),
    ] {
        store.clear();
        let reply = send(&app, with_token("/read", bad)).await;
        assert_eq!(reply.status, StatusCode::OK, "{bad}");
        assert_eq!(reply.body, "views: 0", "{bad}");
        assert!(store.ops().is_empty(), "{bad}: {:?}", store.ops());
    }
    // A changing request with a bad token starts a new session under a fresh id.
    let reply = send(&app, with_token("/incr", &tampered)).await;
    assert_eq!(reply.body, "views: 1");
    assert_ne!(token(&reply).unwrap()[..32], good[..32]);
    assert_eq!(
        client.get("/read").await.body,
        "views: 1",
        "the real one lives"
    );
}

#[tokio::test]
async fn destroy_sends_an_empty_token_header() {
    let store = MemoryStore::new();
    let mut client = TokenClient::new(header_app(layer(store.clone())), TOKEN);
    client.get("/incr").await;
    let old = client.token.clone().unwrap();
    let reply = client.get("/logout").await;
    assert_eq!(token(&reply), Some(""), "{:?}", reply.headers);
    assert!(reply.set_cookies().is_empty());
    assert!(client.token.is_none());
    assert!(store.is_empty());
    assert_eq!(
        send(&client.app, with_token("/read", &old)).await.body,
        "views: 0"
    );
}

#[tokio::test]
async fn a_session_ended_by_another_request_sends_an_empty_token_header() {
    let store = MemoryStore::new();
    let app = routes()
        .route(
            "/slow-incr",
            get(|mut v: Session<Visit>| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                *v.views_mut() += 1;
                "counted"
            }),
        )
        .layer(layer(store.clone()).with_transport(Transport::Header));
    let mut client = TokenClient::new(app.clone(), TOKEN);
    client.get("/incr").await;
    let token_a = client.token.clone().unwrap();
    let in_flight = send(&app, with_token("/slow-incr", &token_a));
    let logout = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&app, with_token("/logout", &token_a)).await
    };
    let (late, logout) = tokio::join!(in_flight, logout);
    assert_eq!(token(&logout), Some(""));
    assert_eq!(
        token(&late),
        Some(""),
        "the late save found the session gone"
    );
    assert!(store.is_empty(), "the late save did not bring it back");
}

#[tokio::test]
async fn rolling_resends_the_token_and_an_old_key_token_is_re_signed() {
    let rolling = header_app(layer(MemoryStore::new()).with_rolling(true));
    let mut client = TokenClient::new(rolling, TOKEN);
    let first = client.get("/incr").await;
    let second = client.get("/read").await;
    assert_eq!(
        token(&first),
        token(&second),
        "same token on every response"
    );

    let store = MemoryStore::new();
    let old_key = Key::from_bytes(&[1u8; 32]).unwrap();
    let mut old = TokenClient::new(
        header_app(SessionLayer::new(store.clone(), old_key.clone())),
        TOKEN,
    );
    old.get("/incr").await;
    let old_token = old.token.clone().unwrap();
    let rotated = header_app(SessionLayer::new(store, common::key()).with_old_key(old_key));
    let reply = send(&rotated, with_token("/read", &old_token)).await;
    assert_eq!(reply.body, "views: 1");
    let resigned = token(&reply)
        .expect("an old-key token is re-signed")
        .to_owned();
    assert_eq!(resigned[..33], old_token[..33], "same id");
    assert_ne!(resigned, old_token, "new signature");
    let reply = send(&rotated, with_token("/read", &resigned)).await;
    assert_eq!(reply.body, "views: 1");
    assert_eq!(token(&reply), None);
}

#[tokio::test]
async fn touch_and_idle_timeout_apply_to_header_sessions() {
    let store = RecordingStore::new();
    let app = header_app(
        layer(store.clone())
            .with_touch_after(Duration::ZERO)
            .with_idle_timeout(Duration::from_secs(1)),
    );
    let mut client = TokenClient::new(app, TOKEN);
    client.get("/incr").await;
    store.clear();
    client.get("/read").await;
    assert_eq!(store.ops(), ["load", "touch"]);
    let old = client.token.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = client.get("/incr").await;
    assert_eq!(
        reply.body, "views: 1",
        "the idle session died on the server"
    );
    assert_ne!(client.token.as_deref(), Some(old.as_str()));
}

#[tokio::test]
async fn header_tokens_are_issued_on_plain_http_whatever_the_cookie_options() {
    // `Secure` is a cookie attribute; a header token reaches the client either way.
    let app = header_app(
        layer(MemoryStore::new())
            .with_secure(Secure::Always)
            .with_same_site(SameSite::Strict),
    );
    let mut client = TokenClient::new(app, TOKEN);
    client.get("/incr").await;
    assert_eq!(client.get("/incr").await.body, "views: 2");
}

/// Whether the session cookie of a new session is `Secure` for `request`.
async fn secure_cookie(app: &Router, request: Request<Body>) -> bool {
    let reply = send(app, request).await;
    let cookie = reply.set_cookie("sid").expect("a session cookie");
    cookie.contains("; Secure")
}

fn from_peer(peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get("/incr").extension(ConnectInfo(
        format!("{peer}:40000").parse::<SocketAddr>().unwrap(),
    ));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn forwarded_and_x_forwarded_proto_count_only_from_trusted_peers() {
    let app = routes().layer(
        layer(MemoryStore::new())
            .with_trusted_proxies(["10.0.0.0/8", "2001:db8::1"])
            .check()
            .unwrap(),
    );
    let https = [("forwarded", "for=1.2.3.4;proto=https")];
    assert!(secure_cookie(&app, from_peer("10.1.2.3", &https)).await);
    assert!(secure_cookie(&app, from_peer("[2001:db8::1]", &https)).await);
    assert!(!secure_cookie(&app, from_peer("192.0.2.9", &https)).await);
    assert!(!secure_cookie(&app, from_peer("[2001:db8::2]", &https)).await);
    let xfp = [("x-forwarded-proto", "https")];
    assert!(secure_cookie(&app, from_peer("10.1.2.3", &xfp)).await);
    assert!(!secure_cookie(&app, from_peer("192.0.2.9", &xfp)).await);
    // Without a peer address (no ConnectInfo) nobody is trusted.
    let no_peer = Request::get("/incr")
        .header("forwarded", "proto=https")
        .body(Body::empty())
        .unwrap();
    assert!(!secure_cookie(&app, no_peer).await);
}

#[tokio::test]
async fn forwarded_and_x_forwarded_proto_must_agree() {
    let app = routes().layer(layer(MemoryStore::new()).with_trusted_proxies(["10.0.0.0/8"]));
    for (headers, secure) in [
        (
            &[
                ("forwarded", "for=1.2.3.4;proto=https"),
                ("x-forwarded-proto", "https"),
            ][..],
            true,
        ),
        (
            &[
                ("forwarded", "for=1.2.3.4;proto=https"),
                ("x-forwarded-proto", "http"),
            ],
            false,
        ),
        (
            &[
                ("forwarded", "for=1.2.3.4;proto=http"),
                ("x-forwarded-proto", "https"),
            ],
            false,
        ),
        // A `Forwarded` without a protocol says nothing; X-Forwarded-Proto decides.
        (
            &[("forwarded", "for=1.2.3.4"), ("x-forwarded-proto", "https")],
            true,
        ),
        (&[("forwarded", "for=1.2.3.4;proto=HTTPS")], true),
        (&[], false),
    ] {
        let request = from_peer("10.0.0.2", headers);
        assert_eq!(secure_cookie(&app, request).await, secure, "{headers:?}");
    }
}

#[tokio::test]
async fn several_hops_are_read_from_the_right_up_to_the_first_untrusted_client() {
    let app = routes().layer(layer(MemoryStore::new()).with_trusted_proxies(["10.0.0.0/8"]));
    for (headers, secure, why) in [
        (
            &[(
                "forwarded",
                "for=1.2.3.4;proto=https, for=10.0.0.9;proto=http",
            )][..],
            true,
            "TLS at the edge proxy (10.0.0.9), plain HTTP between the proxies",
        ),
        (
            &[(
                "forwarded",
                "for=10.0.0.9;proto=https, for=1.2.3.4;proto=http",
            )],
            false,
            "the client wrote the left entry itself; the proxy's own entry says http",
        ),
        (
            &[
                ("x-forwarded-proto", "https, http"),
                ("x-forwarded-for", "1.2.3.4, 10.0.0.9"),
            ],
            true,
            "X-Forwarded-Proto hops pair with X-Forwarded-For",
        ),
        (
            &[
                ("x-forwarded-proto", "https, http"),
                ("x-forwarded-for", "10.0.0.9, 1.2.3.4"),
            ],
            false,
            "spoofed left entries are never read",
        ),
        (
            &[("x-forwarded-proto", "https, http")],
            false,
            "without X-Forwarded-For only the peer's own entry counts",
        ),
    ] {
        let request = from_peer("10.0.0.2", headers);
        assert_eq!(secure_cookie(&app, request).await, secure, "{why}");
    }
}

/// One raw HTTP/1.1 request to a real server; the answer's head.
async fn raw_get(addr: SocketAddr, extra: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /incr HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split("\r\n\r\n").next().unwrap().to_owned()
}

/// Serves `layer` on 127.0.0.1 as a real server, with or without the peer address.
async fn serve(layer: SessionLayer, connect_info: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = routes().layer(layer);
    tokio::spawn(async move {
        if connect_info {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service).await
        } else {
            axum::serve(listener, app).await
        }
    });
    addr
}

#[tokio::test]
async fn a_real_server_trusts_forwarded_only_from_a_trusted_peer_address() {
    let forwarded = "Forwarded: for=203.0.113.7;proto=https\r\n";
    let trusted = serve(
        layer(MemoryStore::new()).with_trusted_proxies(["127.0.0.1"]),
        true,
    )
    .await;
    let untrusted = serve(
        layer(MemoryStore::new()).with_trusted_proxies(["10.0.0.0/8"]),
        true,
    )
    .await;
    let no_peer = serve(
        layer(MemoryStore::new()).with_trusted_proxies(["127.0.0.1"]),
        false,
    )
    .await;
    let secure = |head: &str| {
        let cookie = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: sid="))
            .unwrap_or_else(|| panic!("no session cookie in {head}"));
        cookie.contains("; Secure")
    };
    assert!(secure(&raw_get(trusted, forwarded).await));
    assert!(
        !secure(&raw_get(trusted, "").await),
        "no header: plain HTTP"
    );
    assert!(!secure(&raw_get(untrusted, forwarded).await));
    assert!(!secure(&raw_get(no_peer, forwarded).await));
}

#[tokio::test]
async fn a_tls_listener_makes_every_request_secure_and_tls_connection_marks_one() {
    let listener = routes().layer(layer(MemoryStore::new()).with_tls_listener(true));
    assert!(secure_cookie(&listener, get_req("/incr", None)).await);
    let app = routes().layer(layer(MemoryStore::new()));
    let over_tls = Request::get("/incr")
        .extension(TlsConnection)
        .body(Body::empty())
        .unwrap();
    assert!(secure_cookie(&app, over_tls).await);
    assert!(!secure_cookie(&app, get_req("/incr", None)).await);
    // The marker layered outside the session layer, as an app would add it.
    let marked = routes()
        .layer(
            layer(MemoryStore::new())
                .with_secure(Secure::Always)
                .with_cookie_name("__Host-sid"),
        )
        .layer(axum::Extension(TlsConnection));
    let reply = send(&marked, get_req("/incr", None)).await;
    assert!(
        reply.set_cookie("__Host-sid").is_some(),
        "{:?}",
        reply.headers
    );
}

#[test]
fn refused_configurations_say_what_to_change() {
    let base = || layer(MemoryStore::new());
    let cases = [
        (
            "SameSite=None with Secure::Auto",
            base().with_same_site(SameSite::None),
            "with_secure(Secure::Always)",
        ),
        (
            "SameSite=None with Secure::Never",
            base()
                .with_same_site(SameSite::None)
                .with_secure(Secure::Never),
            "with_secure(Secure::Always)",
        ),
        (
            "__Host- with Secure::Auto",
            base().with_cookie_name("__Host-sid"),
            "with_secure(Secure::Always)",
        ),
        (
            "__Host- with a Domain",
            base()
                .with_cookie_name("__Host-sid")
                .with_secure(Secure::Always)
                .with_domain("example.com"),
            "remove `.with_domain(...)`",
        ),
        (
            "__Host- with a Path other than /",
            base()
                .with_cookie_name("__host-sid")
                .with_secure(Secure::Always)
                .with_path("/app"),
            "remove `.with_path(...)`",
        ),
        (
            "__Secure- with Secure::Never",
            base()
                .with_cookie_name("__Secure-sid")
                .with_secure(Secure::Never),
            "with_secure(Secure::Always)",
        ),
        (
            "a trusted proxy that is not an address",
            base().with_trusted_proxies(["10.0.0.0/8", "proxy.internal"]),
            "give an IP address",
        ),
        (
            "a network with too many bits",
            base().with_trusted_proxies(["10.0.0.0/33"]),
            "10.0.0.0/33",
        ),
        (
            "a token header name with a space",
            base().with_token_header(TokenHeader::Named("X Session".to_owned())),
            "give a header name",
        ),
        (
            "the Cookie header as token header",
            base().with_token_header(TokenHeader::Named("Cookie".to_owned())),
            "not Cookie",
        ),
    ];
    for (what, layer, fix) in cases {
        let error = layer.check().expect_err(what).to_string();
        assert!(error.contains(fix), "{what}: {error}");
    }
}

#[test]
fn accepted_configurations_pass_check() {
    let base = || layer(MemoryStore::new());
    for (what, layer) in [
        (
            "SameSite=None with Secure::Always",
            base()
                .with_same_site(SameSite::None)
                .with_secure(Secure::Always),
        ),
        (
            "__Host- done right",
            base()
                .with_cookie_name("__Host-sid")
                .with_secure(Secure::Always),
        ),
        (
            "__Secure- with a Domain and a Path",
            base()
                .with_cookie_name("__Secure-sid")
                .with_secure(Secure::Always)
                .with_domain("example.com")
                .with_path("/app"),
        ),
        (
            "cookie options do not matter without a cookie",
            base()
                .with_transport(Transport::Header)
                .with_same_site(SameSite::None)
                .with_cookie_name("__Host-sid"),
        ),
        (
            "bearer tokens",
            base()
                .with_transport(Transport::Both)
                .with_token_header(TokenHeader::Bearer),
        ),
        (
            "a bad option set again correctly",
            base()
                .with_trusted_proxies(["proxy.internal"])
                .with_trusted_proxies(["10.0.0.1"])
                .with_token_header(TokenHeader::Named("X Bad".to_owned()))
                .with_token_header(TokenHeader::Named("X-Api-Session".to_owned())),
        ),
        (
            "proxies as addresses and networks",
            base().with_trusted_proxies(["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"]),
        ),
    ] {
        assert!(layer.check().is_ok(), "{what}");
    }
}
