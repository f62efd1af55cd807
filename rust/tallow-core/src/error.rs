//! The one error type of the engine. tallow-py maps each variant to a Python exception
//! (`GGUFError`, `UnsupportedModelError`, `ContextOverflowError`, `ValueError`, ...).

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A malformed GGUF file: where it went wrong and what was being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufError {
    /// Byte offset in the file where the bad field starts.
    pub offset: u64,
    /// The field being read, e.g. `"tensor_info[3].n_dims"` or `"kv[\"general.alignment\"]"`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (field {}, byte offset {})", self.message, self.field, self.offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid GGUF file: {0}")]
    Gguf(GgufError),
    /// A valid GGUF whose architecture, tensor type or hyperparameters tallow does not support.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("{0}")]
    ContextOverflow(String),
    /// A bad argument from the caller; `param` names it.
    #[error("invalid value for '{param}': {message}")]
    InvalidArgument { param: &'static str, message: String },
    #[error("chat template error: {0}")]
    Template(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The sampler got logits it cannot sample from (all -inf or NaN).
    #[error("sampling error: {0}")]
    Sampling(String),
    #[error("generation cancelled")]
    Cancelled,
    #[error("engine overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline passed before it finished (it stopped there, its slot freed).
    #[error("the request timed out: {0}")]
    Timeout(String),
    /// The model was closed (`Engine::close`): the request was refused or stopped.
    #[error("the model is closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A bug in tallow (a caught panic). Never expected; reported instead of aborting.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn gguf(offset: u64, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Gguf(GgufError { offset, field: field.into(), message: message.into() })
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument { param, message: message.into() }
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::UnsupportedModel(message.into())
    }
}
