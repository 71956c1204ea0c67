//! What the JSON of an OpenAI-style server means: stream chunks, error
//! objects in every shape servers use, non-streamed bodies. Pure: no I/O, so
//! it is tested on literal payloads.
//!
//! Liberal in what it accepts: `null` wherever the schema has a list, object,
//! number or string is taken as absent; content may be a string or a list of
//! text parts. Never accepts an error as an answer: an `error` key (object or
//! string), `object: "error"` (vLLM), `type: "error"`, a choice's `error`, and
//! `finish_reason: "error"` (OpenRouter) are all errors.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{Chunk, Usage};

/// An error the server reported, with its code (`"500"`, `"server_error"`)
/// and type (`"InternalServerError"`) when it gave them.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerError {
    pub message: String,
    pub code: Option<String>,
    pub kind: Option<String>,
}

impl ServerError {
    /// The server says the prompt does not fit the model's context window
    /// (OpenAI's `context_length_exceeded`, llama.cpp's `exceed_context_size_error`,
    /// vLLM's "maximum context length" message).
    pub fn is_context_overflow(&self) -> bool {
        let named = |text: &Option<String>| {
            text.as_deref()
                .is_some_and(|text| text.contains("context_length") || text.contains("context_size"))
        };
        let message = self.message.to_lowercase();
        named(&self.code)
            || named(&self.kind)
            || message.contains("maximum context length")
            || message.contains("context length")
            || message.contains("context size")
            || message.contains("context window")
    }

    /// The message with the code or type appended when it adds something.
    pub fn describe(&self) -> String {
        let label = self
            .code
            .as_deref()
            .filter(|code| code.parse::<u16>().is_err())
            .or(self.kind.as_deref())
            .filter(|label| !self.message.contains(label));
        match label {
            Some(label) => format!("{} ({label})", self.message),
            None => self.message.clone(),
        }
    }
}

/// What one `data:` event means.
#[derive(Debug, PartialEq)]
pub enum EventOutcome {
    Chunks(Vec<Chunk>),
    /// `data: [DONE]`.
    Done,
    /// An error object, in any of its shapes.
    Error(ServerError),
}

/// Deserialises `null` as the type's default (empty list, absent object, 0).
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default, deserialize_with = "nullable")]
    choices: Vec<Option<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u64>,
    /// Streamed chunks carry `delta`.
    #[serde(default)]
    delta: Option<Delta>,
    /// A non-streamed body carries `message`.
    #[serde(default)]
    message: Option<Delta>,
    /// Legacy completions put the text here.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    /// A string, or a list of parts (`{"type": "text", "text": ...}`).
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<f64>,
    #[serde(default)]
    completion_tokens: Option<f64>,
    #[serde(default)]
    cost: Option<f64>,
}

/// A payload that is neither a chat-completions chunk (or completion) nor an
/// error in any shape a server sends; the text says what was wrong and shows
/// the start of the payload.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct NotAChunk(pub String);

/// Parses the `data` of one event. `event` is its SSE `event:` name (empty
/// for none). Errors name what was wrong with the payload.
pub fn parse_event(event: &str, data: &str) -> Result<EventOutcome, NotAChunk> {
    let data = data.trim();
    if event == "error" {
        let error = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|value| error_in(&value).or_else(|| bare_message(&value)))
            .unwrap_or_else(|| ServerError {
                message: if data.is_empty() {
                    "an `event: error` with no data".into()
                } else {
                    preview(data)
                },
                code: None,
                kind: None,
            });
        return Ok(EventOutcome::Error(error));
    }
    if data == "[DONE]" {
        return Ok(EventOutcome::Done);
    }
    let not_a_chunk = |err: serde_json::Error| {
        NotAChunk(format!("event is not a chat-completions chunk ({err}): {}", preview(data)))
    };
    let value: Value = serde_json::from_str(data).map_err(not_a_chunk)?;
    parse_value(&value).map_err(not_a_chunk)
}

/// Interprets a whole JSON body sent with HTTP 200 in place of a stream:
/// an error, or a non-streamed completion (whose chunks then end the call).
pub fn parse_body(body: &str) -> Result<EventOutcome, NotAChunk> {
    let value: Value = serde_json::from_str(body.trim())
        .map_err(|_| NotAChunk(format!("not a stream and not JSON: {}", preview(body))))?;
    if let Some(error) = error_in(&value) {
        return Ok(EventOutcome::Error(error));
    }
    if value.get("choices").is_none_or(Value::is_null) {
        return Err(NotAChunk(format!(
            "a JSON body that is neither a stream, a completion nor an error: {}",
            preview(body)
        )));
    }
    parse_value(&value)
        .map_err(|err| NotAChunk(format!("a JSON body that is not a completion ({err}): {}", preview(body))))
}

fn parse_value(value: &Value) -> Result<EventOutcome, serde_json::Error> {
    if let Some(error) = error_in(value) {
        return Ok(EventOutcome::Error(error));
    }
    let chunk = WireChunk::deserialize(value)?;
    let mut chunks = Vec::new();
    // Only the first choice: hivemesh never asks for `n` > 1.
    for choice in chunk.choices.into_iter().flatten().filter(|choice| choice.index.unwrap_or(0) == 0) {
        let content = choice.delta.or(choice.message).and_then(|delta| delta.content).map(content_text);
        if let Some(text) = content.or(choice.text).filter(|text| !text.is_empty()) {
            chunks.push(Chunk::Text(text));
        }
        if let Some(reason) = choice.finish_reason {
            chunks.push(Chunk::Finished { reason });
        }
    }
    if let Some(usage) = chunk.usage {
        let count =
            |tokens: Option<f64>| tokens.filter(|n| n.is_finite() && *n >= 0.0).map_or(0, |n| n as u64);
        chunks.push(Chunk::Usage(Usage {
            prompt_tokens: count(usage.prompt_tokens),
            completion_tokens: count(usage.completion_tokens),
            cost_usd: usage.cost,
        }));
    }
    Ok(EventOutcome::Chunks(chunks))
}

/// The text of a `content`: a string, or the text parts of a list.
fn content_text(content: Value) -> String {
    match content {
        Value::String(text) => text,
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str).is_none_or(|kind| kind == "text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str).or_else(|| part.as_str()))
            .collect(),
        _ => String::new(),
    }
}

/// The error a JSON object carries, in any shape servers use.
pub fn error_in(value: &Value) -> Option<ServerError> {
    let object = value.as_object()?;
    if let Some(error) = object.get("error").filter(|error| !error.is_null()) {
        return Some(error_from(error, value));
    }
    let tagged = |key: &str| object.get(key).and_then(Value::as_str) == Some("error");
    if tagged("object") || tagged("type") {
        return Some(error_from(value, value));
    }
    for choice in object.get("choices").and_then(Value::as_array).into_iter().flatten() {
        if let Some(error) = choice.get("error").filter(|error| !error.is_null()) {
            return Some(error_from(error, value));
        }
        if choice.get("finish_reason").and_then(Value::as_str) == Some("error") {
            return Some(ServerError {
                message: "the server ended the answer with finish_reason \"error\"".into(),
                code: None,
                kind: None,
            });
        }
    }
    None
}

/// Reads message, code and type from an error value: an object, or a bare string.
fn error_from(error: &Value, outer: &Value) -> ServerError {
    let text = |value: Option<&Value>| -> Option<String> {
        match value? {
            Value::Null => None,
            Value::String(text) if text.is_empty() => None,
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    };
    let field = |key: &str| text(error.get(key)).or_else(|| text(outer.get(key)));
    let message = match error {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        _ => field("message").or_else(|| field("detail")),
    };
    let kind = text(error.get("type")).filter(|kind| kind != "error");
    ServerError {
        message: message.unwrap_or_else(|| format!("unspecified error: {}", preview(&error.to_string()))),
        code: field("code"),
        kind,
    }
}

/// The error of a non-success body: any of the JSON shapes, else the text itself.
pub fn error_body(body: &str) -> ServerError {
    let parsed = serde_json::from_str::<Value>(body).ok();
    if let Some(error) = parsed.as_ref().and_then(|value| error_in(value).or_else(|| bare_message(value))) {
        return error;
    }
    let message = if body.trim().is_empty() { "(empty body)".into() } else { preview(body.trim()) };
    ServerError { message, code: None, kind: None }
}

/// `{"message": ...}` or `{"detail": ...}` without an error tag (FastAPI, some proxies).
fn bare_message(value: &Value) -> Option<ServerError> {
    let message = ["message", "detail"].iter().find_map(|key| match value.get(*key)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    })?;
    Some(error_from(&Value::String(message), value))
}

/// At most 200 bytes of `text`, cut at a character boundary.
pub fn preview(text: &str) -> String {
    const LIMIT: usize = 200;
    if text.len() <= LIMIT {
        return text.to_string();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &str) -> Vec<Chunk> {
        match parse_event("", data) {
            Ok(EventOutcome::Chunks(chunks)) => chunks,
            other => panic!("expected chunks from {data}, got {other:?}"),
        }
    }

    fn error(event: &str, data: &str) -> ServerError {
        match parse_event(event, data) {
            Ok(EventOutcome::Error(error)) => error,
            other => panic!("expected an error from {data}, got {other:?}"),
        }
    }

    #[test]
    fn text_finish_and_usage_with_cost() {
        assert_eq!(
            chunks(r#"{"choices":[{"delta":{"content":"Par"},"finish_reason":null}]}"#),
            [Chunk::Text("Par".into())]
        );
        assert_eq!(
            chunks(
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"cost":0.00042}}"#
            ),
            [
                Chunk::Finished { reason: "stop".into() },
                Chunk::Usage(Usage { prompt_tokens: 9, completion_tokens: 3, cost_usd: Some(0.00042) }),
            ]
        );
        assert_eq!(parse_event("", " [DONE] "), Ok(EventOutcome::Done));
    }

    #[test]
    fn null_is_absent_in_every_field_of_a_chunk() {
        for data in [
            r#"{"choices":null}"#,
            r#"{"choices":[null]}"#,
            r#"{"choices":[{"delta":null}]}"#,
            r#"{"choices":[{"delta":{"content":null,"role":null}}]}"#,
            r#"{"choices":[{"index":null,"delta":{"content":null},"finish_reason":null,"logprobs":null}]}"#,
            r#"{"choices":[],"usage":null,"error":null}"#,
            r#"{"id":null,"object":null,"created":null,"model":null,"choices":[{"text":null,"message":null}]}"#,
        ] {
            let outcome = parse_event("", data);
            assert!(
                matches!(&outcome, Ok(EventOutcome::Chunks(chunks)) if chunks.is_empty()),
                "{data}: {outcome:?}"
            );
        }
        assert_eq!(
            chunks(
                r#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":null,"completion_tokens":2,"cost":null}}"#
            ),
            [
                Chunk::Text("x".into()),
                Chunk::Usage(Usage { prompt_tokens: 0, completion_tokens: 2, cost_usd: None }),
            ]
        );
    }

    #[test]
    fn content_as_a_list_of_parts_and_legacy_text() {
        assert_eq!(
            chunks(
                r#"{"choices":[{"delta":{"content":[{"type":"text","text":"a"},{"type":"thinking","text":"no"},{"type":"text","text":"b"}]}}]}"#
            ),
            [Chunk::Text("ab".into())]
        );
        assert_eq!(chunks(r#"{"choices":[{"text":"legacy"}]}"#), [Chunk::Text("legacy".into())]);
        // A second choice (n > 1) is not mixed into the answer.
        assert_eq!(
            chunks(
                r#"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine"}}]}"#
            ),
            [Chunk::Text("mine".into())]
        );
    }

    #[test]
    fn every_error_shape_is_an_error() {
        let vllm = error(
            "",
            r#"{"object":"error","message":"Engine loop died: CUDA out of memory","type":"InternalServerError","param":null,"code":500}"#,
        );
        assert_eq!(vllm.message, "Engine loop died: CUDA out of memory");
        assert_eq!(vllm.code.as_deref(), Some("500"));
        assert_eq!(vllm.kind.as_deref(), Some("InternalServerError"));

        let openrouter = error(
            "",
            r#"{"error":{"message":"Provider disconnected","code":502},"choices":[{"delta":{"content":""},"finish_reason":"error"}]}"#,
        );
        assert_eq!(
            (openrouter.message.as_str(), openrouter.code.as_deref()),
            ("Provider disconnected", Some("502"))
        );

        assert_eq!(error("", r#"{"error":"overloaded"}"#).message, "overloaded");
        assert_eq!(
            error("", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
                .message,
            "Overloaded"
        );
        assert_eq!(
            error("", r#"{"choices":[{"error":{"message":"choice failed"}}]}"#).message,
            "choice failed"
        );
        assert!(
            error("", r#"{"choices":[{"delta":{},"finish_reason":"error"}]}"#)
                .message
                .contains("finish_reason")
        );
        assert_eq!(error("error", r#"{"message":"from an error event"}"#).message, "from an error event");
        assert_eq!(error("error", "plain words").message, "plain words");
        assert!(error("error", "").message.contains("no data"));
        // Text together with an error is still an error.
        assert_eq!(
            error("", r#"{"choices":[{"delta":{"content":"Paris"},"finish_reason":"error"}],"error":{"message":"cut"}}"#).message,
            "cut"
        );
    }

    #[test]
    fn bodies_and_context_overflow() {
        let broken = parse_event("", "{\"choices\": [").expect_err("broken JSON");
        assert!(broken.0.contains("not a chat-completions chunk"), "{broken}");
        assert_eq!(error_body(r#"{"error":{"message":"No auth"}}"#).message, "No auth");
        assert_eq!(error_body("plain text").message, "plain text");
        assert_eq!(error_body(r#"{"detail":"Not Found"}"#).message, "Not Found");
        let openai = error_body(
            r#"{"error":{"message":"This model's maximum context length is 2048 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
        );
        assert!(openai.is_context_overflow());
        assert!(openai.describe().ends_with("(context_length_exceeded)"), "{}", openai.describe());
        let llama = error_body(
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
        );
        assert!(llama.is_context_overflow());
        assert!(!error_body(r#"{"error":{"message":"bad key","code":401}}"#).is_context_overflow());

        assert_eq!(
            parse_body(r#"{"object":"error","message":"boom","code":500}"#),
            Ok(EventOutcome::Error(ServerError {
                message: "boom".into(),
                code: Some("500".into()),
                kind: None
            }))
        );
        assert_eq!(
            parse_body(
                r#"{"choices":[{"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}"#
            ),
            Ok(EventOutcome::Chunks(vec![
                Chunk::Text("Paris.".into()),
                Chunk::Finished { reason: "stop".into() }
            ]))
        );
        assert!(parse_body(r#"{"hello":1}"#).is_err());
        assert!(parse_body("<html>").is_err());
    }
}
