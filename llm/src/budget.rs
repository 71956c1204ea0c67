//! A job's spending limit, shared by every call the job makes.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::LlmError;

/// Money and tokens a job may spend. Clones share one account.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    inner: Arc<Mutex<Account>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Account {
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub spent_usd: f64,
    pub tokens: u64,
    pub calls: u64,
}

impl Budget {
    pub fn unlimited() -> Self {
        Self::default()
    }

    pub fn new(max_cost_usd: Option<f64>, max_tokens: Option<u64>) -> Self {
        Self { inner: Arc::new(Mutex::new(Account { max_cost_usd, max_tokens, ..Account::default() })) }
    }

    pub fn snapshot(&self) -> Account {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses a new call once either limit has been reached.
    pub fn check(&self) -> Result<(), LlmError> {
        let account = self.snapshot();
        if let Some(budget) = account.max_cost_usd
            && account.spent_usd >= budget
        {
            return Err(LlmError::BudgetExceeded { spent: account.spent_usd, budget });
        }
        if let Some(budget) = account.max_tokens
            && account.tokens >= budget
        {
            return Err(LlmError::TokenBudgetExceeded { used: account.tokens, budget });
        }
        Ok(())
    }

    /// Counts streamed tokens; fails as soon as the token limit is passed, so a
    /// runaway generation is stopped mid-stream.
    pub fn spend_tokens(&self, tokens: u64) -> Result<(), LlmError> {
        let mut account = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        account.tokens += tokens;
        match account.max_tokens {
            Some(budget) if account.tokens > budget => {
                Err(LlmError::TokenBudgetExceeded { used: account.tokens, budget })
            }
            _ => Ok(()),
        }
    }

    /// Records a finished call's reported cost.
    pub fn record_call(&self, cost_usd: Option<f64>) {
        let mut account = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        account.calls += 1;
        account.spent_usd += cost_usd.unwrap_or(0.0);
    }
}
