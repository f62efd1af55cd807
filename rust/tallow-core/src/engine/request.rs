//! What a caller submits to the engine and what it gets back.

use super::logprobs::{TokenLogprobs, MAX_TOP_LOGPROBS};
use crate::error::{Error, Result};
use crate::sampler::SamplingParams;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Generation settings beyond sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Upper bound on generated tokens; generation also ends at the context's end.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are never emitted.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// `Some(n)`: each token's event carries its log-probability and the `n` most likely
    /// tokens at its position (`n <= MAX_TOP_LOGPROBS`).
    pub logprobs: Option<usize>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl GenerateParams {
    /// Checks every setting against a vocabulary of `n_vocab` tokens; the error names the
    /// first bad one.
    pub fn validate(&self, n_vocab: usize) -> Result<()> {
        self.sampling.validate()?;
        if let Some(&(id, _)) = self.sampling.logit_bias.iter().find(|&&(id, _)| id as usize >= n_vocab) {
            return Err(Error::invalid(
                "logit_bias",
                format!("token id {id} is outside the vocabulary (size {n_vocab})"),
            ));
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::invalid("logprobs", format!("must be in [0, {MAX_TOP_LOGPROBS}], got {n}")));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV entries were reused from an earlier request of the same session.
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub enum Event {
    /// One sampled token and the text it releases (may be empty while a UTF-8 character or a
    /// possible stop string is incomplete).
    Token {
        id: u32,
        text: String,
        /// When the request asked for them (`GenerateParams::logprobs`).
        logprobs: Option<Box<TokenLogprobs>>,
    },
    /// Text released at the end without a new token (held-back bytes or a partial stop string
    /// that never completed).
    Text(String),
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    Error(Error),
}

/// Where the engine delivers a request's events. `send` returns false once nobody listens,
/// which cancels the request.
pub trait EventSink: Send {
    fn send(&mut self, event: Event) -> bool;
}

impl EventSink for std::sync::mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        std::sync::mpsc::Sender::send(self, event).is_ok()
    }
}

/// Shared flag a caller sets to stop its request at the next token or prefill chunk.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The prompt of a request: text to tokenize, or token ids.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text { text: String, add_bos: bool, special: bool },
    Tokens(Vec<u32>),
}
