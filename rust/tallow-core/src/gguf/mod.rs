//! GGUF v2/v3 files over a memory map: header, typed metadata, tensor table and zero-copy
//! tensor views. See `reader.rs` for the hostile-input rules, `writer.rs` for building files
//! and `inspect.rs` for the `tallow inspect` report.

mod inspect;
mod reader;
mod value;
mod writer;

pub use inspect::{escape_for_terminal, render_inspect};
pub use reader::metadata_budget;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

use crate::error::{Error, Result};
use crate::quant::QType;
use std::path::Path;

pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Upper bound on `general.alignment`; real files use 32.
pub const GGUF_MAX_ALIGNMENT: u64 = 1 << 20;
pub const GGUF_MAX_DIMS: usize = 4;
/// Tensor names are at most 63 bytes (GGML_MAX_NAME counts the NUL).
pub const GGUF_MAX_NAME: usize = 64;
/// Metadata keys are at most 65535 bytes (GGUF spec).
pub const GGUF_MAX_KEY: usize = 65535;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `shape[0]` is the row length (innermost, contiguous).
    pub shape: Vec<u64>,
    pub qtype: QType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
    pub n_elements: u64,
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the map and is borrowed, never copied.
pub struct GgufFile {
    storage: Storage,
    /// Where the GGUF starts in `storage` (non-zero for a GGUF embedded in another file).
    start: u64,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_offsets: Vec<u64>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`. The file size is taken once, at open.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::open_at(path, 0)
    }

    /// Like [`GgufFile::open`] for a GGUF that starts `start` bytes into the file. Offsets in
    /// errors and [`GgufFile::data_offset`] are relative to the file; alignment is relative
    /// to the GGUF's start.
    pub fn open_at(path: impl AsRef<Path>, start: u64) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::other("is a directory"),
            });
        }
        if meta.len() == 0 {
            return Err(Error::gguf(0, "magic", "not a GGUF file (empty file)"));
        }
        // SAFETY: the map is read-only. If another process truncates the file while it is
        // mapped, reads past the new end fault (SIGBUS); that risk is shared by every
        // mmap-based loader and documented in the README.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mmap(mmap), start)
    }

    /// Parses a GGUF held in memory (tests, fuzzing, files embedded in other containers).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes), 0)
    }

    /// Parses a GGUF that starts `start` bytes into `bytes` (see [`GgufFile::open_at`]).
    pub fn from_bytes_at(bytes: Vec<u8>, start: u64) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes), start)
    }

    fn from_storage(storage: Storage, start: u64) -> Result<GgufFile> {
        let all = storage.bytes();
        let Some(buf) = usize::try_from(start).ok().and_then(|s| all.get(s..)) else {
            return Err(Error::gguf(
                start,
                "magic",
                format!("GGUF start {start} is past the end of the {}-byte file", all.len()),
            ));
        };
        let p = reader::parse(buf).map_err(|e| match e {
            Error::Gguf(mut g) => {
                g.offset = g.offset.saturating_add(start);
                Error::Gguf(g)
            }
            e => e,
        })?;
        Ok(GgufFile {
            start,
            version: p.version,
            metadata: p.metadata,
            metadata_offsets: p.metadata_offsets.into_iter().map(|o| o + start).collect(),
            tensors: p.tensors,
            alignment: p.alignment,
            data_offset: p.data_offset + start,
            storage,
        })
    }

    /// Where the GGUF starts in the file (0 unless opened with `open_at`/`from_bytes_at`).
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Byte offset of the metadata entry `key`, for error messages.
    pub fn offset_of(&self, key: &str) -> u64 {
        self.metadata.iter().position(|(k, _)| k == key).map(|i| self.metadata_offsets[i]).unwrap_or(0)
    }

    fn type_error(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::gguf(self.offset_of(key), format!("kv[{key:?}]"), format!("expected {want}, found {}", got.value_type()))
    }

    /// An integer entry (any integer type, non-negative). `Ok(None)` if absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.type_error(key, "a non-negative integer", v)),
        }
    }

    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.type_error(key, "an integer", v)),
        }
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.type_error(key, "a number", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.type_error(key, "a bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.type_error(key, "a string", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.type_error(key, "an array", v)),
        }
    }

    /// `general.architecture`, required by every model.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?
            .ok_or_else(|| Error::gguf(0, "kv[\"general.architecture\"]", "missing general.architecture"))
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Tells the kernel this process is done with `len` bytes at `start` of the map (a tensor
    /// copied elsewhere at load): the whole pages inside the range leave the resident set.
    /// Should they be read again, they are read back from the file, unchanged.
    pub fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        if let Storage::Mmap(m) = &self.storage {
            const PAGE: usize = 4096;
            let (first, end) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
            if end > first {
                // SAFETY: the map is a read-only, private file mapping, so dropping its pages
                // loses nothing: a later read faults the same bytes back in from the file.
                // Failure only means the pages stay resident.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first) };
            }
        }
    }

    /// The bytes of `t`, borrowed from the map. Bounds were checked at parse time for every
    /// tensor of this file; a `TensorInfo` from elsewhere that does not fit gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self.data_offset.checked_add(t.offset).and_then(|s| Some(s..s.checked_add(t.n_bytes)?));
        let range = range.and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?));
        range.and_then(|r| self.storage.bytes().get(r)).unwrap_or(&[])
    }
}
