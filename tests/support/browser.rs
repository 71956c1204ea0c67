//! A real headless browser for tests: Debian's `chromium`, driven over
//! W3C WebDriver (https://www.w3.org/TR/webdriver2/) by `chromedriver`
//! (package `chromium-driver`), with plain HTTP requests.
//!
//! [`Browser::start`] says why it cannot run (no chromium or chromedriver on
//! `PATH`); [`skip`] turns that into one printed line, or a failure when
//! `HIVEMESH_REQUIRE_BROWSER_TESTS=1` (set in `.ci/run`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium and its driver, or why not.
pub fn available() -> Result<(PathBuf, PathBuf), String> {
    let chromium = on_path(&["chromium", "chromium-browser"])
        .ok_or("no chromium on PATH (apt-get install chromium chromium-driver)")?;
    let driver =
        on_path(&["chromedriver"]).ok_or("no chromedriver on PATH (apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// True (after one printed line) when the browser tests cannot run here;
/// panics instead when `HIVEMESH_REQUIRE_BROWSER_TESTS=1`.
pub fn skip(test: &str) -> bool {
    let Err(why) = available() else { return false };
    if std::env::var("HIVEMESH_REQUIRE_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: a browser is required (HIVEMESH_REQUIRE_BROWSER_TESTS=1) but {why}");
    }
    eprintln!("skipping {test}: {why}");
    true
}

/// One chromedriver process and one browser session in it; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless chromium
    /// session with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Self {
        let (chromium, driver_path) = available().expect("a browser (call skip first)");
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self { driver, base, session: String::new(), http };
        browser.wait_ready().await;
        browser.session = browser.new_session(&chromium, width, height).await;
        browser
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match self.http.get(format!("{}/status", self.base)).send().await {
                Ok(response) => {
                    response.json::<Value>().await.ok().is_some_and(|v| v["value"]["ready"] == true)
                }
                Err(_) => false,
            };
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_session(&self, chromium: &Path, width: u32, height: u32) -> String {
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        } } });
        let answer = self.call(reqwest::Method::POST, "/session", Some(capabilities)).await;
        answer["sessionId"].as_str().expect("a session id").to_string()
    }

    /// One WebDriver command; returns its `value`, panics on an error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.expect("webdriver json");
        assert!(status.is_success(), "{method} {path}: {status} {body:#}");
        body["value"].clone()
    }

    async fn session_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    /// Navigates to `url` (returns once the page has loaded).
    pub async fn open(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.session_call(reqwest::Method::POST, "/execute/sync", Some(body)).await
    }

    /// Polls `script` (with `args`) until it returns something truthy (not null, false,
    /// 0 or ""), for up to `limit`; returns that value, or panics with the
    /// page's text.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText", json!([])).await;
                panic!("the page never showed {what}; it reads:\n{}", text.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string()
    }

    /// Types `text` into the element `css` selects, as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Clears the form field `css` selects.
    pub async fn clear(&self, css: &str) {
        let id = self.element(css).await;
        self.session_call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.session_call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_call(reqwest::Method::GET, "/screenshot", None).await;
        base64_decode(encoded.as_str().expect("base64 text"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes chromium (a killed driver would leave it
        // running); a plain blocking request, as drop cannot await.
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://").to_string();
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648 §4), padding allowed; panics on anything else.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_rfc4648_vectors() {
    for (text, plain) in [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar")] {
        assert_eq!(base64_decode(text), plain.as_bytes(), "{text}");
    }
}
