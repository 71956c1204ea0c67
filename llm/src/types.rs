//! The request and stream vocabulary every provider speaks.

use serde::{Deserialize, Serialize};

/// One chat message, as the OpenAI chat-completions API spells it. The
/// fields of a tool-using conversation (`tool_calls`, `tool_call_id`,
/// `name`) travel with it unaltered; `content` null reads as empty, and an
/// assistant message with tool calls and no text is written with `content`
/// null again (some servers refuse an empty text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// The calls an assistant message asked for.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// The author's name (a participant or a tool).
    #[serde(default)]
    pub name: Option<String>,
}

impl Serialize for ChatMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut message = serializer.serialize_struct("ChatMessage", 5)?;
        message.serialize_field("role", &self.role)?;
        let calls_only = self.content.is_empty() && self.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        message.serialize_field("content", &(!calls_only).then_some(&self.content))?;
        if let Some(calls) = &self.tool_calls {
            message.serialize_field("tool_calls", calls)?;
        }
        if let Some(id) = &self.tool_call_id {
            message.serialize_field("tool_call_id", id)?;
        }
        if let Some(name) = &self.name {
            message.serialize_field("name", name)?;
        }
        message.end()
    }
}

/// One tool call of an assistant message, as OpenAI spells it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    /// Always `function` today.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function a tool call names, with its arguments as the model wrote them (JSON text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: "system".into(), content: content.into(), ..Self::default() }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self { role: "user".into(), content: content.into(), ..Self::default() }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: "assistant".into(), content: content.into(), ..Self::default() }
    }
}

/// What a caller asks a provider for. `model` empty means the provider's default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Sampling seed; the embedded model is reproducible under a fixed seed.
    pub seed: Option<u64>,
    /// Nucleus sampling: only the tokens of this much probability mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Sequences at which the provider stops generating (not included in the text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// OpenAI's presence penalty, -2.0 to 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// OpenAI's frequency penalty, -2.0 to 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            temperature: 0.0,
            max_tokens: 256,
            seed: None,
            top_p: None,
            stop: Vec::new(),
            presence_penalty: None,
            frequency_penalty: None,
        }
    }
}

/// Token counts and, where the provider reports one (OpenRouter), the cost in USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Option<f64>,
}

/// One item of a streamed completion.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// Generated text, in order.
    Text(String),
    /// Usage as reported by the provider (usually in the last event).
    Usage(Usage),
    /// The provider said it is done, and why (`stop`, `length`, ...).
    Finished { reason: String },
    /// Marks a completion replayed from the result cache (no provider call).
    Cached,
}

/// A whole completion, collected from a stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    /// Number of text chunks seen; the token count when the provider reports no usage.
    pub chunks: u64,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// Served from the result cache, no provider call made.
    pub cached: bool,
}

impl Completion {
    /// Completion tokens: the provider's count when it reported one, else the chunks seen.
    pub fn tokens(&self) -> u64 {
        self.usage.map_or(self.chunks, |usage| usage.completion_tokens)
    }

    pub fn absorb(&mut self, chunk: &Chunk) {
        match chunk {
            Chunk::Text(text) => {
                self.text.push_str(text);
                self.chunks += 1;
            }
            Chunk::Usage(usage) => self.usage = Some(*usage),
            Chunk::Finished { reason } => self.finish_reason = Some(reason.clone()),
            Chunk::Cached => self.cached = true,
        }
    }
}
