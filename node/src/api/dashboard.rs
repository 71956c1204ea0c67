//! `GET /`: the dashboard, one HTML page with its style and script inlined,
//! all built into the binary (no external network, no build step).
//!
//! The page itself holds no data: it is answered without the bearer token
//! (a browser cannot send one when it navigates), and everything it shows
//! comes from the API's own routes, fetched with `Authorization: Bearer`
//! when the operator gives the page a token (`#token=...` in the address,
//! or the token field). The Host and Origin checks (ADR 0014) apply to the
//! page as to every route. Its Content-Security-Policy allows only the
//! inlined script and style (by a per-response nonce) and requests to its
//! own origin, and forbids framing (clickjacking of the ask form).
//!
//! What it reads: `/v1/status` (with `quota`), `/v1/members?view=swim` and
//! `?view=registry` (state, addresses, models, GPU, load), `/v1/jobs`,
//! `/v1/jobs/{id}` and its event stream `/v1/jobs/{id}/events` (read with
//! `fetch`, as `EventSource` cannot send a token), and `/v1/byzantine`.

use std::sync::OnceLock;

use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

/// The path the page is served at.
pub(super) const PATH: &str = "/";

const HTML: &str = include_str!("dashboard/page.html");
const STYLE: &str = include_str!("dashboard/page.css");
const SCRIPT: &str = include_str!("dashboard/page.js");

/// Where the nonce goes in the assembled page.
const NONCE_MARK: &str = "{{nonce}}";

/// Whether a request may pass without the bearer token: only `GET`/`HEAD`
/// of the page itself, which carries no data.
pub(super) fn is_public(method: &Method, path: &str) -> bool {
    path == PATH && matches!(*method, Method::GET | Method::HEAD)
}

/// The page with its style and script in place (the nonce still marked).
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| HTML.replacen("/*STYLE*/", STYLE, 1).replacen("/*SCRIPT*/", SCRIPT, 1))
}

/// A fresh nonce for one response: 16 random bytes in hex. When the OS has
/// no randomness to give, `None`: the page is then refused rather than
/// served under a guessable nonce.
fn nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// The page, `text/html`, with a policy that lets only its own nonce-marked
/// script and style run and only its own origin be fetched.
pub(super) async fn page_handler() -> Response {
    let Some(nonce) = nonce() else {
        return super::error(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for the page's script nonce",
        );
    };
    let body = page().replace(NONCE_MARK, &nonce);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assembled_page_inlines_its_style_and_script_under_the_nonce() {
        let page = page();
        assert!(!page.contains("/*STYLE*/") && !page.contains("/*SCRIPT*/"), "markers replaced");
        assert!(page.contains(STYLE.trim()) && page.contains(SCRIPT.trim()));
        assert_eq!(page.matches(NONCE_MARK).count(), 2, "one nonce on the style, one on the script");
        assert!(!page.contains("http://") && !page.contains("https://"), "no external resources");
    }

    #[test]
    fn only_get_and_head_of_the_page_pass_without_a_token() {
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::HEAD, "/"));
        assert!(!is_public(&Method::POST, "/"));
        assert!(!is_public(&Method::GET, "/v1/status"));
        assert!(!is_public(&Method::GET, "//"));
    }

    #[test]
    fn two_nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
