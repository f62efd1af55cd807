//! tallow-core: the engine behind the `tallow` Python package. Pure Rust, no pyo3.
//!
//! Data path: [`gguf`] file -> [`tokenizer`] -> [`model`] forward over [`quant`] kernels ->
//! [`sampler`] -> [`engine`] events.

pub mod chat_template;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod info;
pub mod kv_cache;
mod load;
pub mod model;
pub mod quant;
pub mod sampler;
mod simd;
pub mod threadpool;
pub mod tokenizer;

pub use error::{Error, GgufError, Result};
pub use info::build_info;
pub use load::{load, LoadOptions, LoadedModel};
