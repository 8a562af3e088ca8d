//! A real browser for the page tests: headless Chromium driven over WebDriver (chromedriver,
//! from Debian's `chromium-driver`; tests/run installs it), waits for what a page shows, and logging in through the
//! login page as a person does.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{free_port, wait, wait_port};

/// The chromedriver process (killed when dropped).
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A chromedriver and a Chromium session on it.
pub async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium-driver; tests/run does)");
    let driver = Driver(child);
    wait_port(port, Duration::from_secs(20));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=ja"],
        }),
    );
    // Two rustls crypto providers are linked into the tests (ring, and aws-lc-rs through the
    // WebDriver client): pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// Reloads until the page source contains `needle`.
pub async fn until_page_has(c: &Client, needle: &str, timeout: Duration) -> String {
    page_shows(c, needle, timeout, true).await
}

/// Waits (without reloading) until the page source contains `needle`: after a click, the next
/// page may still be loading.
pub async fn wait_source(c: &Client, needle: &str) -> String {
    page_shows(c, needle, Duration::from_secs(30), false).await
}

/// Waits until the page source contains `needle`, reloading before each look after the first
/// if `reload`.
async fn page_shows(c: &Client, needle: &str, timeout: Duration, reload: bool) -> String {
    let mut first = true;
    wait::until(&format!("the page to show {needle:?}"), timeout, || {
        let again = reload && !std::mem::take(&mut first);
        async move {
            if again {
                c.refresh().await.unwrap();
            }
            let src = c.source().await.unwrap_or_default();
            if src.contains(needle) {
                Ok(src)
            } else {
                Err(src)
            }
        }
    })
    .await
}

/// Types `text` into the field with id `id`.
pub async fn type_into(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no field #{id}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the form's submit button.
pub async fn submit(c: &Client) {
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("a submit button")
        .click()
        .await
        .unwrap();
}

/// Logs in through `{base}/login` with `token`, as a person does (the page, the field, the
/// button), and waits until the page after it has loaded.
pub async fn log_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    type_into(c, "token", token).await;
    submit(c).await;
    wait::until_true(
        "the login to lead away from /login",
        Duration::from_secs(30),
        || async {
            c.current_url()
                .await
                .is_ok_and(|u| !u.path().ends_with("/login"))
        },
    )
    .await;
}
