//! `POST /embeddings`, OpenAI's shape (Ollama, vLLM, llama.cpp and OpenAI
//! itself speak it).

use serde::{Deserialize, Serialize};

use super::{OpenAiProvider, read_bounded, transport_error};
use crate::LlmError;
use crate::provider::sse::error_body_message;

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<Embedding>,
}

#[derive(Deserialize)]
struct Embedding {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiProvider {
    /// Embeddings of `texts` with `model`, in the order given.
    pub(super) async fn embeddings(&self, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        let name = self.config.name.clone();
        let url = format!("{}/embeddings", self.config.base_url);
        let mut builder = self.http.post(&url).json(&EmbeddingRequest { model, input: texts });
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = tokio::time::timeout(self.config.response_timeout, builder.send())
            .await
            .map_err(|_| LlmError::Timeout {
                provider: name.clone(),
                message: format!("no embeddings within {:?}", self.config.response_timeout),
            })?
            .map_err(|err| transport_error(&name, &err))?;
        let status = response.status();
        if !status.is_success() {
            let message = error_body_message(&read_bounded(response).await);
            return Err(LlmError::Status {
                provider: name,
                status: status.as_u16(),
                message,
                retry_after: None,
            });
        }
        let malformed = |message: String| LlmError::Malformed { provider: name.clone(), message };
        let body: EmbeddingResponse =
            response.json().await.map_err(|e| malformed(format!("embeddings response: {e}")))?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for item in body.data {
            let slot = vectors.get_mut(item.index).ok_or_else(|| {
                malformed(format!("embedding index {} for {} inputs", item.index, texts.len()))
            })?;
            *slot = Some(item.embedding);
        }
        let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
        if vectors.len() != texts.len() {
            return Err(malformed(format!("{} embeddings for {} inputs", vectors.len(), texts.len())));
        }
        Ok(vectors)
    }
}
