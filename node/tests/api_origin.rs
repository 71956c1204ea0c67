//! The API is not every web page's (ADR 0014): over real HTTP on loopback,
//! every route in `api::ROUTES` refuses a foreign Host header, every
//! request from a foreign web origin is refused (state-changing ones
//! included), and nothing changes when they are; the API's own origin, a
//! configured one (with CORS answers) and requests without Origin pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hivemesh_gpu::engine::{BackendChoice, TallyEngine};
use hivemesh_llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh_llm::{LlmClient, ResilienceConfig};
use hivemesh_node::api::{ROUTES, Route};
use hivemesh_node::federation::FederationConfig;
use hivemesh_node::{NodeConfig, NodeError, NodeHandle, spawn_node};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);
const EVIL: &str = "http://evil.example";
const UI: &str = "http://ui.example:8080";
const TOKEN: &str = "t0k3n";

/// A model provider that accepts connections and never answers, so a job
/// stays running; it counts the calls.
struct Provider {
    calls: Arc<AtomicUsize>,
    url: String,
}

async fn provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Provider { calls, url }
}

struct Node {
    handle: NodeHandle,
    api: SocketAddr,
    token: Option<&'static str>,
    provider: Provider,
    _dir: tempfile::TempDir,
}

async fn start(tweak: impl FnOnce(&mut NodeConfig)) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = provider().await;
    let resilience = ResilienceConfig { max_attempts: 1, cache_entries: 0, ..ResilienceConfig::default() };
    let llm = OpenAiProvider::new(OpenAiConfig::new("stub", provider.url.clone(), "stub")).expect("provider");
    let client = Arc::new(LlmClient::new(Arc::new(llm), resilience));
    let tally = Arc::new(TallyEngine::new(BackendChoice::Cpu).expect("cpu tally"));
    let mut config = NodeConfig::loopback(dir.path().to_path_buf());
    config.federation = Some(FederationConfig::new(client, tally));
    tweak(&mut config);
    let token = config.api_token.as_ref().map(|_| TOKEN);
    let handle = spawn_node(config).await.expect("node starts");
    let api = handle.api.expect("api");
    Node { handle, api, token, provider, _dir: dir }
}

/// An answer read off the wire: status, headers (names lowercase), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `request` as written (so Host and Origin are exactly what a
/// browser or an attacker would send) and reads the status and headers,
/// and the body when it has a length (a stream's is not waited for).
async fn raw(api: SocketAddr, request: String) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(api).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n =
            tokio::time::timeout(LIMIT, stream.read(&mut buf)).await.expect("answer in time").expect("read");
        assert!(n > 0, "connection closed before the headers: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok());
    let mut body = data[head_end..].to_vec();
    if let Some(length) = length {
        while body.len() < length {
            let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
                .await
                .expect("body in time")
                .expect("read");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
    }
    Answer { status, headers, body: String::from_utf8_lossy(&body).to_string() }
}

/// One request to `path`: `host` (None: no Host header, HTTP/1.0), extra
/// headers, and the body the route takes.
async fn send(
    node: &Node,
    method: &Method,
    path: &str,
    host: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let body = body_for(path, method).map(|b| b.to_string());
    let mut request = match host {
        Some(host) => format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"),
        None => format!("{method} {path} HTTP/1.0\r\n"),
    };
    if let Some(token) = node.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let has_type = extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    match &body {
        Some(body) if *method != Method::HEAD => {
            if !has_type {
                request.push_str("Content-Type: application/json\r\n");
            }
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        _ => request.push_str("\r\n"),
    }
    raw(node.api, request).await
}

/// A body the route would act on: a job that would run, an advertisement
/// that would replace the profile, a chat completion that would spend.
fn body_for(path: &str, method: &Method) -> Option<Value> {
    if !Route::changes_state(method) {
        return None;
    }
    Some(match path {
        "/v1/jobs" => {
            json!({ "question": "What is the capital of France?", "peers": 1, "deadline_ms": 600000 })
        }
        "/v1/chat/completions" => json!({
            "model": "council", "stream": true,
            "messages": [{ "role": "user", "content": "What is the capital of France?" }],
        }),
        "/v1/advertise" => json!({ "role": "Worker", "models": ["changed-by-a-web-page"], "gpu": null }),
        "/v1/byzantine" => json!({ "ballots": proof_ballots() }),
        "/v1/embeddings" => json!({ "model": "no-such-model", "input": ["x"] }),
        "/v1/force-leave" => json!({ "peer": equivocator().peer_id().to_string() }),
        _ => json!({}),
    })
}

/// A key that signed two different ballots for one job.
fn equivocator() -> hivemesh_protocol::NodeIdentity {
    hivemesh_protocol::NodeIdentity::from_seed([0xE9; 32])
}

/// A valid equivocation proof by [`equivocator`], as `POST /v1/byzantine`
/// takes it.
fn proof_ballots() -> Vec<String> {
    use hivemesh_protocol::{Ballot, BallotChoice, JobId, TallyRule, encode_message, seal};
    let key = equivocator();
    (0..2)
        .map(|choice| {
            let ballot = Ballot {
                job: JobId([5; 16]),
                voter: key.node_id(),
                rule: TallyRule::Plurality,
                choice: BallotChoice::Single(choice),
                weight: 1,
            };
            let envelope = seal(&key, u64::from(choice) + 1, 1, &ballot).expect("seal");
            encode_message(&envelope).expect("encode").iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect()
}

/// Every (path, method) the API routes, path parameters filled with `job`
/// (and the equivocator's peer id).
fn every_request(job: &str) -> Vec<(String, Method)> {
    let peer = equivocator().peer_id().to_string();
    let mut all = Vec::new();
    for route in ROUTES {
        for method in route.methods {
            all.push((
                route.path.replace("{*id}", "hivemesh").replace("{id}", job).replace("{peer}", &peer),
                method.clone(),
            ));
        }
    }
    all
}

fn http(node: &Node) -> (reqwest::Client, String) {
    (reqwest::Client::builder().timeout(LIMIT).build().expect("client"), format!("http://{}", node.api))
}

async fn get(node: &Node, path: &str) -> Value {
    let (client, base) = http(node);
    let mut request = client.get(format!("{base}{path}"));
    if let Some(token) = node.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("get");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

/// What a refused request could have changed: the jobs and their states,
/// the advertised profile, and whether the node still answers.
async fn fingerprint(node: &Node) -> Value {
    let jobs = get(node, "/v1/jobs?limit=1000").await;
    let jobs: Vec<Value> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|row| json!([row["job"]["id"], row["job"]["status"]]))
        .collect();
    let registry = get(node, "/v1/members?view=registry").await;
    let status = get(node, "/v1/status").await;
    let evidence = get(node, "/v1/byzantine").await;
    json!({
        "jobs": jobs, "models": registry["me"]["models"], "role": registry["me"]["role"], "peer": status["peer_id"],
        "evidence": evidence["proofs"],
    })
}

/// A running job (its provider never answers), for the routes that take an id.
async fn running_job(node: &Node) -> String {
    let answer = send(node, &Method::POST, "/v1/jobs", Some(&node.api.to_string()), &[]).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + LIMIT;
    while node.provider.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the job never called its provider");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

/// Nothing changed, and the node did not leave (a leave stops it within 3 s).
async fn assert_unchanged(node: &mut Node, before: &Value) {
    let stopped = tokio::time::timeout(Duration::from_secs(5), node.handle.stopped()).await;
    assert!(stopped.is_err(), "the node left the swarm");
    assert_eq!(&fingerprint(node).await, before);
}

fn assert_refused(answer: &Answer, status: u16, param: &str, names: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    let body = answer.json();
    let error = &body["error"];
    assert_eq!(error["param"], param, "{what}: {body}");
    assert!(error["code"].is_string() && error["type"].is_string(), "{what}: {body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(names), "{what}: the error names {names:?}: {body}");
    assert!(answer.header("access-control-allow-origin").is_none(), "{what}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_foreign_host_and_nothing_changes() {
    let mut node = start(|_| {}).await;
    let job = running_job(&node).await;
    let before = fingerprint(&node).await;
    let port = node.api.port();
    let foreign = [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.2:{port}"),
    ];
    let mut requests = every_request(&job);
    requests.push(("/v1/no-such-route".into(), Method::GET));
    requests.push(("/v1/status".into(), Method::HEAD));
    for (path, method) in &requests {
        for host in &foreign {
            let answer = send(&node, method, path, Some(host), &[]).await;
            let what = format!("{method} {path} with Host {host}");
            if *method == Method::HEAD {
                assert_eq!(answer.status, 421, "{what}");
            } else {
                assert_refused(&answer, 421, "Host", host, &what);
            }
        }
    }
    // A preflight from the rebound page is refused the same way.
    let preflight = [("Origin", "http://attacker.example"), ("Access-Control-Request-Method", "POST")];
    let answer = send(&node, &Method::OPTIONS, "/v1/leave", Some("attacker.example"), &preflight).await;
    assert_refused(&answer, 421, "Host", "attacker.example", "preflight");
    assert_unchanged(&mut node, &before).await;
    assert_eq!(node.provider.calls.load(Ordering::SeqCst), 1, "only the first job called a model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_from_a_foreign_origin_is_refused_and_nothing_changes() {
    let mut node = start(|config| config.api_allow_origins = vec![UI.into()]).await;
    let job = running_job(&node).await;
    let before = fingerprint(&node).await;
    let host = node.api.to_string();
    let other_port = format!("http://127.0.0.1:{}", node.api.port() + 1);
    let origins = [EVIL, "null", "https://evil.example", "http://ui.example:8081", "https://ui.example:8080"];
    let requests = every_request(&job);
    for (path, method) in &requests {
        for origin in origins.iter().copied().chain([other_port.as_str()]) {
            let answer = send(&node, method, path, Some(&host), &[("Origin", origin)]).await;
            assert_refused(&answer, 403, "Origin", origin, &format!("{method} {path} from {origin}"));
        }
    }
    // Without Origin, a browser's Sec-Fetch-Site still gives a cross-site page away.
    for (path, method) in requests.iter().filter(|(_, m)| Route::changes_state(m)) {
        let answer = send(&node, method, path, Some(&host), &[("Sec-Fetch-Site", "cross-site")]).await;
        assert_refused(&answer, 403, "Sec-Fetch-Site", "cross-site", &format!("{method} {path}"));
    }
    // The form post from the issue, exactly.
    let form = [("Origin", EVIL), ("Content-Type", "application/x-www-form-urlencoded")];
    let mut request = format!("POST /v1/leave HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in form {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 3\r\n\r\na=b");
    assert_refused(&raw(node.api, request).await, 403, "Origin", EVIL, "form post");
    // A preflight from a foreign page gets no CORS grant.
    let preflight = [("Origin", EVIL), ("Access-Control-Request-Method", "POST")];
    let answer = send(&node, &Method::OPTIONS, "/v1/jobs", Some(&host), &preflight).await;
    assert_refused(&answer, 403, "Origin", EVIL, "preflight");
    assert_unchanged(&mut node, &before).await;
    assert_eq!(node.provider.calls.load(Ordering::SeqCst), 1, "no refused request called a model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_passes_with_cors_answers_even_before_the_token() {
    let node = start(|config| {
        config.api_token = Some(TOKEN.into());
        // Written as an operator might; browsers send "http://ui.example:8080".
        config.api_allow_origins = vec!["HTTP://UI.example:8080/".into()];
    })
    .await;
    let host = node.api.to_string();
    let job = running_job(&node).await;
    // Preflights carry no token; each state-changing route grants the page its method.
    for (path, method) in every_request(&job).iter().filter(|(_, m)| Route::changes_state(m)) {
        let request = format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nOrigin: {UI}\r\n\
             Access-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
        );
        let answer = raw(node.api, request).await;
        let what = format!("preflight of {method} {path}");
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some(UI), "{what}: {answer:?}");
        let methods = answer.header("access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains(method.as_str()), "{what}: {answer:?}");
        let headers = answer.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        assert!(headers.contains("authorization") && headers.contains("content-type"), "{what}: {answer:?}");
    }
    // The requests themselves pass and get the grant.
    let answer = send(&node, &Method::POST, "/v1/advertise", Some(&host), &[("Origin", UI)]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(UI));
    assert_eq!(fingerprint(&node).await["models"], json!(["changed-by-a-web-page"]));
    let jobs = fingerprint(&node).await["jobs"].as_array().map_or(0, Vec::len);
    let answer = send(&node, &Method::POST, "/v1/jobs", Some(&host), &[("Origin", UI)]).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(fingerprint(&node).await["jobs"].as_array().map_or(0, Vec::len), jobs + 1);
    let answer = send(&node, &Method::GET, "/v1/status", Some(&host), &[("Origin", UI)]).await;
    assert_eq!((answer.status, answer.header("access-control-allow-origin")), (200, Some(UI)));
    // The origin check comes before the token: a foreign page learns nothing from a 401.
    let anonymous = Node { token: None, ..node };
    let answer = send(&anonymous, &Method::POST, "/v1/leave", Some(&host), &[("Origin", EVIL)]).await;
    assert_refused(&answer, 403, "Origin", EVIL, "foreign page without a token");
    let answer = send(&anonymous, &Method::POST, "/v1/leave", Some(&host), &[("Origin", UI)]).await;
    assert_eq!(answer.status, 401, "an allowed page still needs the token: {answer:?}");
    let mut node = Node { token: Some(TOKEN), ..anonymous };
    let answer = send(&node, &Method::POST, "/v1/leave", Some(&host), &[("Origin", UI)]).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    tokio::time::timeout(LIMIT, node.handle.stopped()).await.expect("an allowed page made the node leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_and_no_origin_pass_with_localhost_or_the_bound_ip_as_host() {
    let mut node = start(|_| {}).await;
    let job = running_job(&node).await;
    let port = node.api.port();
    let hosts =
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "LocalHost".into(), "127.0.0.1".into()];
    let requests: Vec<_> = every_request(&job).into_iter().filter(|(path, _)| path != "/v1/leave").collect();
    for host in &hosts {
        let own = format!("http://{}", host.to_ascii_lowercase());
        for origin in [None, Some(own.as_str())] {
            let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            for (path, method) in &requests {
                let answer = send(&node, method, path, Some(host), &extra).await;
                // Past the Host and Origin checks, answers that depend on
                // state: a job already cancelled answers 409 to the next
                // cancel, a mark already cleared 404, and this lone node
                // knows no peer to force out, nor one offering a model to
                // embed with (404s naming it).
                let passed = (200..300).contains(&answer.status)
                    || (*method == Method::DELETE && answer.status == 409)
                    || (answer.status == 404
                        && (answer.body.contains("no uncleared equivocation proof")
                            || answer.body.contains("not a member this node knows of")
                            || answer.body.contains("no live peer offers it")));
                assert!(passed, "{method} {path} with Host {host}, Origin {origin:?}: {answer:?}");
            }
        }
    }
    // HTTP/1.0 without a Host header: no browser sends that, so it passes.
    let answer = send(&node, &Method::GET, "/v1/status", None, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // Two Host headers are not a name of this API.
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(node.api, request).await;
    assert!(matches!(answer.status, 400 | 421), "{answer:?}");
    // Last, the same-origin leave: the node goes.
    let own = format!("http://localhost:{port}");
    let answer =
        send(&node, &Method::POST, "/v1/leave", Some(&format!("localhost:{port}")), &[("Origin", &own)])
            .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    tokio::time::timeout(LIMIT, node.handle.stopped()).await.expect("the node left");
}

/// The table the other tests walk is the router: a method a route does not
/// list gets 405 (and every listed one was answered above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_the_methods_it_lists() {
    let node = start(|_| {}).await;
    let host = node.api.to_string();
    let all = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    for route in ROUTES {
        let path = route.path.replace("{id}", &"0".repeat(64));
        for method in all.iter().filter(|m| !route.methods.contains(m)) {
            let answer = send(&node, method, &path, Some(&host), &[]).await;
            assert_eq!(answer.status, 405, "{method} {path}: {answer:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_or_malformed_allowance_stops_the_node_from_starting() {
    for (hosts, origins) in [
        (vec![], vec!["*"]),
        (vec![], vec!["null"]),
        (vec![], vec!["ui.example"]),
        (vec!["*.example"], vec![]),
        (vec!["node.example:80"], vec![]),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = NodeConfig::loopback(dir.path().to_path_buf());
        config.api_allow_hosts = hosts.iter().map(|s| s.to_string()).collect();
        config.api_allow_origins = origins.iter().map(|s| s.to_string()).collect();
        let error = spawn_node(config).await.map(|_| ()).expect_err("refused at start");
        assert!(matches!(error, NodeError::ApiAccess(_)), "{hosts:?} {origins:?}: {error}");
    }
}
