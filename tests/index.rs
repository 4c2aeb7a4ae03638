//! Sessions by user, over HTTP, on every store: the counter app's `GET /sessions` and
//! `POST /sessions/revoke-others`, the layer's `SessionIndex` from outside any request,
//! destroy and expiry, a thousand sessions of one user, a login racing "revoke all", and two
//! app instances on one store.
#![cfg(all(
    feature = "file",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb"
))]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{stores, Client};
use session_core::{SessionLayer, Store};
use typed_sessions::counter::{self, User, Visit};

/// A user name no other test (or earlier run on the same server) uses.
fn user() -> String {
    let id = session_core::SessionId::generate().unwrap().store_key();
    format!("user-{}", &id.as_str()[..16])
}

/// The counter's user of that name, as the index is keyed.
fn as_user(name: &str) -> User {
    User {
        name: name.to_owned(),
    }
}

fn layer(store: Arc<dyn Store>) -> SessionLayer {
    counter::layer(store, common::key())
}

async fn logged_in(layer: &SessionLayer, name: &str) -> Client {
    let mut client = Client::new(counter::app_with(layer.clone()));
    let login = client.post("/login", &format!("name={name}")).await;
    assert_eq!(login.status, 303, "login redirects");
    assert_eq!(client.get("/me").await.body, format!("user: {name}"));
    client
}

/// The lines of `GET /sessions`.
async fn sessions(client: &mut Client) -> Vec<String> {
    let reply = client.get("/sessions").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body.lines().map(str::to_owned).collect()
}

async fn three_clients_then_revoke_others(store: Arc<dyn Store>) {
    let layer = layer(store);
    let name = user();
    let mut first = logged_in(&layer, &name).await;
    let mut second = logged_in(&layer, &name).await;
    let mut third = logged_in(&layer, &name).await;
    // Someone else's session is never listed.
    let mut stranger = logged_in(&layer, &user()).await;

    let listed = sessions(&mut first).await;
    assert_eq!(listed.len(), 3, "three sessions of {name}: {listed:#?}");
    assert_eq!(
        listed.iter().filter(|line| line.starts_with('*')).count(),
        1,
        "exactly one is marked current: {listed:#?}"
    );
    let from_second = sessions(&mut second).await;
    assert_eq!(from_second.len(), 3);
    let marked = |lines: &[String]| {
        lines
            .iter()
            .find(|line| line.starts_with('*'))
            .cloned()
            .unwrap()
    };
    assert_ne!(
        marked(&listed).split(" session ").nth(1),
        marked(&from_second).split(" session ").nth(1),
        "each client sees its own session marked"
    );
    for line in &listed {
        assert!(
            line.contains(" created 20") && line.contains(" expires 20") && line.contains("Z "),
            "a line with RFC 3339 times: {line}"
        );
    }

    let revoke = first.post("/sessions/revoke-others", "").await;
    assert_eq!(revoke.status, 303);
    assert_eq!(revoke.headers.get("location").unwrap(), "/sessions");
    assert_eq!(second.get("/me").await.body, "user: none");
    assert_eq!(third.get("/me").await.body, "user: none");
    assert_eq!(first.get("/me").await.body, format!("user: {name}"));
    assert_eq!(sessions(&mut first).await.len(), 1);
    assert!(stranger.get("/me").await.body.starts_with("user: user-"));

    let mut anonymous = Client::new(counter::app_with(layer.clone()));
    assert_eq!(anonymous.get("/sessions").await.body, "user: none");
}

async fn logout_and_expiry_leave_no_live_entry(store: Arc<dyn Store>) {
    let layer = layer(store.clone());
    let name = user();
    let mut first = logged_in(&layer, &name).await;
    let mut second = logged_in(&layer, &name).await;
    assert_eq!(sessions(&mut first).await.len(), 2);
    assert_eq!(second.post("/logout", "").await.status, 303);
    assert_eq!(
        sessions(&mut first).await.len(),
        1,
        "logout removes the session"
    );

    // A login under another name moves the session to the other entry.
    let other = user();
    let mut third = logged_in(&layer, &name).await;
    third.post("/login", &format!("name={other}")).await;
    assert_eq!(sessions(&mut first).await.len(), 1, "the third moved away");
    assert_eq!(sessions(&mut third).await.len(), 1);

    // Sessions that expire leave the listing without anyone deleting them.
    // Long enough for two logins on the slowest store on a busy machine.
    let short = counter::layer(store, common::key()).with_idle_timeout(Duration::from_secs(4));
    let expiring = user();
    logged_in(&short, &expiring).await;
    logged_in(&short, &expiring).await;
    let index = short.sessions();
    assert_eq!(
        index
            .count(Visit::user_index(), &as_user(&expiring))
            .await
            .unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        index
            .count(Visit::user_index(), &as_user(&expiring))
            .await
            .unwrap(),
        0,
        "expired sessions are not listed"
    );
}

async fn a_thousand_sessions_list_in_one_call(store: Arc<dyn Store>, label: &str) {
    let layer = layer(store);
    let name = user();
    let app = counter::app_with(layer.clone());
    let started = Instant::now();
    let mut logins = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (app, name) = (app.clone(), name.clone());
        logins.spawn(async move {
            for _ in (worker..1000).step_by(16) {
                let reply = common::send(
                    &app,
                    common::post_form("/login", &format!("name={name}"), None),
                )
                .await;
                assert_eq!(reply.status, 303);
            }
        });
    }
    while let Some(done) = logins.join_next().await {
        done.unwrap();
    }
    let created = started.elapsed();

    let index = layer.sessions();
    let started = Instant::now();
    let listed = index
        .list(Visit::user_index(), &as_user(&name))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(listed.len(), 1000);
    assert!(listed
        .iter()
        .all(|s| s.data.user.as_ref().map(|u| &*u.name) == Some(&*name)));
    assert!(
        listed.iter().all(|s| !s.current),
        "no request, no current session"
    );
    println!(
        "{label}: 1000 logins in {:.0} ms; listing 1000 sessions of one user took {:.1} ms",
        created.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3
    );
    assert_eq!(
        index
            .revoke_all(Visit::user_index(), &as_user(&name))
            .await
            .unwrap(),
        1000
    );
    assert_eq!(
        index
            .count(Visit::user_index(), &as_user(&name))
            .await
            .unwrap(),
        0
    );
}

async fn a_login_racing_revoke_all_never_revives_a_revoked_session(store: Arc<dyn Store>) {
    let layer = layer(store);
    let name = user();
    let index = layer.sessions();
    let mut before = Vec::new();
    for _ in 0..4 {
        before.push(logged_in(&layer, &name).await);
    }
    let app = counter::app_with(layer.clone());
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, name) = (app.clone(), name.clone());
        racing.spawn(async move {
            let mut client = Client::new(app);
            client.post("/login", &format!("name={name}")).await;
            client
        });
    }
    let revoked = index
        .revoke_all(Visit::user_index(), &as_user(&name))
        .await
        .unwrap();
    let mut after = Vec::new();
    while let Some(client) = racing.join_next().await {
        after.push(client.unwrap());
    }
    assert!(
        revoked >= 4,
        "every session live before the call is revoked ({revoked})"
    );
    for client in &mut before {
        assert_eq!(
            client.get("/me").await.body,
            "user: none",
            "revoked stays revoked"
        );
    }
    // A racing login either was revoked (logged out) or survived and is listed: a live
    // session is never missing from the index.
    let mut alive = 0;
    for client in &mut after {
        if client.get("/me").await.body == format!("user: {name}") {
            alive += 1;
        }
    }
    assert_eq!(
        index
            .count(Visit::user_index(), &as_user(&name))
            .await
            .unwrap(),
        alive
    );
    index
        .revoke_all(Visit::user_index(), &as_user(&name))
        .await
        .unwrap();
    for client in &mut after {
        assert_eq!(client.get("/me").await.body, "user: none");
    }
}

/// Two instances of the app on one store (each with its own connection): a revocation on one
/// is seen by the other at its next request.
async fn revocation_reaches_another_instance(one: Arc<dyn Store>, two: Arc<dyn Store>) {
    let (layer_one, layer_two) = (layer(one), layer(two));
    let name = user();
    let mut here = logged_in(&layer_one, &name).await;
    let mut there = logged_in(&layer_two, &name).await;
    assert_eq!(
        sessions(&mut here).await.len(),
        2,
        "both instances index into one store"
    );
    here.post("/sessions/revoke-others", "").await;
    assert_eq!(there.get("/me").await.body, "user: none");
    assert_eq!(here.get("/me").await.body, format!("user: {name}"));
}

stores::on_every_store! {
    three_clients_list_three_sessions_and_revoke_others_logs_two_out =>
        |store| three_clients_then_revoke_others(store).await;
    logout_login_and_expiry_keep_the_listing_true =>
        |store| logout_and_expiry_leave_no_live_entry(store).await;
    a_thousand_sessions_of_one_user_list_in_one_call =>
        |store, name| a_thousand_sessions_list_in_one_call(store, name).await;
    a_login_racing_revoke_all_never_revives_a_revoked_session =>
        |store| super::a_login_racing_revoke_all_never_revives_a_revoked_session(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_redis_instance_ends_the_session_on_the_other() {
    let (Some(one), Some(two)) = (stores::redis().await, stores::redis().await) else {
        return;
    };
    revocation_reaches_another_instance(one, two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_redis_cluster_instance_ends_the_session_on_the_other() {
    let (Some(one), Some(two)) = (stores::redis_cluster().await, stores::redis_cluster().await)
    else {
        return;
    };
    revocation_reaches_another_instance(one, two).await;
}

/// The instance that revokes never serves the session again, even from its cache; another
/// instance's cache serves it at most for its staleness bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_never_serves_a_session_its_own_instance_revoked() {
    let (Some(one), Some(two)) = (stores::cached_redis().await, stores::cached_redis().await)
    else {
        return;
    };
    let (layer_one, layer_two) = (layer(one), layer(two));
    let name = user();
    let mut revoker = logged_in(&layer_one, &name).await;
    let mut same_instance = logged_in(&layer_one, &name).await;
    let mut other_instance = logged_in(&layer_two, &name).await;
    // Both now cached where they were used.
    assert_eq!(same_instance.get("/me").await.body, format!("user: {name}"));
    revoker.post("/sessions/revoke-others", "").await;
    assert_eq!(same_instance.get("/me").await.body, "user: none");
    // The cache in test `stores::cached_redis` is bounded at 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(other_instance.get("/me").await.body, "user: none");
}

/// A store that keeps no indexes is refused when the program has indexed fields, unless the
/// layer is told to keep none.
#[test]
fn a_store_without_indexes_is_refused_at_check() {
    let store: Arc<dyn Store> = Arc::new(common::BareStore::default());
    let error = SessionLayer::from_arc(store.clone(), common::key())
        .check()
        .unwrap_err();
    assert!(
        error.to_string().contains("keeps no session indexes"),
        "{error}"
    );
    assert!(SessionLayer::from_arc(store, common::key())
        .without_indexes()
        .check()
        .is_ok());
}

/// One session revoked by its handle, from outside any request: only that one ends, and a
/// second revocation finds nothing. The listed data is the user's struct, or a chosen one.
#[tokio::test]
async fn one_session_is_revoked_by_its_handle() {
    let layer = layer(Arc::new(session_core::store::MemoryStore::new()));
    let name = user();
    let mut kept = logged_in(&layer, &name).await;
    let mut revoked = logged_in(&layer, &name).await;
    revoked.post("/cart", "item=tea").await;
    let index = layer.sessions();
    // Listed as a struct of the test's own, which shares the counter's `cart` key.
    let listed = index
        .list_as::<CartOnly, _, _>(Visit::user_index(), &as_user(&name))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let with_tea = listed
        .iter()
        .find(|s| s.data.cart == ["tea"])
        .expect("the session with tea is listed");
    assert!(with_tea.created_at <= with_tea.last_used && with_tea.last_used < with_tea.expires_at);
    assert!(index.revoke(&with_tea.session).await.unwrap());
    assert!(
        !index.revoke(&with_tea.session).await.unwrap(),
        "already gone"
    );
    assert_eq!(revoked.get("/me").await.body, "user: none");
    assert_eq!(kept.get("/me").await.body, format!("user: {name}"));
    assert_eq!(
        index
            .count(Visit::user_index(), &as_user(&name))
            .await
            .unwrap(),
        1
    );
}

/// The part of the counter's session the test above reads.
#[derive(session_core::Session)]
struct CartOnly {
    cart: Vec<String>,
}
