//! `POST /embeddings`, OpenAI's shape (Ollama, vLLM, llama.cpp and OpenAI
//! itself speak it). Liberal in what it reads: a server that returns one
//! vector per token (llama.cpp's server with some models: a nested list) gets
//! its vectors mean-pooled into one; anything else is an error naming the
//! shape received.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OpenAiProvider;
use super::wire::preview;
use crate::LlmError;

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

/// One vector per text (`inputs` of them), in input order, from the body
/// of an OpenAI-compatible embeddings response (OpenAI's `{"data": [...]}`
/// or llama.cpp's bare list; per-token vectors mean-pooled). A body of any
/// other shape is `LlmError::Malformed` naming `provider` and the shape.
pub fn embeddings_response(provider: &str, body: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, LlmError> {
    parse_embeddings(body, inputs).map_err(|message| LlmError::Malformed {
        provider: provider.to_string(),
        message: format!("embeddings: {message}"),
    })
}

/// One vector per text, in input order, from the JSON of an embeddings
/// response. Errors say what shape arrived.
pub(super) fn parse_embeddings(body: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        format!("embeddings response is not JSON ({err}): {}", preview(&String::from_utf8_lossy(body)))
    })?;
    // OpenAI's `{"data": [...]}`, or llama.cpp's bare list.
    let items = match &value {
        Value::Object(object) => object.get("data").and_then(Value::as_array),
        Value::Array(items) => Some(items),
        _ => None,
    }
    .ok_or_else(|| format!("embeddings response has no `data` list: {}", preview(&value.to_string())))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (position, item) in items.iter().enumerate() {
        let index = match item.get("index") {
            None | Some(Value::Null) => position,
            Some(index) => index
                .as_u64()
                .and_then(|index| usize::try_from(index).ok())
                .ok_or_else(|| format!("embedding index {index} is not a count"))?,
        };
        let slot =
            vectors.get_mut(index).ok_or_else(|| format!("embedding index {index} for {inputs} inputs"))?;
        let embedding = item.get("embedding").unwrap_or(&Value::Null);
        *slot = Some(vector(embedding).map_err(|shape| format!("embedding {index}: {shape}"))?);
    }
    let found = vectors.iter().flatten().count();
    if found != inputs {
        return Err(format!("{found} embeddings for {inputs} inputs"));
    }
    Ok(vectors.into_iter().flatten().collect())
}

/// A flat list of numbers as is; a list of per-token lists mean-pooled.
fn vector(embedding: &Value) -> Result<Vec<f32>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Flat(Vec<f32>),
        PerToken(Vec<Vec<f32>>),
    }
    match Shape::deserialize(embedding) {
        Ok(Shape::Flat(vector)) if !vector.is_empty() => Ok(vector),
        Ok(Shape::PerToken(tokens)) if !tokens.is_empty() => {
            let width = tokens[0].len();
            if width == 0 || tokens.iter().any(|token| token.len() != width) {
                return Err(format!(
                    "one vector per token ({} tokens) of unequal or zero widths",
                    tokens.len()
                ));
            }
            let mut mean = vec![0.0_f32; width];
            for token in &tokens {
                for (sum, value) in mean.iter_mut().zip(token) {
                    *sum += value;
                }
            }
            let count = tokens.len() as f32;
            mean.iter_mut().for_each(|sum| *sum /= count);
            Ok(mean)
        }
        _ => Err(format!(
            "expected a list of numbers or one list per token, got {}",
            preview(&embedding.to_string())
        )),
    }
}

impl OpenAiProvider {
    /// Embeddings of `texts` with `model`, in the order given.
    pub(super) async fn embeddings(&self, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        let url = format!("{}/embeddings", self.config.base_url);
        let response =
            self.send(self.http.post(&url).json(&EmbeddingRequest { model, input: texts })).await?;
        let name = &self.config.name;
        let body = response.bytes().await.map_err(|err| super::transport_error(name, &err))?;
        embeddings_response(name, &body, texts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_vectors_by_index_and_per_token_vectors_mean_pooled() {
        let openai = br#"{"data":[{"index":1,"embedding":[3,4]},{"index":0,"embedding":[1,2]}]}"#;
        assert_eq!(parse_embeddings(openai, 2), Ok(vec![vec![1.0, 2.0], vec![3.0, 4.0]]));
        let per_token = br#"{"data":[{"index":0,"embedding":[[1,2],[3,6]]}]}"#;
        assert_eq!(parse_embeddings(per_token, 1), Ok(vec![vec![2.0, 4.0]]));
        let bare_list = br#"[{"index":0,"embedding":[[1,1]]}]"#;
        assert_eq!(parse_embeddings(bare_list, 1), Ok(vec![vec![1.0, 1.0]]));
    }

    #[test]
    fn other_shapes_are_named() {
        let ragged =
            parse_embeddings(br#"{"data":[{"index":0,"embedding":[[1,2],[3]]}]}"#, 1).expect_err("ragged");
        assert!(ragged.contains("per token"), "{ragged}");
        let text = parse_embeddings(br#"{"data":[{"index":0,"embedding":"AAAA"}]}"#, 1).expect_err("base64");
        assert!(text.contains("expected a list of numbers"), "{text}");
        let missing = parse_embeddings(br#"{"data":[]}"#, 1).expect_err("none");
        assert!(missing.contains("0 embeddings for 1 inputs"), "{missing}");
        let error = parse_embeddings(br#"{"error":{"message":"x"}}"#, 1).expect_err("no data");
        assert!(error.contains("no `data` list"), "{error}");
    }
}
