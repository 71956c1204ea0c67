//! Turning an OpenAI-style SSE event into chunks. Pure: no I/O, so it is
//! tested on literal payloads.

use serde::Deserialize;

use crate::{Chunk, Usage};

/// What one `data:` event means.
#[derive(Debug, PartialEq)]
pub enum EventOutcome {
    Chunks(Vec<Chunk>),
    /// `data: [DONE]`.
    Done,
    /// An error object inside the stream.
    Error {
        message: String,
        code: Option<String>,
    },
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct StreamChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    cost: Option<f64>,
}

#[derive(Deserialize)]
pub struct WireError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl WireError {
    fn into_parts(self) -> (String, Option<String>) {
        let code = self.code.map(|code| match code {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        });
        (self.message.unwrap_or_else(|| "unspecified error".into()), code)
    }
}

/// Parses the `data` of one event. Errors name what was wrong with the payload.
pub fn parse_event(data: &str) -> Result<EventOutcome, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(EventOutcome::Done);
    }
    let chunk: StreamChunk = serde_json::from_str(data)
        .map_err(|err| format!("event is not a chat-completions chunk ({err}): {}", preview(data)))?;
    if let Some(error) = chunk.error {
        let (message, code) = error.into_parts();
        return Ok(EventOutcome::Error { message, code });
    }
    let mut chunks = Vec::new();
    for choice in chunk.choices {
        if let Some(error) = choice.error {
            let (message, code) = error.into_parts();
            return Ok(EventOutcome::Error { message, code });
        }
        if let Some(text) = choice.delta.and_then(|delta| delta.content).filter(|text| !text.is_empty()) {
            chunks.push(Chunk::Text(text));
        }
        match choice.finish_reason {
            Some(reason) if reason == "error" => {
                return Ok(EventOutcome::Error { message: "finish_reason \"error\"".into(), code: None });
            }
            Some(reason) => chunks.push(Chunk::Finished { reason }),
            None => {}
        }
    }
    if let Some(usage) = chunk.usage {
        chunks.push(Chunk::Usage(Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: usage.cost,
        }));
    }
    Ok(EventOutcome::Chunks(chunks))
}

/// The message of a non-streamed error body (`{"error": {"message": ...}}`), or the body itself.
pub fn error_body_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: WireError,
    }
    match serde_json::from_str::<Body>(body) {
        Ok(parsed) => parsed.error.into_parts().0,
        Err(_) if body.trim().is_empty() => "(empty body)".into(),
        Err(_) => preview(body),
    }
}

fn preview(text: &str) -> String {
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

    #[test]
    fn text_finish_and_usage_with_cost() {
        let outcome =
            parse_event(r#"{"choices":[{"delta":{"content":"Par"},"finish_reason":null}]}"#).expect("chunk");
        assert_eq!(outcome, EventOutcome::Chunks(vec![Chunk::Text("Par".into())]));
        let last = parse_event(
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"cost":0.00042}}"#,
        )
        .expect("chunk");
        assert_eq!(
            last,
            EventOutcome::Chunks(vec![
                Chunk::Finished { reason: "stop".into() },
                Chunk::Usage(Usage { prompt_tokens: 9, completion_tokens: 3, cost_usd: Some(0.00042) }),
            ])
        );
    }

    #[test]
    fn done_and_errors() {
        assert_eq!(parse_event(" [DONE] "), Ok(EventOutcome::Done));
        let error = parse_event(
            r#"{"error":{"message":"Provider disconnected","code":502},"choices":[{"delta":{"content":""},"finish_reason":"error"}]}"#,
        );
        assert_eq!(
            error,
            Ok(EventOutcome::Error { message: "Provider disconnected".into(), code: Some("502".into()) })
        );
        let broken = parse_event("{\"choices\": [").expect_err("broken JSON");
        assert!(broken.contains("not a chat-completions chunk"), "{broken}");
        assert_eq!(error_body_message(r#"{"error":{"message":"No auth"}}"#), "No auth");
        assert_eq!(error_body_message("plain text"), "plain text");
    }
}
