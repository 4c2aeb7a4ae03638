//! The load generator: hyper 1 HTTP/1.1 client connections over loopback, kept alive, each
//! sending one request at a time for a fixed time (or until a shared request budget is spent).
//!
//! It runs on the benchmark's single-threaded runtime, so it uses one core and leaves the other
//! to the server. Every request's latency (send to last body byte) is recorded in
//! microseconds.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, COOKIE, HOST, SET_COOKIE};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive connection and the cookie its requests carry.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    cookie: Option<HeaderValue>,
}

impl Conn {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr, cookie: Option<&str>) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let cookie = cookie
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(io::Error::other)?;
        Ok(Self { sender, cookie })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, path: &'static str) -> io::Result<Answer> {
        let mut request = Request::get(Uri::from_static(path))
            .header(HOST, "127.0.0.1")
            .body(Empty::new())
            .map_err(io::Error::other)?;
        if let Some(cookie) = &self.cookie {
            request.headers_mut().insert(COOKIE, cookie.clone());
        }
        self.sender.ready().await.map_err(io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok(Answer {
            status,
            set_cookie,
            body,
        })
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The `name=value` part of the first `Set-Cookie`, if any.
    pub set_cookie: Option<String>,
    pub body: Bytes,
}

/// One request on a fresh connection: for setup and bookkeeping, never timed.
impl Answer {
    /// Whether the body is what the handlers answer for a session they did not find.
    pub fn shows_a_new_session(&self) -> bool {
        self.body == "You visited 1 times" || self.body == "views: 0"
    }
}

pub async fn fetch(
    addr: SocketAddr,
    path: &'static str,
    cookie: Option<&str>,
) -> io::Result<Answer> {
    Conn::open(addr, cookie).await?.send(path).await
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// After this long (requests in flight then are finished and counted).
    Time(Duration),
    /// After this many requests in all.
    Requests(u64),
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct RunResult {
    /// Successful (2xx) responses.
    pub requests: u64,
    /// Failed requests and non-2xx responses.
    pub errors: u64,
    /// Responses that carried a `Set-Cookie`.
    pub set_cookies: u64,
    /// Answers showing a session the request did not find: `You visited 1 times` or
    /// `views: 0`. From a returning visitor that means its cookie's session was lost.
    pub fresh: u64,
    pub elapsed: Duration,
    /// Latency of each successful request, in microseconds, sorted.
    pub latencies: Vec<u32>,
}

impl RunResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub fn quantile(&self, q: f64) -> u32 {
        if self.latencies.is_empty() {
            return 0;
        }
        let rank = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Drives every connection in `conns` with requests for `path` until `limit`. Connections
/// that fail are dropped from `conns`.
pub async fn run(conns: &mut Vec<Conn>, path: &'static str, limit: Limit) -> RunResult {
    let budget = Arc::new(AtomicU64::new(match limit {
        Limit::Time(_) => u64::MAX,
        Limit::Requests(n) => n,
    }));
    let start = Instant::now();
    let deadline = match limit {
        Limit::Time(duration) => Some(start + duration),
        Limit::Requests(_) => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns.drain(..) {
        let budget = budget.clone();
        tasks.spawn(async move {
            let mut result = RunResult::default();
            let mut broken = false;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let sent = Instant::now();
                match conn.send(path).await {
                    Ok(answer) if (200..300).contains(&answer.status) => {
                        let micros = sent.elapsed().as_micros();
                        result
                            .latencies
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                        result.requests += 1;
                        result.set_cookies += u64::from(answer.set_cookie.is_some());
                        result.fresh += u64::from(answer.shows_a_new_session());
                    }
                    Ok(_) => result.errors += 1,
                    Err(_) => {
                        result.errors += 1;
                        broken = true;
                        break;
                    }
                }
            }
            (result, (!broken).then_some(conn))
        });
    }
    let mut total = RunResult::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok((result, conn)) = joined else {
            total.errors += 1;
            continue;
        };
        total.requests += result.requests;
        total.errors += result.errors;
        total.set_cookies += result.set_cookies;
        total.fresh += result.fresh;
        total.latencies.extend(result.latencies);
        conns.extend(conn);
    }
    total.elapsed = start.elapsed();
    total.latencies.sort_unstable();
    total
}
