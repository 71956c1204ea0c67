//! A real HTTP server on loopback that speaks OpenAI-style streaming chat
//! completions the way OpenRouter does: keep-alive comments, usage with cost
//! in the last chunk, errors mid-stream under HTTP 200, 429 with Retry-After.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A normal stream: each piece is one delta, `delay` before each.
    Stream { pieces: Vec<String>, delay: Duration, usage: Option<(u64, u64, Option<f64>)>, keepalive: bool },
    /// Some pieces, then an error event with `finish_reason: "error"` under HTTP 200.
    MidStreamError { pieces: Vec<String>, message: String },
    /// A plain HTTP error.
    Status { code: u16, retry_after: Option<String>, body: String },
    /// A literal SSE body.
    Raw(String),
    /// A literal body as bytes (for invalid UTF-8), served as SSE.
    RawBytes(Vec<u8>),
    /// These literal SSE pieces, then the connection is cut (no end of the
    /// chunked body): what a reset or a crashed server looks like.
    Reset(Vec<String>),
    /// llama-cpp-python's server with default settings: a role chunk, then
    /// one delta per piece after `delay` each, a finish_reason and [DONE];
    /// but when another request arrives meanwhile, this stream ends at once
    /// with only `data: [DONE]` (no text, no finish_reason).
    OneAtATime { pieces: Vec<String>, delay: Duration },
    /// The inner reply, after a fixed wait (a provider's time to first token).
    AfterLatency(Duration, Box<Reply>),
}

impl Reply {
    pub fn text(pieces: &[&str]) -> Self {
        Reply::Stream {
            pieces: pieces.iter().map(|p| p.to_string()).collect(),
            delay: Duration::ZERO,
            usage: Some((12, pieces.len() as u64, Some(0.00042))),
            keepalive: true,
        }
    }

    pub fn slow(pieces: &[&str], delay: Duration) -> Self {
        Reply::Stream {
            pieces: pieces.iter().map(|p| p.to_string()).collect(),
            delay,
            usage: None,
            keepalive: true,
        }
    }

    pub fn status(code: u16, message: &str) -> Self {
        let body = json!({"error": {"message": message, "code": code}}).to_string();
        Reply::Status { code, retry_after: None, body }
    }
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

type Responder = dyn Fn(&Value) -> Reply + Send + Sync;
type Embedder = dyn Fn(&str) -> Value + Send + Sync;

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    responder: Option<Box<Responder>>,
    seen: Mutex<Vec<Seen>>,
    /// When a response stream was dropped before it finished (a client hang-up).
    hangups: Mutex<Vec<Instant>>,
    /// What `/v1/embeddings` answers with; without one it is a 404.
    embedder: Mutex<Option<Arc<Embedder>>>,
    /// Completion requests received so far (numbering them).
    requests: AtomicU64,
    /// Response streams open now, and the most ever open at once.
    open: AtomicUsize,
    most_open: AtomicUsize,
    /// Streams a `OneAtATime` reply cut short because another request came.
    interrupted: AtomicUsize,
}

pub struct TestServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TestServer {
    /// Answers requests with `replies` in order; the last one repeats.
    pub async fn scripted(replies: Vec<Reply>) -> Self {
        Self::start(replies, None).await
    }

    /// Answers each request with whatever `responder` makes of its JSON body.
    pub async fn responding(responder: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(Vec::new(), Some(Box::new(responder))).await
    }

    async fn start(replies: Vec<Reply>, responder: Option<Box<Responder>>) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(replies.into()),
            responder,
            seen: Mutex::default(),
            hangups: Mutex::default(),
            embedder: Mutex::default(),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
            interrupted: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .route("/v1/embeddings", axum::routing::post(embeddings))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        // Like any streaming API server: small SSE writes must not wait for
        // delayed ACKs (Nagle), which would add 40 ms to the end of each stream.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn hangups(&self) -> Vec<Instant> {
        self.shared.hangups.lock().expect("lock").clone()
    }

    /// Serves `/v1/embeddings` (OpenAI's shape, data listed in reverse to
    /// check clients order by `index`) with `embed` applied to each input.
    pub fn with_embeddings(self, embed: impl Fn(&str) -> Vec<f32> + Send + Sync + 'static) -> Self {
        self.with_embedding_values(move |text| json!(embed(text)))
    }

    /// Like `with_embeddings`, with any JSON as each input's `embedding`
    /// (one vector per token, a string, ...).
    pub fn with_embedding_values(self, embed: impl Fn(&str) -> Value + Send + Sync + 'static) -> Self {
        *self.shared.embedder.lock().expect("lock") = Some(Arc::new(embed));
        self
    }

    /// The most response streams that were open at once.
    pub fn most_open(&self) -> usize {
        self.shared.most_open.load(Ordering::SeqCst)
    }

    /// How many `OneAtATime` streams were cut short by a second request.
    pub fn interrupted(&self) -> usize {
        self.shared.interrupted.load(Ordering::SeqCst)
    }
}

async fn embeddings(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.seen.lock().expect("lock").push(Seen { headers, body: body.clone(), at: Instant::now() });
    let embedder = shared.embedder.lock().expect("lock").clone();
    let Some(embed) = embedder else {
        return Response::builder()
            .status(404)
            .body(Body::from(r#"{"error":{"message":"no embeddings"}}"#))
            .expect("response");
    };
    let inputs: Vec<&str> =
        body["input"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embed(text) }))
        .collect();
    let reply = json!({ "object": "list", "data": data, "model": body["model"] });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(reply.to_string()))
        .expect("response")
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.seen.lock().expect("lock").push(Seen { headers, body: body.clone(), at: Instant::now() });
    let number = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let reply = match &shared.responder {
        Some(responder) => responder(&body),
        None => {
            let mut script = shared.script.lock().expect("lock");
            if script.len() > 1 { script.pop_front() } else { script.front().cloned() }
                .unwrap_or_else(|| Reply::text(&["ok"]))
        }
    };
    let model = body["model"].as_str().unwrap_or("unknown").to_string();
    let mut reply = reply;
    while let Reply::AfterLatency(latency, inner) = reply {
        tokio::time::sleep(latency).await;
        reply = *inner;
    }
    match reply {
        Reply::AfterLatency(..) => unreachable!("unwrapped above"),
        Reply::Status { code, retry_after, body } => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(code).expect("status"))
                .header("content-type", "application/json");
            if let Some(value) = retry_after {
                response = response.header("retry-after", value);
            }
            response.body(Body::from(body)).expect("response")
        }
        Reply::Raw(text) => sse_response(Body::from(text)),
        Reply::RawBytes(bytes) => sse_response(Body::from(bytes)),
        Reply::Reset(pieces) => {
            let guard = StreamGuard::open(shared.clone());
            let stream = futures_util::stream::iter(pieces.into_iter().map(|piece| Ok(Bytes::from(piece))))
                .chain(futures_util::stream::once(async move {
                    // Let the pieces reach the client before the cut.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut guard = guard;
                    guard.finish();
                    drop(guard);
                    Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the test"))
                }));
            sse_response(Body::from_stream(stream))
        }
        Reply::OneAtATime { pieces, delay } => {
            let guard = StreamGuard::open(shared.clone());
            let state = (VecDeque::from(pieces), model, guard, 0_u8);
            let stream =
                futures_util::stream::unfold(state, move |(mut pieces, model, mut guard, step)| async move {
                    let text = match step {
                        0 => chunk(&model, json!({"role": "assistant", "content": ""}), None),
                        3 => {
                            guard.finish();
                            return None;
                        }
                        _ => {
                            if let Some(piece) = pieces.pop_front() {
                                tokio::time::sleep(delay).await;
                                if guard.shared.requests.load(Ordering::SeqCst) != number {
                                    guard.shared.interrupted.fetch_add(1, Ordering::SeqCst);
                                    return Some((
                                        Ok::<_, std::io::Error>(Bytes::from("data: [DONE]\n\n")),
                                        (pieces, model, guard, 3),
                                    ));
                                }
                                let text = chunk(&model, json!({"content": piece}), None);
                                return Some((Ok(Bytes::from(text)), (pieces, model, guard, 1)));
                            }
                            let text = format!("{}data: [DONE]\n\n", chunk(&model, json!({}), Some("stop")));
                            return Some((Ok(Bytes::from(text)), (pieces, model, guard, 3)));
                        }
                    };
                    Some((Ok(Bytes::from(text)), (pieces, model, guard, 1)))
                });
            sse_response(Body::from_stream(stream))
        }
        Reply::Stream { pieces, delay, usage, keepalive } => {
            let mut events: Vec<(Duration, String)> = Vec::new();
            if keepalive {
                events.push((Duration::ZERO, ": OPENROUTER PROCESSING\n\n".into()));
            }
            for piece in &pieces {
                events.push((delay, chunk(&model, json!({"role": "assistant", "content": piece}), None)));
                if keepalive {
                    events.push((Duration::ZERO, ": OPENROUTER PROCESSING\n\n".into()));
                }
            }
            let mut last = json!({
                "id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
            });
            if let Some((prompt, completion, cost)) = usage {
                last["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                    "total_tokens": prompt + completion, "cost": cost});
            }
            events.push((Duration::ZERO, format!("data: {last}\n\n")));
            events.push((Duration::ZERO, "data: [DONE]\n\n".into()));
            sse_response(paced(events, shared.clone()))
        }
        Reply::MidStreamError { pieces, message } => {
            let mut events: Vec<(Duration, String)> = pieces
                .iter()
                .map(|piece| (Duration::ZERO, chunk(&model, json!({"content": piece}), None)))
                .collect();
            let error = json!({
                "id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "provider": "upstream", "error": {"code": "server_error", "message": message},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            });
            events.push((Duration::ZERO, format!("data: {error}\n\n")));
            sse_response(paced(events, shared.clone()))
        }
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let event = json!({
        "id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {event}\n\n")
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("response")
}

/// Counts an open response stream, and records the moment it is dropped unfinished.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn open(shared: Arc<Shared>) -> Self {
        let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_open.fetch_max(open, Ordering::SeqCst);
        Self { shared, finished: false }
    }

    /// The stream ended as the server meant it to (not a client hang-up).
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.shared.hangups.lock().expect("lock").push(Instant::now());
        }
    }
}

fn paced(events: Vec<(Duration, String)>, shared: Arc<Shared>) -> Body {
    let guard = StreamGuard::open(shared);
    let state = (VecDeque::from(events), guard);
    let stream = futures_util::stream::unfold(state, |(mut events, mut guard)| async move {
        let Some((delay, text)) = events.pop_front() else {
            guard.finished = true;
            drop(guard);
            return None;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(text)), (events, guard)))
    });
    Body::from_stream(stream)
}
