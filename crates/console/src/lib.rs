//! The web console every Concord service serves at `/ui` (the coordinator's metrics port,
//! `concord db serve`, `concord saga serve`).
//!
//! The pages are plain HTML, CSS and JavaScript, embedded in the binary with `include_str!`:
//! nothing to build, nothing to fetch at run time. They hold no data and no secret, so `/ui`
//! is served to anyone; everything they show comes from the service's documented JSON APIs,
//! called with the bearer token the user types in (kept in the tab's `sessionStorage` only), so
//! the console can show and do exactly what that token's role may — no more.
//!
//! What a service shares with its console beyond its own APIs:
//! * `GET /v1/console` — [`Manifest`]: which pages the service has.
//! * `GET /v1/history` — [`History`]: the last hour of the service's own metrics, sampled in
//!   process, for the charts (no Prometheus needed at 02:14).
//! * `GET /v1/transactions?recent=true` — [`trace::Traces`]: the coordinators' recent
//!   transactions, branch by branch, paged on the server.

mod history;
pub mod trace;

pub use history::{quantile, Chart, History, Sample, HISTORY_INTERVAL, HISTORY_SAMPLES};

use concord_http::Response;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const CONSOLE_JS: &str = include_str!("../assets/console.js");
const CONSOLE_CSS: &str = include_str!("../assets/console.css");

/// The console's files, for `GET /ui…` (`segments` is the path split on `/`, without empty
/// parts). `None` for a path that is not the console's.
pub fn asset(segments: &[&str]) -> Option<Response> {
    let (content_type, body) = match segments {
        ["ui"] | ["ui", "index.html"] => ("text/html; charset=utf-8", INDEX_HTML),
        ["ui", "console.js"] => ("text/javascript; charset=utf-8", CONSOLE_JS),
        ["ui", "console.css"] => ("text/css; charset=utf-8", CONSOLE_CSS),
        _ => return None,
    };
    Some(Response::text(200, content_type, body.to_string()))
}

/// Whether a request is for the console's files: served to anyone (they hold no data).
pub fn is_asset(method: &str, segments: &[&str]) -> bool {
    method == "GET" && segments.first() == Some(&"ui")
}

/// What a service's console offers: its kind, its name for the header, and its pages in the
/// order shown (`transactions`, `in-doubt`, `sagas`, `cluster`, `charts`).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub service: &'static str,
    pub name: String,
    pub pages: Vec<&'static str>,
}

impl Manifest {
    /// `GET /v1/console`'s body (the service adds `who`: the caller's name and role).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service,
            "name": self.name,
            "pages": self.pages,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// A page's size from the query's `limit` (default `default`, at most `max`); an error names
/// the bad value.
pub fn page_limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    match query {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("limit: `{}` is not 1 to {max}", shorten(text))),
    }
}

/// A log directory's files and their sizes, by name, for the cluster pages.
pub fn log_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let size = e.metadata().ok().filter(std::fs::Metadata::is_file)?.len();
                    Some((e.file_name().to_string_lossy().into_owned(), size))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// [`log_files`] as the cluster pages' JSON: `[{"name", "bytes"}]`.
pub fn log_files_json(dir: &std::path::Path) -> Vec<serde_json::Value> {
    log_files(dir)
        .into_iter()
        .map(|(name, bytes)| serde_json::json!({ "name": name, "bytes": bytes }))
        .collect()
}

/// At most 40 characters of a client's text, for error messages.
pub fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_are_served_and_nothing_else_under_ui() {
        for path in
            [&["ui"][..], &["ui", "index.html"], &["ui", "console.js"], &["ui", "console.css"]]
        {
            let response = asset(path).expect("served");
            assert_eq!(response.status, 200);
            assert!(!response.body.is_empty());
        }
        assert!(asset(&["ui", "..", "etc"]).is_none());
        assert!(asset(&["ui", "secret"]).is_none());
        assert!(asset(&["metrics"]).is_none());
        assert!(is_asset("GET", &["ui", "x"]));
        assert!(!is_asset("POST", &["ui"]));
        assert!(!is_asset("GET", &["v1", "ui"]));
    }

    #[test]
    fn the_page_loads_only_its_own_script_and_style() {
        // The Content-Security-Policy (default-src 'self') would block anything inline.
        assert!(INDEX_HTML.contains("src=\"/ui/console.js\""));
        assert!(INDEX_HTML.contains("href=\"/ui/console.css\""));
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        assert!(!INDEX_HTML.contains("style=\""), "no inline style");
        assert!(!CONSOLE_JS.contains("innerHTML ="), "text goes in as text, never as markup");
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(page_limit(None, 50, 500), Ok(50));
        assert_eq!(page_limit(Some("500"), 50, 500), Ok(500));
        assert!(page_limit(Some("501"), 50, 500).is_err());
        assert!(page_limit(Some("0"), 50, 500).is_err());
        assert!(page_limit(Some("-1"), 50, 500).is_err());
        assert!(page_limit(Some("x"), 50, 500).unwrap_err().contains("`x`"));
    }
}
