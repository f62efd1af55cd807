//! User-facing description of a model file (`tallow.Model.info`) and of the build.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::model::ModelConfig;
use crate::quant::QType;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: Option<String>,
    pub n_params: u64,
    /// llama.cpp's file type name (`Q4_K_M`, `Q4_1`, ...), or the dominant tensor type.
    pub quantization: String,
    pub context_length: Option<u64>,
    pub vocab_size: usize,
    pub chat_template: Option<String>,
}

impl ModelInfo {
    /// Describes `file`, whose hyperparameters `config` has already validated.
    pub fn new(file: &GgufFile, config: &ModelConfig) -> Result<ModelInfo> {
        let architecture = file.architecture()?.to_string();
        let n_params = config.n_params;
        let quantization = match &config.file_type {
            Some(name) => name.clone(),
            None => dominant_type(file).map(|t| t.name().to_string()).unwrap_or_else(|| "unknown".into()),
        };
        let context_length = file.get_u64(&format!("{architecture}.context_length"))?;
        let vocab_size = file.get_array("tokenizer.ggml.tokens")?.map(|a| a.len()).unwrap_or(0);
        Ok(ModelInfo {
            name: file.get_str("general.name")?.map(str::to_string),
            chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_string),
            architecture,
            n_params,
            quantization,
            context_length,
            vocab_size,
        })
    }
}

/// The tensor type holding the most bytes.
fn dominant_type(file: &GgufFile) -> Option<QType> {
    let mut bytes: Vec<(QType, u64)> = Vec::new();
    for t in file.tensors() {
        match bytes.iter_mut().find(|(q, _)| *q == t.qtype) {
            Some((_, n)) => *n += t.n_bytes,
            None => bytes.push((t.qtype, t.n_bytes)),
        }
    }
    bytes.into_iter().max_by_key(|(_, n)| *n).map(|(q, _)| q)
}

/// Key facts about this build and machine, for `tallow.build_info()`.
pub fn build_info() -> Vec<(&'static str, String)> {
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(if std::is_x86_feature_detected!($f) { features.push($f); })*};
        }
        probe!("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            features.push("dotprod");
        }
    }
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("target_arch", std::env::consts::ARCH.to_string()),
        ("kernels", crate::quant::kernels().name().to_string()),
        ("cpu_features", features.join(",")),
        ("n_cpus", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()),
    ]
}
