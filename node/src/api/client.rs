//! How local commands (`hivemesh members`, `ask --node`, `jobs`, ...) reach a
//! running node's API: its address and, when it has one, its bearer token.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::api_addr_file;

/// Environment variable holding the API's bearer token, for both the node
/// and the commands that call it.
pub const API_TOKEN_ENV: &str = "HIVEMESH_API_TOKEN";

/// File in the data dir holding the token a node generated for itself.
pub fn api_token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api.token")
}

/// Why a call to a node's API failed. Each message names the address or file
/// involved; `hivemesh` prints it as the command's error line.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// No `--node` URL was given and `DATA_DIR/api.addr` (written by a
    /// running node) could not be read.
    #[error(
        "no running node found: cannot read {file} ({source}); start one with `hivemesh run` or pass --node URL"
    )]
    NoNode { file: PathBuf, source: std::io::Error },
    /// reqwest could not set up its client (TLS backend, resolver).
    #[error("cannot build an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not get a response: nothing listening, a refused or
    /// reset connection, or no answer within the call's 10 s.
    #[error("no node answering at {url}: {source} (is `hivemesh run` running?)")]
    Unreachable { url: String, source: reqwest::Error },
    /// The node answered, but its body is not JSON.
    #[error("{url} answered {status} with a body that is not JSON: {source}")]
    NotJson { url: String, status: StatusCode, source: reqwest::Error },
    /// The node answered with a non-success status (401 for a missing or
    /// wrong bearer token, 404, 400 ...); `message` is its `error.message`
    /// (OpenAI's shape), else the whole JSON body.
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: StatusCode, message: String },
}

impl ApiClientError {
    /// The HTTP status the node answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::NotJson { status, .. } | Self::Status { status, .. } => Some(*status),
            Self::NoNode { .. } | Self::Client(_) | Self::Unreachable { .. } => None,
        }
    }
}

/// A running node's API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// The node at `explicit` (a base URL), or the one running on
    /// `data_dir`. The token comes from $HIVEMESH_API_TOKEN, else (only for
    /// the node on `data_dir`, never sent elsewhere) DATA_DIR/api.token.
    ///
    /// # Errors
    /// [`ApiClientError::NoNode`] without `explicit` when `DATA_DIR/api.addr`
    /// cannot be read; [`ApiClientError::Client`] as for [`ApiClient::new`].
    pub fn resolve(explicit: Option<&str>, data_dir: &Path) -> Result<Self, ApiClientError> {
        let from_env = std::env::var(API_TOKEN_ENV).ok();
        let (base, token) = match explicit {
            Some(url) => (url.trim_end_matches('/').to_string(), from_env),
            None => {
                let file = api_addr_file(data_dir);
                let addr = match std::fs::read_to_string(&file) {
                    Ok(addr) => addr,
                    Err(source) => return Err(ApiClientError::NoNode { file, source }),
                };
                let token = from_env.or_else(|| std::fs::read_to_string(api_token_file(data_dir)).ok());
                (format!("http://{}", addr.trim()), token)
            }
        };
        let token = token.map(|token| token.trim().to_string()).filter(|token| !token.is_empty());
        Self::new(base, token)
    }

    /// The node at `base` (e.g. `http://127.0.0.1:7480`, no trailing `/`),
    /// sending `token` as a bearer token when given. Connections time out
    /// after 5 s.
    ///
    /// # Errors
    /// [`ApiClientError::Client`] when reqwest cannot build its client.
    pub fn new(base: String, token: Option<String>) -> Result<Self, ApiClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ApiClientError::Client)?;
        Ok(Self { base, token, http })
    }

    /// A request to `path` (e.g. "/v1/jobs") with the token attached; no
    /// overall timeout, so it suits streams.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A JSON call that must answer within 10 s.
    ///
    /// # Errors
    /// [`ApiClientError::Unreachable`] when no response came, else as for
    /// [`json_body`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(method, path).timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => return Err(ApiClientError::Unreachable { url, source }),
        };
        json_body(&url, response).await
    }
}

/// The JSON body of a response, or an error naming the status and what the
/// node said. `url` only names the request in the error.
///
/// # Errors
/// [`ApiClientError::NotJson`] when the body is not JSON (whatever the
/// status); [`ApiClientError::Status`] for a non-success status.
pub async fn json_body(url: &str, response: reqwest::Response) -> Result<Value, ApiClientError> {
    let status = response.status();
    let body: Value = response.json().await.map_err(|source| ApiClientError::NotJson {
        url: url.to_string(),
        status,
        source,
    })?;
    if status.is_success() {
        return Ok(body);
    }
    // OpenAI's shape, `{"error": {"message", ...}}`; a bare string from older nodes.
    let error = body.get("error");
    let message = error
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map_or_else(|| body.to_string(), str::to_string);
    Err(ApiClientError::Status { url: url.to_string(), status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_token_file_is_sent_only_to_the_local_node() {
        if std::env::var_os(API_TOKEN_ENV).is_some() {
            return; // an explicit token applies everywhere; nothing to tell apart
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(api_addr_file(dir.path()), "127.0.0.1:7480\n").expect("addr");
        std::fs::write(api_token_file(dir.path()), "local-secret\n").expect("token");
        let local = ApiClient::resolve(None, dir.path()).expect("local node");
        assert_eq!(
            (local.base.as_str(), local.token.as_deref()),
            ("http://127.0.0.1:7480", Some("local-secret"))
        );
        let remote = ApiClient::resolve(Some("http://192.0.2.1:7480/"), dir.path()).expect("remote node");
        assert_eq!((remote.base.as_str(), remote.token.as_deref()), ("http://192.0.2.1:7480", None));
        let nowhere = tempfile::tempdir().expect("tempdir");
        let error = ApiClient::resolve(None, nowhere.path()).expect_err("no node");
        assert!(matches!(error, ApiClientError::NoNode { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("api.addr") && message.contains("--node"), "{message}");
    }
}
