//! Which test servers are there, and so which store tests really ran.
//!
//! A store test whose server is absent prints a line and returns, which the harness counts as
//! passed: a plain `cargo test --workspace` on a machine without servers reports much the same
//! numbers as one with all of them. This test says in one place which servers were absent and
//! which test files therefore skipped their store tests. With `SESSIONS_REQUIRE_SERVERS=1` (as
//! CI sets it) an absent server fails it.

mod common;

use std::time::Duration;

/// A server the tests use: its name, the variable that moves it, its default address, and
/// the test files that skip (some or all of their tests) without it.
struct TestServer {
    name: &'static str,
    variable: &'static str,
    default: &'static str,
    skipped: &'static str,
}

const SERVERS: &[TestServer] = &[
    TestServer {
        name: "PostgreSQL",
        variable: "SESSION_TEST_POSTGRES_URL",
        default: "postgres://postgres@127.0.0.1:5432/test",
        skipped: "store_postgres, postgres_faults, concurrency_stores, logout_race, counter, express_interop, store_express",
    },
    TestServer {
        name: "MySQL/MariaDB",
        variable: "SESSION_TEST_MYSQL_URL",
        default: "mysql://root@127.0.0.1:3306/test",
        skipped: "store_mysql, concurrency_stores, logout_race, counter",
    },
    TestServer {
        name: "Redis",
        variable: "SESSION_TEST_REDIS_URL",
        default: "redis://127.0.0.1:6379",
        skipped: "store_redis, store_cached, redis_outage, concurrency_stores, logout_race, express_interop, store_express",
    },
    TestServer {
        name: "Redis Cluster",
        variable: "SESSION_TEST_REDIS_CLUSTER",
        default: "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        skipped: "store_redis_cluster, scale_out, concurrency_stores, logout_race",
    },
    TestServer {
        name: "memcached",
        variable: "SESSION_TEST_MEMCACHED_URL",
        default: "memcache://127.0.0.1:11211",
        skipped: "store_memcached, concurrency_stores, logout_race",
    },
];

/// The `host:port`s a URL names (several for a cluster).
fn addresses(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    hosts.split(',').map(str::to_owned).collect()
}

async fn reachable(address: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn test_servers_present_or_their_store_tests_reported_skipped() {
    let mut absent = Vec::new();
    for server in SERVERS {
        let url = std::env::var(server.variable).unwrap_or_else(|_| server.default.to_owned());
        let mut down = Vec::new();
        for address in addresses(&url) {
            if !reachable(&address).await {
                down.push(address);
            }
        }
        if !down.is_empty() {
            absent.push((server, down));
        }
    }
    if absent.is_empty() {
        return;
    }
    let mut summary = String::from(
        "\n==== STORE TESTS SKIPPED, NOT PASSED: these test servers are absent ====\n",
    );
    for (server, down) in &absent {
        summary.push_str(&format!(
            "  {} (nothing answers at {}; set {}): tests in {} returned without running\n",
            server.name,
            down.join(", "),
            server.variable,
            server.skipped
        ));
    }
    summary.push_str(
        "  Start them with `bash .ci/services`; SESSIONS_REQUIRE_SERVERS=1 makes a missing server a failure.\n\
         =========================================================================\n",
    );
    assert!(!common::servers_required(), "{summary}");
    // Straight to stderr: the harness captures the output of passing tests.
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(summary.as_bytes());
}
