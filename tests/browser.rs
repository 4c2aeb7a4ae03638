//! The shop example in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`). Without them these tests print why they skip
//! and pass, unless `SESSIONS_REQUIRE_SERVERS=1`, which makes that a failure.
//!
//! Each test serves the shop on a free port, starts its own `chromedriver`, and keeps
//! screenshots in `<target dir>/browser-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use session_core::store::MemoryStore;
use typed_sessions::shop;

/// One browser test at a time: two cores do not run several Chromiums well.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The shop on a free port, a running chromedriver, and the Chromium it drives.
struct Rig {
    base: String,
    driver: Child,
    driver_url: String,
    chromium: PathBuf,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Rig {
    /// Even when a test fails before closing its browsers: chromedriver's `/shutdown` quits
    /// every browser it started (killing chromedriver would leave them running).
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        let address = self.driver_url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "GET /shutdown HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        for _ in 0..50 {
            if matches!(self.driver.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Rig {
    /// `None` (with a printed reason) when Chromium or chromedriver is missing and not required.
    async fn start() -> Option<Rig> {
        let serial = ONE_AT_A_TIME.lock().await;
        let chromium = find_program(&["chromium", "chromium-browser"]);
        let chromedriver = find_program(&["chromedriver"]);
        let (chromium, chromedriver) = match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => (chromium, chromedriver),
            _ => {
                let reason = "chromium and chromedriver are not both on PATH (apt-get install chromium chromium-driver)";
                assert!(
                    !common::servers_required(),
                    "a headless browser is required (SESSIONS_REQUIRE_SERVERS=1): {reason}"
                );
                // Straight to stderr: the test harness captures `eprintln!` of passing tests.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping: {reason}; set SESSIONS_REQUIRE_SERVERS=1 to make this a failure"
                );
                return None;
            }
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = shop::app(Arc::new(MemoryStore::new()), common::key());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let rig = Rig {
            base: format!("http://{addr}"),
            driver,
            driver_url: format!("http://127.0.0.1:{port}"),
            chromium,
            _serial: serial,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(rig);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen on port {port} within 10 s");
    }

    /// A new browser with a fresh profile: its own cookie jar, like a new browser context.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,860",
                    "--no-first-run",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.driver_url)
            .await
            .expect("a Chromium session")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `<target dir>/browser-screenshots`, found from this test binary's own path
/// (`<target dir>/debug/deps/browser-...`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("browser-screenshots")
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

async fn exists(browser: &Client, css: &str) -> bool {
    !browser
        .find_all(Locator::Css(css))
        .await
        .unwrap()
        .is_empty()
}

async fn path_of(browser: &Client) -> String {
    browser.current_url().await.unwrap().path().to_owned()
}

/// Clicks what `css` finds and waits for the next page to load: WebDriver's click returns
/// without waiting for a form's navigation.
async fn click_and_wait(browser: &Client, css: &str) {
    browser
        .execute("window.__before_click = true", vec![])
        .await
        .unwrap();
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
    wait_for_new_page(browser).await;
}

/// Waits until the page marked with `window.__before_click` has been replaced and loaded.
async fn wait_for_new_page(browser: &Client) {
    for _ in 0..200 {
        let loaded = browser
            .execute(
                "return window.__before_click === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new page within 10 s");
}

async fn log_in(rig: &Rig, browser: &Client, name: &str, remember: bool) {
    browser.goto(&rig.url("/login")).await.unwrap();
    browser
        .find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    if remember {
        browser
            .find(Locator::Id("remember"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    click_and_wait(browser, "#login-submit").await;
    assert_eq!(path_of(browser).await, "/account");
    assert_eq!(text(browser, "#user").await, name);
}

/// A rig and a browser signed in as `name` (without "remember me"), or `None` when skipping.
async fn signed_in(name: &str) -> Option<(Rig, Client)> {
    let rig = Rig::start().await?;
    let browser = rig.browser().await;
    log_in(&rig, &browser, name, false).await;
    Some((rig, browser))
}

async fn add_to_cart(rig: &Rig, browser: &Client, slug: &str) {
    browser.goto(&rig.url("/")).await.unwrap();
    click_and_wait(browser, &format!("#product-{slug} button")).await;
    assert_eq!(path_of(browser).await, "/");
}

/// The cart page's lines, as (slug, quantity).
async fn cart_lines(rig: &Rig, browser: &Client) -> Vec<(String, u32)> {
    browser.goto(&rig.url("/cart")).await.unwrap();
    let mut lines = Vec::new();
    for row in browser.find_all(Locator::Css("tr.line")).await.unwrap() {
        let slug = row.attr("data-slug").await.unwrap().unwrap();
        let quantity = row
            .find(Locator::Css(".qty"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        lines.push((slug, quantity.parse().unwrap()));
    }
    lines
}

#[tokio::test]
async fn cart_survives_reloads_and_each_flash_shows_once() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let browser = rig.browser().await;

    log_in(&rig, &browser, "Ada", false).await;
    assert_eq!(text(&browser, "#flash").await, "Welcome, Ada.");
    browser.refresh().await.unwrap();
    assert!(!exists(&browser, "#flash").await, "the flash showed twice");

    add_to_cart(&rig, &browser, "sencha").await;
    assert_eq!(
        text(&browser, "#flash").await,
        "Added Sencha green tea to your cart."
    );
    add_to_cart(&rig, &browser, "teapot").await;
    assert_eq!(
        text(&browser, "#flash").await,
        "Added Cast-iron teapot to your cart."
    );
    assert_eq!(text(&browser, "#cart-count").await, "2");
    screenshot(&browser, "shop-catalogue").await;

    browser.refresh().await.unwrap();
    assert!(!exists(&browser, "#flash").await, "the flash showed twice");
    assert_eq!(text(&browser, "#cart-count").await, "2");

    let expected = vec![("sencha".to_owned(), 1), ("teapot".to_owned(), 1)];
    assert_eq!(cart_lines(&rig, &browser).await, expected);
    browser.refresh().await.unwrap();
    assert_eq!(cart_lines(&rig, &browser).await, expected);
    assert_eq!(text(&browser, "#total").await, "€61.50");
    screenshot(&browser, "shop-cart").await;

    browser.close().await.unwrap();
}

#[tokio::test]
async fn scripts_cannot_read_the_http_only_session_cookie() {
    let Some((_rig, browser)) = signed_in("Ada").await else {
        return;
    };

    let cookies = browser.get_all_cookies().await.unwrap();
    let sid = cookies
        .iter()
        .find(|c| c.name() == "sid")
        .expect("the browser holds the session cookie");
    assert_eq!(sid.http_only(), Some(true));
    let visible = browser
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    let visible = visible.as_str().unwrap();
    assert!(!visible.contains("sid="), "document.cookie = {visible:?}");
    assert!(
        !visible.contains(sid.value()),
        "document.cookie = {visible:?}"
    );

    browser.close().await.unwrap();
}

#[tokio::test]
async fn two_browser_contexts_are_two_independent_sessions() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let ada = rig.browser().await;
    let bob = rig.browser().await;

    log_in(&rig, &ada, "Ada", false).await;
    log_in(&rig, &bob, "Bob", false).await;
    add_to_cart(&rig, &ada, "sencha").await;
    add_to_cart(&rig, &bob, "cups").await;
    add_to_cart(&rig, &bob, "cups").await;

    assert_eq!(cart_lines(&rig, &ada).await, vec![("sencha".to_owned(), 1)]);
    assert_eq!(text(&ada, "#user").await, "Ada");
    assert_eq!(cart_lines(&rig, &bob).await, vec![("cups".to_owned(), 2)]);
    assert_eq!(text(&bob, "#user").await, "Bob");

    ada.close().await.unwrap();
    bob.close().await.unwrap();
}

#[tokio::test]
async fn signing_out_other_sessions_in_one_browser_logs_the_other_out() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    // One user in two browsers (a laptop and a phone).
    let laptop = rig.browser().await;
    let phone = rig.browser().await;
    log_in(&rig, &laptop, "Ada", false).await;
    log_in(&rig, &phone, "Ada", false).await;
    add_to_cart(&rig, &phone, "cups").await;

    laptop.goto(&rig.url("/account")).await.unwrap();
    let rows = laptop.find_all(Locator::Css("tr.session")).await.unwrap();
    assert_eq!(rows.len(), 2, "the account page lists both sessions");
    let mut current = 0;
    for row in &rows {
        if row.attr("data-current").await.unwrap().as_deref() == Some("true") {
            current += 1;
        }
    }
    assert_eq!(current, 1, "exactly one row is this browser");
    assert!(exists(&laptop, "#this-session").await);
    screenshot(&laptop, "shop-your-sessions").await;

    click_and_wait(&laptop, "#sign-out-others").await;
    assert_eq!(path_of(&laptop).await, "/account");
    assert_eq!(text(&laptop, "#flash").await, "Signed out 1 other session.");
    assert_eq!(
        laptop
            .find_all(Locator::Css("tr.session"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(exists(&laptop, "#no-other-sessions").await);

    // The phone's next navigation finds its session gone: logged out, cart empty.
    phone.goto(&rig.url("/account")).await.unwrap();
    assert_eq!(path_of(&phone).await, "/login");
    assert!(!exists(&phone, "#user").await);
    assert!(cart_lines(&rig, &phone).await.is_empty());
    // The laptop is still signed in.
    laptop.goto(&rig.url("/account")).await.unwrap();
    assert_eq!(text(&laptop, "#user").await, "Ada");

    laptop.close().await.unwrap();
    phone.close().await.unwrap();
}

/// Logs in, then "closes the browser": a new browser that gets back only the cookies that
/// outlive a browser session (those with an expiry). Returns that new browser on `/account`.
async fn reopen_after_login(rig: &Rig, remember: bool) -> Client {
    let browser = rig.browser().await;
    log_in(rig, &browser, "Ada", remember).await;
    let cookies = browser.get_all_cookies().await.unwrap();
    let sid = cookies.iter().find(|c| c.name() == "sid").unwrap();
    assert_eq!(
        sid.expires_datetime().is_some(),
        remember,
        "only \"remember me\" gives the cookie an expiry: {sid}"
    );
    browser.close().await.unwrap();

    let reopened = rig.browser().await;
    // Cookies can only be added for the page's own site.
    reopened.goto(&rig.url("/style.css")).await.unwrap();
    for cookie in cookies {
        if cookie.expires_datetime().is_some() {
            reopened.add_cookie(cookie).await.unwrap();
        }
    }
    reopened.goto(&rig.url("/account")).await.unwrap();
    reopened
}

#[tokio::test]
async fn without_remember_me_closing_the_browser_logs_out() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let reopened = reopen_after_login(&rig, false).await;
    assert_eq!(path_of(&reopened).await, "/login");
    assert!(!exists(&reopened, "#user").await);
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn with_remember_me_closing_the_browser_keeps_the_login() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let reopened = reopen_after_login(&rig, true).await;
    assert_eq!(path_of(&reopened).await, "/account");
    assert_eq!(text(&reopened, "#account-name").await, "Ada");
    assert!(text(&reopened, "#remembered").await.contains("30 days"));
    screenshot(&reopened, "shop-account-remembered").await;
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn after_logout_back_and_reload_show_no_private_data() {
    let Some((rig, browser)) = signed_in("Grace").await else {
        return;
    };
    add_to_cart(&rig, &browser, "oolong").await;
    assert_eq!(
        cart_lines(&rig, &browser).await,
        vec![("oolong".to_owned(), 1)]
    );
    browser.goto(&rig.url("/account")).await.unwrap();
    assert_eq!(text(&browser, "#account-name").await, "Grace");

    click_and_wait(&browser, "#logout").await;
    assert_eq!(path_of(&browser).await, "/");
    assert_eq!(text(&browser, "#flash").await, "You are signed out.");
    assert!(exists(&browser, "#login-link").await);

    // Back to the account page, then to the cart, each also reloaded.
    for expected_path in ["/login", "/cart"] {
        browser.back().await.unwrap();
        for _ in 0..2 {
            let source = browser.source().await.unwrap();
            assert!(!source.contains("Grace"), "private data after logout");
            assert!(!exists(&browser, "#user").await);
            assert!(!exists(&browser, "tr.line").await, "the cart after logout");
            assert_eq!(text(&browser, "#cart-count").await, "0");
            assert_eq!(path_of(&browser).await, expected_path);
            browser.refresh().await.unwrap();
        }
    }
    screenshot(&browser, "shop-after-logout-back").await;

    browser.close().await.unwrap();
}

/// Posts a form from the page with `fetch`, returning the response's status.
async fn post_status(browser: &Client, path: &str, body: &str) -> u16 {
    let status = browser
        .execute_async(
            "const [path, body, done] = arguments;
             fetch(path, { method: 'POST', body,
                           headers: { 'Content-Type': 'application/x-www-form-urlencoded' } })
               .then(r => done(r.status), e => done(String(e)));",
            vec![path.into(), body.into()],
        )
        .await
        .unwrap();
    status
        .as_u64()
        .unwrap_or_else(|| panic!("fetch failed: {status}")) as u16
}

#[tokio::test]
async fn a_form_post_without_its_csrf_token_is_refused_and_changes_nothing() {
    let Some((rig, browser)) = signed_in("Ada").await else {
        return;
    };
    browser.goto(&rig.url("/")).await.unwrap();

    // The page's own form, submitted by the browser without its token.
    browser
        .execute(
            "window.__before_click = true;
             const form = document.querySelector('#product-sencha form');
             form.querySelector('input[name=_csrf]').remove();
             form.submit();",
            vec![],
        )
        .await
        .unwrap();
    wait_for_new_page(&browser).await;
    assert_eq!(text(&browser, "h1").await, "This form has expired");
    assert_eq!(text(&browser, "#user").await, "Ada", "still signed in");
    screenshot(&browser, "shop-csrf-refused").await;

    // Replays of the same post: without a token, with a wrong one, and a logout without one.
    browser.goto(&rig.url("/")).await.unwrap();
    assert_eq!(post_status(&browser, "/cart/add", "slug=sencha").await, 403);
    assert_eq!(
        post_status(&browser, "/cart/add", "slug=sencha&_csrf=forged").await,
        403
    );
    assert_eq!(post_status(&browser, "/logout", "").await, 403);
    assert_eq!(post_status(&browser, "/cart/clear", "").await, 403);

    browser.refresh().await.unwrap();
    assert_eq!(text(&browser, "#cart-count").await, "0");
    assert_eq!(text(&browser, "#user").await, "Ada", "still signed in");
    assert!(cart_lines(&rig, &browser).await.is_empty());

    // The same form with its token works.
    add_to_cart(&rig, &browser, "sencha").await;
    assert_eq!(text(&browser, "#cart-count").await, "1");

    browser.close().await.unwrap();
}
