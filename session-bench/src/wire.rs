//! A counting TCP proxy in front of Redis: what each library really sends to its store,
//! measured the same way for both, as bytes of commands on the wire.
//!
//! The servers of the accounting runs connect to Redis through it; it forwards both
//! directions unchanged and counts the bytes going to Redis (requests, not replies). That
//! includes everything a library sends: reads, writes, expiry, scripts, key names, framing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy: connect to [`url`](Self::url) instead of Redis.
pub struct WireCounter {
    url: String,
    sent: Arc<AtomicU64>,
}

impl WireCounter {
    /// Starts a proxy to the Redis at `redis_url` (`redis://[user@]host[:port][/db]`) on a
    /// thread of its own, so it shares no runtime with the load generator.
    pub fn start(redis_url: &str) -> Result<Self, String> {
        let upstream = host_port(redis_url);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let counter = Arc::clone(&counter);
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            let _ = forward(client, server, counter).await;
                        }
                    });
                }
            });
        });
        Ok(Self {
            url: with_host_port(redis_url, local),
            sent,
        })
    }

    /// The Redis URL that goes through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bytes sent to Redis through the proxy so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buffer).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            sent.fetch_add(n as u64, Ordering::SeqCst);
            server_write.write_all(&buffer[..n]).await?;
        }
    };
    let replies = async move { tokio::io::copy(&mut server_read, &mut client_write).await };
    let (a, b) = tokio::join!(requests, replies);
    a.and(b.map(drop))
}

/// `host:port` of a Redis URL (port 6379 when it names none).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    }
}

/// `url` with its host and port replaced by `addr`, keeping scheme, credentials and database.
fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let user = authority.rsplit_once('@').map(|(user, _)| user);
    let mut out = format!("{scheme}://");
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(&addr.to_string());
    if !path.is_empty() {
        out.push('/');
        out.push_str(path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_everything_but_the_address() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://u:p@cache/2"), "cache:6379");
        assert_eq!(
            with_host_port("redis://127.0.0.1:6379", addr),
            "redis://127.0.0.1:4000"
        );
        assert_eq!(
            with_host_port("redis://u:p@cache/2", addr),
            "redis://u:p@127.0.0.1:4000/2"
        );
    }
}
