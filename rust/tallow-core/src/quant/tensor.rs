//! `QTensor`: a quantized 2-D weight, borrowed from the mapped GGUF file.

use super::QType;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use std::sync::Arc;

/// Where a tensor's bytes live: in the map (zero-copy) or in an owned buffer (repacked,
/// or copied because the file's data were misaligned for the block type).
#[derive(Clone)]
enum Bytes {
    Mapped {
        file: Arc<GgufFile>,
        start: usize,
        len: usize,
    },
    /// u64 storage keeps every block type aligned.
    Owned {
        buf: Arc<[u64]>,
        len: usize,
    },
}

/// A weight matrix of `rows` rows of `cols` elements in GGML layout: `shape = [cols, rows]`
/// (ne0 = cols is contiguous). 1-D tensors (norm weights) have `rows = 1`.
#[derive(Clone)]
pub struct QTensor {
    pub name: String,
    pub qtype: QType,
    pub cols: usize,
    pub rows: usize,
    bytes: Bytes,
}

impl std::fmt::Debug for QTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QTensor({} {} [{} x {}])", self.name, self.qtype, self.rows, self.cols)
    }
}

impl QTensor {
    /// Views tensor `t` of `file`. Tensors of 3 or 4 dims with trailing 1s are accepted as 2-D.
    pub fn from_gguf(file: &Arc<GgufFile>, t: &TensorInfo) -> Result<QTensor> {
        if t.shape.iter().skip(2).any(|&d| d != 1) {
            return Err(Error::unsupported(format!(
                "tensor {:?} has shape {:?}; expected at most 2 dims",
                t.name, t.shape
            )));
        }
        let cols = t.shape.first().copied().unwrap_or(1) as usize;
        let rows = t.shape.get(1).copied().unwrap_or(1) as usize;
        let data = file.tensor_data(t);
        let align = super::block_align(t.qtype);
        let bytes = if (data.as_ptr() as usize).is_multiple_of(align) {
            let start = (file.data_offset() + t.offset) as usize;
            Bytes::Mapped { file: file.clone(), start, len: data.len() }
        } else {
            Self::owned_copy(data)
        };
        Ok(QTensor { name: t.name.clone(), qtype: t.qtype, cols, rows, bytes })
    }

    /// A tensor over owned bytes (tests, synthetic weights, repacked layouts).
    pub fn from_bytes(name: &str, qtype: QType, rows: usize, cols: usize, data: &[u8]) -> Result<QTensor> {
        let want = qtype
            .row_bytes(cols as u64)
            .and_then(|r| r.checked_mul(rows as u64))
            .ok_or_else(|| Error::invalid("cols", format!("{cols} is not a multiple of the {qtype} block size")))?;
        if want != data.len() as u64 {
            return Err(Error::invalid(
                "data",
                format!("expected {want} bytes for {rows}x{cols} {qtype}, got {}", data.len()),
            ));
        }
        Ok(QTensor { name: name.to_string(), qtype, cols, rows, bytes: Self::owned_copy(data) })
    }

    fn owned_copy(data: &[u8]) -> Bytes {
        let mut buf = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: `buf` has at least `data.len()` bytes; u64 has no invalid bit patterns.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_mut_ptr() as *mut u8, data.len()) };
        Bytes::Owned { buf: buf.into(), len: data.len() }
    }

    /// The raw blocks, row after row.
    pub fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { file, start, len } => &file.bytes()[*start..*start + *len],
            Bytes::Owned { buf, len } => {
                // SAFETY: `buf` holds at least `len` initialised bytes.
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, *len) }
            }
        }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data().len() / self.rows.max(1)
    }

    /// The raw blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data()[r * rb..(r + 1) * rb]
    }
}
