//! The cookbook's "testing a session flow": the counter app driven by `axum-test`'s
//! `TestServer`, which keeps cookies between requests like a browser.

use std::sync::Arc;

use axum_test::TestServer;
use session_core::store::MemoryStore;
use session_core::Key;
use typed_sessions::counter;

#[tokio::test]
async fn login_cart_flash_and_logout_with_a_cookie_keeping_client() {
    let app = counter::app(Arc::new(MemoryStore::new()), Key::generate().unwrap());
    let server = TestServer::builder().save_cookies().build(app).unwrap();

    server.get("/").await.assert_text("You visited 1 times");
    server.get("/").await.assert_text("You visited 2 times");
    server
        .post("/login")
        .form(&[("name", "ada")])
        .await
        .assert_status_see_other();
    server
        .get("/flash")
        .await
        .assert_text("flash: Welcome, ada");
    server.get("/flash").await.assert_text("flash: none");
    server.get("/me").await.assert_text("user: ada");
    server.post("/cart").form(&[("item", "tea")]).await;
    server.get("/cart").await.assert_text("tea\n");
    server.post("/logout").await.assert_status_see_other();
    server.get("/flash").await.assert_text("flash: Signed out");
    server.get("/me").await.assert_text("user: none");
    server.get("/").await.assert_text("You visited 1 times");
}
