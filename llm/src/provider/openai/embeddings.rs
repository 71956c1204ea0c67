//! `POST /embeddings`, OpenAI's shape (Ollama, vLLM, llama.cpp and OpenAI
//! itself speak it).

use serde::{Deserialize, Serialize};

use super::OpenAiProvider;
use crate::LlmError;

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
        let url = format!("{}/embeddings", self.config.base_url);
        let response =
            self.send(self.http.post(&url).json(&EmbeddingRequest { model, input: texts })).await?;
        let name = self.config.name.clone();
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
