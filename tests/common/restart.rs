//! What the restart tests of each store do with the counter app before and after the restart.

use super::Client;

/// Three visits and a cart item on a fresh client; returns the session cookie.
pub async fn visit_three_times_and_add_tea(client: &mut Client) -> String {
    for n in 1..=3 {
        assert_eq!(client.get("/").await.body, format!("You visited {n} times"));
    }
    assert_eq!(client.post("/cart", "item=tea").await.status, 303);
    client.cookie.clone().expect("the app set a session cookie")
}

/// After the restart, the session of `cookie` carries on where
/// [`visit_three_times_and_add_tea`] left it.
pub async fn assert_visits_carry_on(client: &mut Client, cookie: String) {
    client.cookie = Some(cookie);
    assert_eq!(client.get("/peek").await.body, "views: 3");
    assert_eq!(client.get("/").await.body, "You visited 4 times");
    assert_eq!(client.get("/").await.body, "You visited 5 times");
    assert_eq!(client.get("/cart").await.body, "tea\n");
}

/// A visit, a login and a logout on a fresh client; returns the cookie that was logged in.
pub async fn log_in_and_out(client: &mut Client) -> String {
    client.get("/").await;
    assert_eq!(client.post("/login", "name=ada").await.status, 303);
    assert_eq!(client.get("/me").await.body, "user: ada");
    let logged_in = client.cookie.clone().expect("the app set a session cookie");
    assert_eq!(client.post("/logout", "").await.status, 303);
    logged_in
}

/// After the restart, replaying the cookie [`log_in_and_out`] returned finds nothing.
pub async fn assert_logged_out(client: &mut Client, logged_in: String) {
    client.cookie = Some(logged_in);
    assert_eq!(client.get("/me").await.body, "user: none");
    assert_eq!(client.get("/peek").await.body, "views: 0");
}
