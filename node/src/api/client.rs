//! How local commands (`hivemesh members`, `ask --node`, `jobs`, ...) reach a
//! running node's API: its address and, when it has one, its bearer token.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use reqwest::Method;
use serde_json::Value;

use super::api_addr_file;

/// Environment variable holding the API's bearer token, for both the node
/// and the commands that call it.
pub const API_TOKEN_ENV: &str = "HIVEMESH_API_TOKEN";

/// File in the data dir holding the token a node generated for itself.
pub fn api_token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api.token")
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
    pub fn resolve(explicit: Option<&str>, data_dir: &Path) -> Result<Self, String> {
        let from_env = std::env::var(API_TOKEN_ENV).ok();
        let (base, token) = match explicit {
            Some(url) => (url.trim_end_matches('/').to_string(), from_env),
            None => {
                let file = api_addr_file(data_dir);
                let addr = std::fs::read_to_string(&file).map_err(|e| {
                    format!(
                        "no running node found: cannot read {} ({e}); start one with `hivemesh run` or pass --node URL",
                        file.display()
                    )
                })?;
                let token = from_env.or_else(|| std::fs::read_to_string(api_token_file(data_dir)).ok());
                (format!("http://{}", addr.trim()), token)
            }
        };
        let token = token.map(|token| token.trim().to_string()).filter(|token| !token.is_empty());
        Self::new(base, token)
    }

    pub fn new(base: String, token: Option<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
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
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(method, path).timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("no node answering at {url}: {e} (is `hivemesh run` running?)"))?;
        json_body(&url, response).await
    }
}

/// The JSON body of a response, or an error naming the status and what the
/// node said.
pub async fn json_body(url: &str, response: reqwest::Response) -> Result<Value, String> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} with a body that is not JSON: {e}"))?;
    if status.is_success() {
        return Ok(body);
    }
    // OpenAI's shape, `{"error": {"message", ...}}`; a bare string from older nodes.
    let error = body.get("error");
    let message = error
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map_or_else(|| body.to_string(), str::to_string);
    Err(format!("{url} answered {status}: {message}"))
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
        assert!(error.contains("api.addr") && error.contains("--node"), "{error}");
    }
}
