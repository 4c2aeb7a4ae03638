//! How the session token travels, and whether a request came over HTTPS.
//!
//! # Cookie, header, or both
//!
//! The token is the signed value the cookie carries (`ID.SIGNATURE`, see the crate docs); the
//! [`Transport`] says where it travels:
//!
//! | transport | request carries | a new, regenerated or re-signed token is sent in | destroy sends |
//! |---|---|---|---|
//! | [`Transport::Cookie`] (default) | the session cookie | `Set-Cookie` | a clearing cookie |
//! | [`Transport::Header`] | the token header | the token header | the token header, empty |
//! | [`Transport::Both`] | either | the transport the request used; both for a request that carried neither | as for a new token |
//!
//! The token header is `X-Session-Token: TOKEN` by default, or `Authorization: Bearer TOKEN`
//! with [`TokenHeader::Bearer`]; responses use the same header and form, so a client copies
//! it back as it came. An empty token header on a response means the session ended.
//!
//! **When a request carries both** (with [`Transport::Both`]), **the header wins**, valid or
//! not: the request is a header request, its cookie is neither read nor answered. A header is
//! something the client chose to send on this request, while a browser attaches cookies to
//! every request by itself; and one request never mixes two sessions.
//!
//! Everything else (rolling, touch, timeouts, key rotation, regenerate, every store) works
//! the same on both transports: the lifecycle decides *whether* a token is sent, the transport
//! only *where*. A tampered or unknown token starts a new session without a store lookup,
//! exactly like a tampered cookie.
//!
//! # Is the request HTTPS?
//!
//! [`Secure::Auto`](crate::Secure::Auto) marks the cookie `Secure` when the request came over
//! HTTPS. Only the server's own knowledge counts, never what the client claims (an
//! absolute-form `https://` request target on a plain connection is ignored):
//!
//! 1. The app's listener terminates TLS: say so with
//!    [`with_tls_listener(true)`](crate::SessionLayer::with_tls_listener), or, when one app
//!    serves both a TLS and a plain listener, insert [`TlsConnection`] into the extensions of
//!    the requests that came over TLS (e.g. `.layer(Extension(TlsConnection))` on the router
//!    served on the TLS listener, applied after the `SessionLayer`).
//! 2. A trusted proxy says so. Trust goes to proxy addresses and networks
//!    ([`with_trusted_proxies`](crate::SessionLayer::with_trusted_proxies)), checked against
//!    the connection's peer address from axum's `ConnectInfo<SocketAddr>` (serve the app
//!    with `into_make_service_with_connect_info::<SocketAddr>()`). A request from any other
//!    peer is judged by its connection alone, whatever headers it carries.
//!
//! From a trusted peer, the RFC 7239 `Forwarded` header (its `proto` parameter) and
//! `X-Forwarded-Proto` both count:
//!
//! - **Both present**: the request is HTTPS only if both say `https`. Proxies usually set one
//!   of the two and pass the other through from the client untouched; requiring agreement
//!   means a header the client wrote can never upgrade a request.
//! - **Several hops**: proxies append, so the right-most entry is the one your peer wrote, and
//!   it describes the connection that proxy received. The entries are read from the right;
//!   while an entry's client address (`for=` in `Forwarded`, the matching `X-Forwarded-For`
//!   entry counted from the right for `X-Forwarded-Proto`) is itself a trusted proxy, the
//!   reading moves one entry left. It stops at the first entry whose client is not trusted
//!   (the real client): that entry's protocol decides (if it names none, the nearest one to
//!   its right). Entries left of it were written by the client and are never read. When
//!   `X-Forwarded-Proto` has fewer entries than the walk needs, its left-most entry is used.
//!
//! # Example
//!
//! Browsers and API clients on one app behind load balancers in `10.0.0.0/8`:
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use axum::{routing::get, Router};
//! use session_core::store::MemoryStore;
//! use session_core::{Key, Session, SessionLayer, TokenHeader, Transport};
//!
//! #[derive(Session)]
//! struct Visit {
//!     views: u32,
//! }
//!
//! async fn home(mut visit: Session<Visit>) -> String {
//!     *visit.views_mut() += 1;
//!     format!("You visited {} times", visit.views())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SessionLayer::new(MemoryStore::new(), Key::generate()?)
//!     .with_transport(Transport::Both) // the cookie, or the header
//!     .with_token_header(TokenHeader::Bearer) // `Authorization: Bearer TOKEN`
//!     .with_trusted_proxies(["10.0.0.0/8"]) // may say a request is HTTPS
//!     .check()?;
//! let app = Router::new().route("/", get(home)).layer(layer);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! // The peer address is what trusted proxies are checked against.
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The deprecated [`with_trusted_proxy(true)`](crate::SessionLayer::with_trusted_proxy)
//! trusts every peer and every hop, so the left-most entry decides, as it always did.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use axum_core::response::Response;
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, ConfigError};
use crate::cookie::CookieLookup;

/// The header [`TokenHeader::default`] names.
const DEFAULT_TOKEN_HEADER: &str = "x-session-token";
/// Entries of a forwarding header looked at, counted from the right: more hops than this
/// between the client and the app is not a real deployment.
const MAX_HOPS: usize = 32;

/// Where the session token travels. See the [module docs](self) for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// In the session cookie only (the default).
    #[default]
    Cookie,
    /// In the [`TokenHeader`] only, for API and mobile clients without a cookie jar.
    Header,
    /// In either; a request that carries both is a header request.
    Both,
}

/// The header carrying the session token with [`Transport::Header`] or [`Transport::Both`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenHeader {
    /// `Authorization: Bearer TOKEN`, on requests and responses.
    Bearer,
    /// A header of this name holding the bare token, on requests and responses. The
    /// default is `X-Session-Token`.
    Named(String),
}

impl Default for TokenHeader {
    fn default() -> Self {
        Self::Named(DEFAULT_TOKEN_HEADER.to_owned())
    }
}

/// Marks a request that arrived over TLS terminated by the app itself, for
/// [`Secure::Auto`](crate::Secure::Auto): insert it into the request's extensions before the
/// `SessionLayer` runs. With a single TLS listener,
/// [`with_tls_listener(true)`](crate::SessionLayer::with_tls_listener) says the same for
/// every request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsConnection;

/// Which peers may say, through forwarding headers, that a request came over HTTPS.
#[derive(Clone, Debug, Default)]
enum ProxyTrust {
    /// None: only the connection counts.
    #[default]
    Nobody,
    /// Every peer and every hop (the deprecated `with_trusted_proxy(true)`).
    Everyone,
    /// Peers and hops in these networks.
    Networks(Vec<Network>),
}

impl ProxyTrust {
    fn trusts(&self, addr: Option<IpAddr>) -> bool {
        match self {
            Self::Nobody => false,
            Self::Everyone => true,
            Self::Networks(networks) => {
                addr.is_some_and(|addr| networks.iter().any(|n| n.contains(addr)))
            }
        }
    }
}

/// An IP network: an address and how many leading bits of it count. Parsed by hand: the
/// two forms needed (`ADDR` and `ADDR/BITS`) take a few lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let written: IpAddr = addr.parse().ok()?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let bits: u8 = match bits {
            Some(bits) if bits.bytes().all(|b| b.is_ascii_digit()) => bits.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        if bits > max {
            return None;
        }
        // `::ffff:10.0.0.0/104` is the IPv4 network `10.0.0.0/8`.
        let addr = written.to_canonical();
        let bits = if addr.is_ipv4() && written.is_ipv6() {
            bits.checked_sub(96)?
        } else {
            bits
        };
        Some(Self { addr, bits })
    }

    fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 peer seen on a dual-stack socket arrives as `::ffff:a.b.c.d`.
        match (self.addr, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// The transport options, as the layer holds them.
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    pub(crate) transport: Transport,
    /// The token header's name (`authorization` for bearer tokens).
    header: HeaderName,
    bearer: bool,
    trust: ProxyTrust,
    pub(crate) tls_listener: bool,
    /// A token header or a trusted proxy that did not parse, reported by `check()` (until
    /// the option is set again).
    invalid_header: Option<ConfigError>,
    invalid_proxy: Option<ConfigError>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Cookie,
            header: HeaderName::from_static(DEFAULT_TOKEN_HEADER),
            bearer: false,
            trust: ProxyTrust::Nobody,
            tls_listener: false,
            invalid_header: None,
            invalid_proxy: None,
        }
    }
}

impl TransportConfig {
    pub(crate) fn set_token_header(&mut self, header: TokenHeader) {
        self.invalid_header = None;
        match header {
            TokenHeader::Bearer => {
                self.header = AUTHORIZATION;
                self.bearer = true;
            }
            TokenHeader::Named(name) => match HeaderName::try_from(name.as_str()) {
                Ok(parsed) if is_free_for_tokens(&parsed) => {
                    self.header = parsed;
                    self.bearer = false;
                }
                _ => self.invalid_header = Some(ConfigError::TokenHeader(name)),
            },
        }
    }

    pub(crate) fn set_trusted_proxies(&mut self, proxies: impl IntoIterator<Item = String>) {
        self.invalid_proxy = None;
        let mut networks = Vec::new();
        for proxy in proxies {
            match Network::parse(&proxy) {
                Some(network) => networks.push(network),
                None => {
                    self.invalid_proxy = Some(ConfigError::TrustedProxy(proxy));
                    return;
                }
            }
        }
        self.trust = ProxyTrust::Networks(networks);
    }

    /// The deprecated all-or-nothing trust.
    pub(crate) fn set_trust_everyone(&mut self, trust: bool) {
        self.invalid_proxy = None;
        self.trust = if trust {
            ProxyTrust::Everyone
        } else {
            ProxyTrust::Nobody
        };
    }

    pub(crate) fn uses_cookie(&self) -> bool {
        self.transport != Transport::Header
    }

    pub(crate) fn uses_header(&self) -> bool {
        self.transport != Transport::Cookie
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        match self.invalid_header.as_ref().or(self.invalid_proxy.as_ref()) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The token header's value on a request, if the request carries one: its first value
    /// (for bearer tokens, its first `Bearer` credential). A value that is not text is
    /// returned empty, so it counts as sent but never verifies.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let mut values = headers.get_all(&self.header).iter();
        if !self.bearer {
            return values.next().map(|v| v.to_str().unwrap_or_default());
        }
        values.find_map(|value| {
            let value = value.as_bytes();
            let scheme = value.get(..7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| std::str::from_utf8(&value[7..]).unwrap_or_default().trim())
        })
    }
}

/// Token headers must not be headers with another meaning to browsers and servers.
fn is_free_for_tokens(name: &HeaderName) -> bool {
    ![
        COOKIE,
        http::header::SET_COOKIE,
        AUTHORIZATION,
        CACHE_CONTROL,
    ]
    .contains(name)
}

/// What the layer learns about a request before the handler runs: cheap checks only (no
/// signature is verified until the session is taken).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Delivery {
    /// The request came over HTTPS, as the connection or a trusted proxy says.
    pub(crate) secure: bool,
    /// The token is read from the header rather than the cookie.
    read_header: bool,
}

impl Delivery {
    pub(crate) fn of(config: &Config, headers: &HeaderMap, extensions: &Extensions) -> Self {
        let transport = &config.transport;
        let read_header = match transport.transport {
            Transport::Cookie => false,
            Transport::Header => true,
            Transport::Both => transport.token(headers).is_some(),
        };
        Self {
            secure: is_secure(transport, headers, extensions),
            read_header,
        }
    }
}

/// Finds and verifies the request's token on the transport it uses.
pub(crate) fn lookup(config: &Config, delivery: Delivery, headers: &HeaderMap) -> CookieLookup {
    if !delivery.read_header {
        let cookies = || headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes);
        let lookup = config.codec.find(&config.cookie_name, cookies());
        return match &config.upgrade {
            Some(upgrade) => upgrade.find(lookup, cookies()),
            None => lookup,
        };
    }
    let mut lookup = CookieLookup::default();
    if let Some(token) = config.transport.token(headers) {
        lookup.present = true;
        if let Some((id, index)) = config.codec.verify(token) {
            lookup.id = Some(id);
            lookup.old_key = index > 0;
        }
    }
    lookup
}

/// Which transports a response answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) cookie: bool,
    pub(crate) header: bool,
}

impl Answer {
    /// The transport the request used; both when it carried no token at all.
    pub(crate) fn for_request(config: &Config, delivery: Delivery, token_sent: bool) -> Self {
        match config.transport.transport {
            Transport::Cookie => Self {
                cookie: true,
                header: false,
            },
            Transport::Header => Self {
                cookie: false,
                header: true,
            },
            Transport::Both => Self {
                cookie: !delivery.read_header,
                header: delivery.read_header || !token_sent,
            },
        }
    }
}

/// Sends `token` (empty: the session ended) in the token header. A response that hands out
/// a token must not be stored by a shared cache, so one without caching rules of its own
/// gets `Cache-Control: no-store`.
pub(crate) fn append_token_header(response: &mut Response, config: &Config, token: &str) {
    let transport = &config.transport;
    let value = if transport.bearer && !token.is_empty() {
        HeaderValue::try_from(format!("Bearer {token}"))
    } else {
        HeaderValue::try_from(token)
    };
    match value {
        Ok(value) => {
            let headers = response.headers_mut();
            headers.append(transport.header.clone(), value);
            if !headers.contains_key(CACHE_CONTROL) {
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        Err(error) => tracing::error!(%error, "session token is not a valid header value"),
    }
}

/// Whether the request came over HTTPS: the app's own TLS listener, or a trusted proxy's
/// forwarding headers. Never the request target's scheme, which the client writes.
fn is_secure(transport: &TransportConfig, headers: &HeaderMap, extensions: &Extensions) -> bool {
    if transport.tls_listener || extensions.get::<TlsConnection>().is_some() {
        return true;
    }
    let trust = &transport.trust;
    let peer_trusted = match trust {
        ProxyTrust::Nobody => return false,
        ProxyTrust::Everyone => true,
        ProxyTrust::Networks(_) => match peer_addr(extensions) {
            Some(peer) => trust.trusts(Some(peer)),
            None => {
                warn_no_peer_address();
                false
            }
        },
    };
    if !peer_trusted {
        return false;
    }
    let forwarded = forwarded_hops(headers);
    let forwarded = client_proto(&forwarded, trust);
    let x_forwarded = x_forwarded_hops(headers);
    let x_forwarded = client_proto(&x_forwarded, trust);
    let mut said = false;
    for proto in [forwarded, x_forwarded].into_iter().flatten() {
        if !proto.eq_ignore_ascii_case("https") {
            return false;
        }
        said = true;
    }
    said
}

fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Trusted proxies without a peer address to check is a set-up mistake worth one warning.
fn warn_no_peer_address() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "trusted proxies are configured but requests carry no peer address; serve the app with `into_make_service_with_connect_info::<SocketAddr>()` or forwarding headers are ignored"
        );
    });
}

/// One hop of a forwarding header: the protocol the proxy received and from whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hop<'h> {
    proto: Option<&'h str>,
    client: Option<&'h str>,
}

/// The protocol of the connection the real client made, read from the right (see the
/// module docs): the walk goes left while a hop's client is a trusted proxy.
fn client_proto<'h>(hops: &VecDeque<Hop<'h>>, trust: &ProxyTrust) -> Option<&'h str> {
    let mut proto = None;
    for hop in hops.iter().rev() {
        proto = hop.proto.or(proto);
        if !trust.trusts(hop.client.and_then(parse_node)) {
            break;
        }
    }
    proto
}

/// The hops of the `Forwarded` headers, at most [`MAX_HOPS`] from the right.
fn forwarded_hops(headers: &HeaderMap) -> VecDeque<Hop<'_>> {
    let elements = last_entries(headers, &http::header::FORWARDED);
    let mut hops = VecDeque::with_capacity(elements.len());
    for element in elements {
        let mut hop = Hop::default();
        for pair in split_outside_quotes(element, b';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match name.trim() {
                n if n.eq_ignore_ascii_case("proto") => hop.proto = Some(value),
                n if n.eq_ignore_ascii_case("for") => hop.client = Some(value),
                _ => {}
            }
        }
        hops.push_back(hop);
    }
    hops
}

/// The hops of `X-Forwarded-Proto`, each paired with the `X-Forwarded-For` entry in the
/// same place counted from the right.
fn x_forwarded_hops(headers: &HeaderMap) -> VecDeque<Hop<'_>> {
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    if !headers.contains_key(&PROTO) {
        return VecDeque::new();
    }
    let protos = last_entries(headers, &PROTO);
    let clients = last_entries(headers, &FOR);
    let len = protos.len().max(clients.len());
    (1..=len)
        .rev()
        .map(|back| Hop {
            proto: from_right(&protos, back),
            client: from_right(&clients, back),
        })
        .collect()
}

/// The entry `back` places from the right, counting the last as 1.
fn from_right<'h>(entries: &VecDeque<&'h str>, back: usize) -> Option<&'h str> {
    entries.len().checked_sub(back).map(|i| entries[i])
}

/// The last [`MAX_HOPS`] entries of the comma-separated list in the values of `name`.
fn last_entries<'h>(headers: &'h HeaderMap, name: &HeaderName) -> VecDeque<&'h str> {
    let mut entries = VecDeque::new();
    for entry in list_items(headers, name) {
        if entries.len() == MAX_HOPS {
            entries.pop_front();
        }
        entries.push_back(entry);
    }
    entries
}

/// The comma-separated entries of every value of `name`, in order, trimmed; values that
/// are not text are skipped.
fn list_items<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| split_outside_quotes(value, b','))
        .map(str::trim)
}

/// Splits `text` at `separator`, except inside double-quoted strings.
fn split_outside_quotes(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, byte) in text.bytes().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b if b == separator && !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// The address in a node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:8080`. `unknown` and obfuscated names (`_hidden`) have none.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = unquote(node.trim());
    if let Some(v6) = node.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    node.parse().ok().or_else(|| {
        let (v4, port) = node.split_once(':')?;
        port.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &[&str]) -> ProxyTrust {
        ProxyTrust::Networks(list.iter().map(|n| Network::parse(n).unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn networks_parse_and_match() {
        let net = Network::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.3.4".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.2.3".parse().unwrap()),
            "mapped v4"
        );
        let one = Network::parse(" 192.0.2.7 ").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = Network::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let mapped = Network::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, Network::parse("10.0.0.0/8").unwrap());
        assert_eq!(Network::parse("::ffff:10.0.0.0/64"), None);
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/+8",
            "host",
            "1.2.3.4/",
        ] {
            assert_eq!(Network::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nodes_parse_in_every_form() {
        let v4: IpAddr = "192.0.2.43".parse().unwrap();
        let v6: IpAddr = "2001:db8:cafe::17".parse().unwrap();
        assert_eq!(parse_node("192.0.2.43"), Some(v4));
        assert_eq!(parse_node("\"192.0.2.43:47011\""), Some(v4));
        assert_eq!(parse_node("\"[2001:db8:cafe::17]\""), Some(v6));
        assert_eq!(parse_node("[2001:db8:cafe::17]:4711"), Some(v6));
        assert_eq!(parse_node("2001:db8:cafe::17"), Some(v6));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(parse_node("1.2.3.4:http"), None);
    }

    #[test]
    fn forwarded_elements_and_quoted_values_are_split_correctly() {
        let map = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:80\";proto=https, for=10.0.0.2",
            ),
            ("forwarded", "For=\"a,b;c\";Proto=HTTP;by=x"),
        ]);
        let hops = forwarded_hops(&map);
        assert_eq!(
            Vec::from(hops),
            [
                Hop {
                    proto: Some("https"),
                    client: Some("[2001:db8::1]:80")
                },
                Hop {
                    proto: None,
                    client: Some("10.0.0.2")
                },
                Hop {
                    proto: Some("HTTP"),
                    client: Some("a,b;c")
                },
            ]
        );
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_client() {
        let trust = networks(&["10.0.0.0/8"]);
        // client 1.2.3.4 -(https)-> cdn 10.0.0.5 -(http)-> peer
        let map = headers(&[(
            "forwarded",
            "for=9.9.9.9;proto=http, for=1.2.3.4;proto=https, for=10.0.0.5;proto=http",
        )]);
        assert_eq!(client_proto(&forwarded_hops(&map), &trust), Some("https"));
        // Trusting only the peer, the nearest hop's client (10.0.0.5) is not trusted.
        let peer_only = networks(&["10.9.9.9"]);
        assert_eq!(
            client_proto(&forwarded_hops(&map), &peer_only),
            Some("http")
        );
        // Trusting every hop reaches the left-most entry.
        assert_eq!(
            client_proto(&forwarded_hops(&map), &ProxyTrust::Everyone),
            Some("http")
        );
        // A stopping hop without a protocol takes the nearest one to its right.
        let map = headers(&[("forwarded", "for=1.2.3.4, for=10.0.0.5;proto=https")]);
        assert_eq!(client_proto(&forwarded_hops(&map), &trust), Some("https"));
        let none = headers(&[("forwarded", "for=1.2.3.4")]);
        assert_eq!(client_proto(&forwarded_hops(&none), &trust), None);
    }

    #[test]
    fn x_forwarded_proto_pairs_with_x_forwarded_for_from_the_right() {
        let trust = networks(&["10.0.0.0/8"]);
        let map = headers(&[
            ("x-forwarded-proto", "http, https, http"),
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.5"),
        ]);
        assert_eq!(client_proto(&x_forwarded_hops(&map), &trust), Some("https"));
        // A proxy that overwrote the protocol leaves fewer entries: the left-most is used.
        let overwritten = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "1.2.3.4, 10.0.0.5"),
        ]);
        assert_eq!(
            client_proto(&x_forwarded_hops(&overwritten), &trust),
            Some("https")
        );
        // No X-Forwarded-For: nothing says the nearest hop's client is trusted.
        let bare = headers(&[("x-forwarded-proto", "https, http")]);
        assert_eq!(client_proto(&x_forwarded_hops(&bare), &trust), Some("http"));
        assert_eq!(
            client_proto(&x_forwarded_hops(&bare), &ProxyTrust::Everyone),
            Some("https")
        );
        assert!(x_forwarded_hops(&headers(&[("x-forwarded-for", "1.2.3.4")])).is_empty());
    }

    #[test]
    fn hostile_forwarding_headers_are_bounded() {
        let long = ",".repeat(100_000);
        let map = headers(&[("forwarded", &long), ("x-forwarded-proto", &long)]);
        assert_eq!(forwarded_hops(&map).len(), MAX_HOPS);
        assert_eq!(x_forwarded_hops(&map).len(), MAX_HOPS);
    }
}
