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
        ("matmul_tiles", matmul_tiles()),
        ("attention", crate::model::attention_kernel().to_string()),
        ("cpu_features", features.join(",")),
        ("n_cpus", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()),
    ]
}

/// The row × token tiles `matmul` computes with on this CPU, from the layout it reads
/// ([`crate::quant::layout_rows`]): `"avx512vnni x16: Q4_0,...,Q6_K"` (16 rows × 1 to 4 tokens on
/// weights repacked 16 rows at a time), `"avx2 4x1,1x4: Q4_0,..."` (the 4-row tiles), both
/// joined by `"; "` if both serve some type; `"none"` without tiles (`TALLOW_KERNELS=scalar`, no
/// AVX2, not x86-64).
fn matmul_tiles() -> String {
    let by_rows = |rows: usize| -> Vec<&'static str> {
        QType::ALL.into_iter().filter(|&q| crate::quant::layout_rows(q) == rows).map(|q| q.name()).collect()
    };
    let mut parts: Vec<String> = Vec::new();
    for (rows, label) in [(16, "avx512vnni x16"), (crate::quant::INTERLEAVE, "avx2 4x1,1x4")] {
        let names = by_rows(rows);
        if !names.is_empty() {
            parts.push(format!("{label}: {}", names.join(",")));
        }
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_the_kernels_in_use() {
        let info = build_info();
        let get = |key: &str| info.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str()).unwrap();
        let (kernels, tiles, attention) = (get("kernels"), get("matmul_tiles"), get("attention"));
        assert!(["avx512", "portable"].contains(&attention), "{attention}");
        if kernels == "scalar" {
            // TALLOW_KERNELS=scalar: the reference path everywhere.
            assert_eq!((tiles, attention), ("none", "portable"));
        }
        // The tiles follow matmul's per-type choice.
        assert_eq!(tiles == "none", !QType::ALL.into_iter().any(crate::quant::tiles_for), "{tiles}");
        for q in QType::ALL.into_iter().filter(|&q| crate::quant::tiles_for(q)) {
            assert!(tiles.split([' ', ',', ';', ':']).any(|w| w == q.name()), "{q:?} missing from {tiles:?}");
        }
        #[cfg(target_arch = "x86_64")]
        if kernels == "avx512vnni" {
            assert!(tiles.starts_with("avx512vnni x16: Q4_0,"), "{tiles}");
        } else if kernels == "avx2" {
            assert!(tiles.starts_with("avx2 4x1,1x4: Q4_0"), "{tiles}");
        }
    }
}
