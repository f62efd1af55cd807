//! Builds GGUF files in memory: for tests, fuzz seeds and synthetic models.
//!
//! Layout written (little-endian): magic, version, n_tensors, n_kv, the metadata entries, the
//! tensor infos, zero padding to the alignment, then each tensor's bytes padded to the
//! alignment. Version 1 writes u32 counts and lengths (only useful to test rejection).

use super::value::{Value, ValueType};
use super::{GGUF_DEFAULT_ALIGNMENT, GGUF_MAX_DIMS, GGUF_MAX_NAME};
use crate::error::{Error, Result};
use crate::quant::QType;
use std::path::Path;

struct PendingTensor {
    name: String,
    /// GGML order: `shape[0]` is the row length.
    shape: Vec<u64>,
    qtype: QType,
    data: Vec<u8>,
}

/// A GGUF under construction. Keys keep insertion order; adding a key twice replaces it.
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A version 3 file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter { version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Sets the version written in the header (1, 2 or 3; anything else is written as is).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Writes `general.alignment` (a u32) and pads the data section to it.
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.add_kv("general.alignment", Value::U32(alignment))
    }

    /// Adds (or replaces) a metadata entry.
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor of `qtype` with GGML `shape` (`shape[0]` = row length) and its raw bytes,
    /// which must be exactly the tensor's size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        qtype: QType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if name.is_empty() || name.len() >= GGUF_MAX_NAME {
            return Err(Error::invalid("name", format!("tensor name must be 1..{GGUF_MAX_NAME} bytes")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::invalid("name", format!("duplicate tensor name {name:?}")));
        }
        if shape.len() > GGUF_MAX_DIMS {
            return Err(Error::invalid("shape", format!("at most {GGUF_MAX_DIMS} dimensions")));
        }
        let n_elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let ne0 = shape.first().copied().unwrap_or(1);
        let n_bytes = n_elements
            .filter(|_| ne0.is_multiple_of(qtype.block_size() as u64))
            .and_then(|n| (n / qtype.block_size() as u64).checked_mul(qtype.type_size() as u64));
        match n_bytes {
            Some(n) if n == data.len() as u64 => {}
            Some(n) => {
                return Err(Error::invalid("data", format!("tensor {name:?} needs {n} bytes, got {}", data.len())))
            }
            None => {
                return Err(Error::invalid(
                    "shape",
                    format!("{shape:?} is not a whole number of {qtype} rows (block size {})", qtype.block_size()),
                ))
            }
        }
        self.tensors.push(PendingTensor { name, shape: shape.to_vec(), qtype, data });
        Ok(self)
    }

    /// Adds an F32 tensor from values.
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, shape: &[u64], values: &[f32]) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape, QType::F32, data)
    }

    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            _ => GGUF_DEFAULT_ALIGNMENT,
        }
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = ByteSink { out: Vec::new(), version: self.version };
        let align = self.alignment() as usize;
        w.out.extend_from_slice(b"GGUF");
        w.u32(self.version);
        w.len(self.tensors.len() as u64);
        w.len(self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            w.string(key);
            w.u32(value.value_type() as u32);
            w.value(value);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            w.string(&t.name);
            w.u32(t.shape.len() as u32);
            for &d in &t.shape {
                w.len(d);
            }
            w.u32(t.qtype as u32);
            w.u64(offset as u64);
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        w.pad(align);
        for t in &self.tensors {
            w.out.extend_from_slice(&t.data);
            w.pad(align);
        }
        w.out
    }

    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| Error::Io { path: path.display().to_string(), source })
    }
}

struct ByteSink {
    out: Vec<u8>,
    version: u32,
}

impl ByteSink {
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    /// Counts and lengths: u32 in v1, u64 after.
    fn len(&mut self, n: u64) {
        if self.version == 1 {
            self.u32(n as u32)
        } else {
            self.u64(n)
        }
    }
    fn string(&mut self, s: &str) {
        self.len(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn pad(&mut self, align: usize) {
        let n = self.out.len().next_multiple_of(align);
        self.out.resize(n, 0);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::U8(x) => self.out.push(*x),
            Value::I8(x) => self.out.push(*x as u8),
            Value::U16(x) => self.out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => self.out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => self.u32(*x),
            Value::I32(x) => self.out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => self.u32(x.to_bits()),
            Value::Bool(x) => self.out.push(*x as u8),
            Value::String(s) => self.string(s),
            Value::U64(x) => self.u64(*x),
            Value::I64(x) => self.out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => self.u64(x.to_bits()),
            Value::Array(a) => {
                self.u32(a.element_type() as u32);
                self.len(a.len() as u64);
                for i in 0..a.len() {
                    if let Some(x) = a.get(i) {
                        debug_assert_ne!(x.value_type(), ValueType::Array);
                        self.value(&x);
                    }
                }
            }
        }
    }
}
