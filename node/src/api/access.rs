//! Which web pages may reach the API (ADR 0014).
//!
//! A browser lets any page send requests to 127.0.0.1: a plain HTML form
//! can POST (cross-site request forgery), and a page whose name is rebound
//! in DNS to 127.0.0.1 reads the answers too (DNS rebinding, the class of
//! Ollama's CVE-2024-28224). Two checks, on every route, before the bearer
//! token and the handlers:
//!
//! - **Host**: the `Host` header (and a request target's authority) must
//!   name an address the API is bound to (on 0.0.0.0 or `::`, any IP
//!   literal), `localhost`, or a name given with `--api-allow-host`; else
//!   421. The port is not compared (a proxy may expose another one). A
//!   request without any Host passes: every browser sends one.
//! - **Origin**: a request with an `Origin` header must come from the API's
//!   own origin (scheme http or https, the Host's name and port) or one
//!   given with `--api-allow-origin` (exact `scheme://host[:port]`), else
//!   403. Without `Origin`, `Sec-Fetch-Site: cross-site` is refused too,
//!   except for a GET or HEAD navigation (a link someone clicked). Requests
//!   from curl and SDKs carry neither header and pass.
//!
//! Sources: OWASP's Cross-Site Request Forgery Prevention Cheat Sheet
//! (standard headers, Fetch Metadata), W3C Fetch Metadata Request Headers,
//! RFC 6454 (origins), RFC 9110 §15.5.20 (421 Misdirected Request).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// A configured `--api-allow-host` or `--api-allow-origin` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessConfigError {
    #[error(
        "--api-allow-host {0:?}: expected a host name such as node.example or an IP address \
         (no scheme, port, path or wildcard)"
    )]
    BadHost(String),
    #[error("--api-allow-origin {given:?}: {reason}")]
    BadOrigin { given: String, reason: &'static str },
}

/// A host as a Host header or an origin names it: an IP literal or a
/// lowercase DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostName {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(name) => f.write_str(name),
        }
    }
}

/// `host` as it appears in an authority: `[v6]`, dotted IPv4, or a name of
/// letters, digits, `-`, `_` and `.`; `None` for anything else.
fn host_name(host: &str) -> Option<HostName> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Ipv6Addr::from_str(inner).ok().map(|ip| HostName::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = Ipv4Addr::from_str(host) {
        return Some(HostName::Ip(IpAddr::V4(ip)));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!host.is_empty() && host.chars().all(valid)).then(|| HostName::Name(host.to_ascii_lowercase()))
}

/// A Host header's value (`name[:port]`, `[v6][:port]`): the host and the
/// port if given; `None` when it is malformed.
pub(crate) fn parse_host(value: &str) -> Option<(HostName, Option<u16>)> {
    if value.contains('@') {
        return None;
    }
    let authority = Authority::from_str(value).ok()?;
    Some((host_name(authority.host())?, port(&authority).ok()?))
}

/// The authority's port: `Ok(None)` when none is written, `Err` when the
/// text after the host is not a port (`:abc`, `:99999`, a bare `:`). The
/// `http` crate's `port_u16` says `None` for both, and reading a malformed
/// port as "the default" would allow another origin than the one written.
fn port(authority: &Authority) -> Result<Option<u16>, ()> {
    if authority.as_str().len() == authority.host().len() {
        return Ok(None);
    }
    authority.port_u16().map(Some).ok_or(())
}

/// A web origin (RFC 6454): scheme, host, and the port when it is not the
/// scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: HostName,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl Origin {
    /// Reads `scheme://host[:port]` (a trailing `/` is tolerated).
    pub(crate) fn parse(text: &str) -> Result<Self, &'static str> {
        match text.trim() {
            "*" => return Err("a wildcard would let every web page drive the node; list each origin"),
            "null" => {
                return Err("`null` is the origin of any sandboxed or local page; it cannot be allowed");
            }
            _ => {}
        }
        let uri = Uri::from_str(text.trim()).map_err(|_| "expected scheme://host[:port]")?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err("expected scheme://host[:port], e.g. http://localhost:3000");
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("an origin has no path or query: scheme://host[:port]");
        }
        if authority.as_str().contains('@') {
            return Err("an origin has no user name or password");
        }
        let host = host_name(authority.host()).ok_or("the host is not a valid name or IP address")?;
        let scheme = scheme.to_ascii_lowercase();
        let port = port(authority)
            .map_err(|()| "the port is not a number from 0 to 65535")?
            .filter(|port| Some(*port) != default_port(&scheme));
        Ok(Self { scheme, host, port })
    }

    /// Whether this is the origin of a page served where `host` names: http
    /// or https, the same host, and the same port (defaults filled in).
    fn serves(&self, host: &(HostName, Option<u16>)) -> bool {
        let Some(default) = default_port(&self.scheme) else { return false };
        self.host == host.0 && self.port.unwrap_or(default) == host.1.unwrap_or(default)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// Checks one `--api-allow-host` value; returns it normalized (lowercase,
/// IPv6 in brackets).
pub fn allowed_host(text: &str) -> Result<String, AccessConfigError> {
    let bad = || AccessConfigError::BadHost(text.to_string());
    let text = text.trim();
    let name = match IpAddr::from_str(text) {
        Ok(ip) => HostName::Ip(ip),
        Err(_) => host_name(text).ok_or_else(bad)?,
    };
    Ok(name.to_string())
}

/// Checks one `--api-allow-origin` value; returns it as browsers send it
/// (lowercase, no default port, no trailing `/`).
pub fn allowed_origin(text: &str) -> Result<String, AccessConfigError> {
    Origin::parse(text)
        .map(|origin| origin.to_string())
        .map_err(|reason| AccessConfigError::BadOrigin { given: text.to_string(), reason })
}

/// What the operator allows beyond the bound address and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    hosts: Vec<HostName>,
    origins: Vec<Origin>,
}

impl AccessRules {
    /// Checks every `--api-allow-host` and `--api-allow-origin` value.
    pub fn new(hosts: &[String], origins: &[String]) -> Result<Self, AccessConfigError> {
        let hosts = hosts
            .iter()
            .map(|host| {
                let normalized = allowed_host(host)?;
                parse_host(&normalized).map(|(name, _)| name).ok_or(AccessConfigError::BadHost(host.clone()))
            })
            .collect::<Result<_, _>>()?;
        let origins = origins
            .iter()
            .map(|text| {
                Origin::parse(text)
                    .map_err(|reason| AccessConfigError::BadOrigin { given: text.clone(), reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { hosts, origins })
    }
}

/// The rules for an API bound to `bound`.
#[derive(Debug, Clone)]
pub(crate) struct AccessPolicy {
    bound: IpAddr,
    rules: AccessRules,
}

impl AccessPolicy {
    pub(crate) fn new(bound: IpAddr, rules: AccessRules) -> Arc<Self> {
        Arc::new(Self { bound, rules })
    }

    fn host_allowed(&self, host: &HostName) -> bool {
        let named = match host {
            HostName::Ip(ip) => self.bound.is_unspecified() || *ip == self.bound,
            HostName::Name(name) => name == "localhost",
        };
        named || self.rules.hosts.contains(host)
    }

    /// Whether `origin` is one the operator allowed (CORS answers it).
    pub(crate) fn origin_listed(&self, origin: &HeaderValue) -> bool {
        let parsed = origin.to_str().ok().and_then(|text| Origin::parse(text).ok());
        parsed.is_some_and(|origin| self.rules.origins.contains(&origin))
    }

    /// The Host the request names, checked; `Ok(None)` when it names none.
    fn check_host(&self, request: &Request) -> Result<Option<(HostName, Option<u16>)>, ApiError> {
        let mut values = request.headers().get_all(header::HOST).iter();
        let (first, second) = (values.next(), values.next());
        if second.is_some() {
            return Err(host_error("the request has more than one Host header".into()));
        }
        let mut named = None;
        let given = first.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let target = request.uri().authority().map(|a| a.as_str().to_string());
        for value in given.into_iter().chain(target) {
            let Some(host) = parse_host(&value) else {
                return Err(host_error(format!("the Host header {:?} is malformed", shorten(&value))));
            };
            if !self.host_allowed(&host.0) {
                return Err(host_error(format!(
                    "the Host header {:?} names no address of this API: it answers to {}, localhost \
                     and the names given with --api-allow-host",
                    shorten(&value),
                    if self.bound.is_unspecified() {
                        "any IP address".into()
                    } else {
                        self.bound.to_string()
                    },
                )));
            }
            named = Some(host);
        }
        Ok(named)
    }

    /// Refuses a request a foreign web page sent.
    fn check_origin(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: Option<&(HostName, Option<u16>)>,
    ) -> Result<(), ApiError> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (Some(_), Some(_)) => Err(origin_error("the request has more than one Origin header".into())),
            (Some(value), None) => {
                let text = String::from_utf8_lossy(value.as_bytes());
                let ok = Origin::parse(&text)
                    .is_ok_and(|o| host.is_some_and(|h| o.serves(h)) || self.rules.origins.contains(&o));
                if ok {
                    return Ok(());
                }
                Err(origin_error(format!(
                    "requests from the web page origin {:?} are refused: it is not this API's own \
                     origin; allow it with --api-allow-origin if it is yours",
                    shorten(&text)
                )))
            }
            (None, _) => {
                let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
                let navigation = headers.get("sec-fetch-mode").is_some_and(|v| v == "navigate")
                    && matches!(*method, Method::GET | Method::HEAD);
                if site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) && !navigation {
                    return Err(ApiError {
                        param: Some("Sec-Fetch-Site".into()),
                        code: Some("cross_site_request"),
                        ..ApiError::new(
                            StatusCode::FORBIDDEN,
                            "the browser says this request comes from another site (Sec-Fetch-Site: \
                             cross-site); refused",
                        )
                    });
                }
                Ok(())
            }
        }
    }
}

/// At most 200 characters of a header value, for an error message.
fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

fn host_error(message: String) -> ApiError {
    ApiError {
        param: Some("Host".into()),
        code: Some("host_not_allowed"),
        ..ApiError::new(StatusCode::MISDIRECTED_REQUEST, message)
    }
}

fn origin_error(message: String) -> ApiError {
    ApiError {
        param: Some("Origin".into()),
        code: Some("origin_not_allowed"),
        ..ApiError::new(StatusCode::FORBIDDEN, message)
    }
}

/// The Host check, then the Origin check, on every request.
pub(super) async fn guard(State(policy): State<Arc<AccessPolicy>>, request: Request, next: Next) -> Response {
    let host = match policy.check_host(&request) {
        Ok(host) => host,
        Err(error) => return refused(error, &request),
    };
    if let Err(error) = policy.check_origin(request.method(), request.headers(), host.as_ref()) {
        return refused(error, &request);
    }
    next.run(request).await
}

fn refused(error: ApiError, request: &Request) -> Response {
    tracing::debug!(method = %request.method(), path = request.uri().path(), %error, "API request refused");
    error.into_response()
}

/// CORS answers (preflights included) for the origins the operator
/// allowed; the methods and headers a preflight asks for are granted, as
/// [`guard`] has already refused every other origin.
pub(super) fn cors(policy: Arc<AccessPolicy>) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| policy.origin_listed(origin)))
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .allow_private_network(true)
        .max_age(std::time::Duration::from_secs(600))
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
