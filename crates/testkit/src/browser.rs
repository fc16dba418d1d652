//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/setup-browser.sh`), for the console's tests: open a page, run a
//! script in it, wait for what it shows, save a screenshot. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One browser session; the driver is killed when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts `chromedriver` on a spare port and a headless session of `width` × `height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a spare port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (scripts/setup-browser.sh installs it)");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut browser = Browser { driver, address, session: String::new() };
        let started = Instant::now();
        while exchange(address, "GET", "/status", None, Duration::from_secs(1)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let answer = browser.post_raw("/session", &capabilities);
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    fn post_raw(&self, path: &str, body: &Value) -> Value {
        let text = body.to_string();
        let (status, answer) = exchange(self.address, "POST", path, Some(&text), COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("chromedriver {path}: {e}"));
        let value: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        assert_eq!(status, 200, "chromedriver {path}: {answer}");
        value
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let text = body.map(Value::to_string);
        let target = format!("/session/{}{path}", self.session);
        let (status, answer) =
            exchange(self.address, method, &target, text.as_deref(), COMMAND_TIMEOUT)?;
        let value: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", value["value"]));
        }
        Ok(value["value"].clone())
    }

    /// Loads `url`.
    pub fn open(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url }))).expect("open the page");
    }

    /// Runs `script` (a function body; `return` what you want) in the page.
    pub fn run(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.run("return document.body.innerText;").as_str().unwrap_or_default().to_string()
    }

    /// The visible text of the first element matching `selector` (empty if none).
    pub fn text_of(&self, selector: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            json!(selector)
        );
        self.run(&script).as_str().unwrap_or_default().to_string()
    }

    /// Clicks the first element matching `selector`.
    pub fn click(&self, selector: &str) {
        let script = format!(
            "const e = document.querySelector({}); if (!e) return false; e.click(); return true;",
            json!(selector)
        );
        assert_eq!(self.run(&script), json!(true), "nothing to click at {selector}");
    }

    /// Waits (up to `limit`) until `script` returns true; panics with the page's text if not.
    pub fn wait_until(&self, what: &str, script: &str, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.run(script) == json!(true) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "timed out waiting until {what}; the page says:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the page's text contains `text`.
    pub fn wait_for_text(&self, text: &str, limit: Duration) {
        let script = format!("return document.body.innerText.includes({});", json!(text));
        self.wait_until(&format!("the page shows `{text}`"), &script, limit);
    }

    /// Moves the console to `hash` (`#/in-doubt`) and waits (up to `limit`) until it has drawn
    /// `page` (the console marks `body[data-loaded]` when a page is drawn).
    pub fn show_page(&self, hash: &str, page: &str, limit: Duration) {
        self.run(&format!(
            "delete document.body.dataset.loaded; location.hash = {}; return true;",
            json!(hash)
        ));
        self.wait_until(
            &format!("the {page} page is drawn"),
            &format!("return document.body.dataset.loaded === {};", json!(page)),
            limit,
        );
    }

    /// Where a console test saves its screenshots: `docs/console/` when asked
    /// (`CONCORD_UPDATE_SCREENSHOTS=1`, how the committed ones were made), else the build
    /// directory, so a test run changes nothing tracked.
    pub fn screenshot_dir() -> std::path::PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        if std::env::var("CONCORD_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            root.join("docs/console")
        } else {
            root.join("target/console-screenshots")
        }
    }

    /// Saves a PNG of the window at `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.command("GET", "/screenshot", None).expect("screenshot");
        let png = decode_base64(encoded.as_str().expect("base64 text")).expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// One HTTP/1.1 exchange with chromedriver, which keeps connections open whatever the client
/// asks: the answer is read by its `Content-Length`, not to the connection's end.
fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("chromedriver: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    // Screenshots are the largest answers: a few hundred kilobytes.
    if length > 64 << 20 {
        return Err(format!("an answer of {length} bytes"));
    }
    let mut answer = vec![0; length];
    reader.read_exact(&mut answer).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= if *c == b'=' { 0 } else { value(*c)? } << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad.min(2)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(super::decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(super::decode_base64("aA==").unwrap(), b"h");
        assert!(super::decode_base64("a*==").is_none());
    }
}
