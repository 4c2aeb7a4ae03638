//! The memcached store's hand-written reply parser against a hostile server: a fake memcached
//! on a local socket answers every `gets` with chosen bytes. A reply with a huge or negative
//! length, a truncated reply, a wrong key or junk is an error, never a panic, never a hang and
//! never an allocation of the size the reply claims (a tracking allocator watches the largest
//! single allocation).

#![cfg(feature = "memcached")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use session_core::store::MemcachedStore;
use session_core::{SessionId, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The system allocator, remembering the largest single allocation since the last reset.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// What the fake server answers to a `gets`: `{key}` in it becomes the key asked for.
type Answer = Arc<std::sync::Mutex<Vec<u8>>>;

/// A fake memcached that answers `stats settings` properly and every `gets` with the current
/// answer, then closes the connection.
async fn fake_memcached() -> (String, Answer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answer: Answer = Arc::default();
    let shared = Arc::clone(&answer);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let answer = Arc::clone(&shared);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("stats") {
                        let _ = write
                            .write_all(b"STAT item_size_max 1048576\r\nEND\r\n")
                            .await;
                    } else if let Some(key) = line.strip_prefix("gets ") {
                        let template = answer.lock().unwrap().clone();
                        let reply = replace(&template, b"{key}", key.trim().as_bytes());
                        let _ = write.write_all(&reply).await;
                        return;
                    }
                }
            });
        }
    });
    (format!("memcache://{address}"), answer)
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Loads a session from a server answering `reply`; returns the result's text and the
/// largest single allocation made meanwhile.
async fn load_with(store: &MemcachedStore, answer: &Answer, reply: &[u8]) -> (String, usize) {
    *answer.lock().unwrap() = reply.to_vec();
    let key = SessionId::generate().unwrap().store_key();
    LARGEST.store(0, Ordering::Relaxed);
    let result = tokio::time::timeout(Duration::from_secs(5), store.load(&key))
        .await
        .expect("a hostile reply made the load hang");
    (format!("{result:?}"), LARGEST.load(Ordering::Relaxed))
}

/// Far below every length the hostile replies claim.
const ALLOCATION_LIMIT: usize = 8 << 20;

#[tokio::test]
async fn hostile_replies_are_errors_without_allocating_what_they_claim() {
    let (url, answer) = fake_memcached().await;
    let store = MemcachedStore::connect(&url).await.unwrap();
    let item = br#"{"v":1,"created":1700000000000,"expires":9999999999999,"fields":{"views":"3"}}"#;
    let valid = [
        format!("VALUE {{key}} 0 {} 7\r\n", item.len()).into_bytes(),
        item.to_vec(),
        b"\r\nEND\r\n".to_vec(),
    ]
    .concat();
    let (ok, _) = load_with(&store, &answer, &valid).await;
    assert!(
        ok.starts_with("Ok(Some("),
        "the fake server's valid reply: {ok}"
    );

    let hostile: &[(&str, &[u8])] = &[
        (
            "a length near the limit, no data",
            b"VALUE {key} 0 1000000000 1\r\n",
        ),
        (
            "a length past usize",
            b"VALUE {key} 0 99999999999999999999999 1\r\n",
        ),
        ("a negative length", b"VALUE {key} 0 -5 1\r\nabc\r\nEND\r\n"),
        ("a truncated value", b"VALUE {key} 0 100 1\r\nabc"),
        ("a value without END", b"VALUE {key} 0 3 1\r\nabc\r\n"),
        (
            "a value overrunning its length",
            b"VALUE {key} 0 2 1\r\nabc\r\nEND\r\n",
        ),
        ("a wrong key", b"VALUE other 0 3 1\r\nabc\r\nEND\r\n"),
        ("a missing cas", b"VALUE {key} 0 3\r\nabc\r\nEND\r\n"),
        ("a line without CRLF", b"VALUE {key} 0 3 1"),
        ("a server error", b"SERVER_ERROR out of memory\r\n"),
        ("junk", b"\xff\xfe\x00garbage\r\n"),
        ("nothing", b""),
        (
            "a value that is not a record",
            b"VALUE {key} 0 3 1\r\nabc\r\nEND\r\n",
        ),
    ];
    for (what, reply) in hostile {
        let (result, largest) = load_with(&store, &answer, reply).await;
        assert!(result.starts_with("Err("), "{what}: {result}");
        assert!(
            largest < ALLOCATION_LIMIT,
            "{what}: allocated {largest} bytes at once for a reply of {} bytes",
            reply.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary `VALUE` headers and data, cut anywhere: an error or a record, never a panic,
    /// a hang or a large allocation.
    #[test]
    fn arbitrary_replies_never_panic_or_allocate_their_claim(
        key in prop_oneof![Just("{key}".to_owned()), "[a-z]{0,8}"],
        numbers in proptest::collection::vec(prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (0u32..64).prop_map(|n| n.to_string()),
            Just(String::new()),
        ], 0..5),
        data in proptest::collection::vec(any::<u8>(), 0..64),
        tail in prop_oneof![Just(&b"\r\nEND\r\n"[..]), Just(&b"\r\n"[..]), Just(&b""[..])],
        cut in any::<proptest::sample::Index>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (url, answer) = fake_memcached().await;
            let store = MemcachedStore::connect(&url).await.unwrap();
            let mut reply = format!("VALUE {key} {}\r\n", numbers.join(" ")).into_bytes();
            reply.extend_from_slice(&data);
            reply.extend_from_slice(tail);
            reply.truncate(cut.index(reply.len() + 1));
            let (_, largest) = load_with(&store, &answer, &reply).await;
            prop_assert!(largest < ALLOCATION_LIMIT, "allocated {} bytes at once", largest);
            Ok(())
        })?;
    }
}
