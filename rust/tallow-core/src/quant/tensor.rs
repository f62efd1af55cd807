//! `QTensor`: a quantized 2-D weight, borrowed from the mapped GGUF file.

use super::arena::Region;
use super::deferred::DeferredPack;
use super::{x16, QType};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::threadpool::ThreadPool;
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
    /// Repacked weights in the repack arena (`arena.rs`), where small tensors share huge-page
    /// chunks, or in a repack cache file (`repack_cache.rs`).
    Arena(Arc<Region>),
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
    /// Rows per interleaved group of `bytes`: 1 (row after row), [`INTERLEAVE`] or 16 (see
    /// [`QTensor::interleaved`]).
    interleave: usize,
    /// The packed copy being written after the load (`deferred.rs`); once it is complete, the
    /// tensor's data are that copy.
    deferred: Option<Arc<DeferredPack>>,
}

/// Rows of a group in the AVX2 tiles' layout (`x86_legacy_tile.rs`).
pub const INTERLEAVE: usize = 4;

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
        Ok(QTensor { name: t.name.clone(), qtype: t.qtype, cols, rows, bytes, interleave: 1, deferred: None })
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
        let bytes = Self::owned_copy(data);
        Ok(QTensor { name: name.to_string(), qtype, cols, rows, bytes, interleave: 1, deferred: None })
    }

    fn owned_copy(data: &[u8]) -> Bytes {
        let mut buf = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: `buf` has at least `data.len()` bytes; u64 has no invalid bit patterns.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_mut_ptr() as *mut u8, data.len()) };
        Bytes::Owned { buf: buf.into(), len: data.len() }
    }

    /// The same matrix in the layout this CPU's row tiles read (`matmul::layout_rows`), so a
    /// tile of rows reads one sequential stream (from DRAM, 4 interleaved row streams run at a
    /// third of the bandwidth): with AVX-512 VNNI, groups of 16 rows with each block's fields
    /// gathered across the rows (`x16.rs`); with AVX2, the 32-element formats in groups of
    /// [`INTERLEAVE`] rows (block `i` of rows `4g..4g + 4`, then block `i + 1` of the same rows).
    /// Types without tiles, and tensors without whole groups, are returned as they are.
    ///
    /// The copy lives in the repack arena (`arena.rs`), written by one thread per core (first
    /// touches of fresh pages dominate, and they run in parallel), and the file's pages it came
    /// from are released as it goes, so memory does not double.
    pub fn interleaved(self) -> QTensor {
        let Some(g) = self.repack_rows() else { return self };
        match Region::alloc(self.data().len()) {
            Some(region) => self.interleaved_into(g, region),
            None => self,
        }
    }

    /// Rows per group of the layout [`QTensor::interleaved`] would repack this tensor into, or
    /// `None` when it stays as it is.
    pub(crate) fn repack_rows(&self) -> Option<usize> {
        let g = super::matmul::layout_rows(self.qtype);
        let plain = self.interleave == 1 && self.deferred.is_none();
        (g > 1 && plain && self.rows > 0 && self.rows.is_multiple_of(g)).then_some(g)
    }

    /// [`QTensor::interleaved`] into `region` (fresh, as long as the data) with groups of `g`
    /// rows, packed now by one thread per core (first touches of fresh pages dominate, and
    /// they run in parallel).
    pub(crate) fn interleaved_into(self, g: usize, region: Region) -> QTensor {
        // A chunk per thread.
        let chunk = region.len().div_ceil(pack_threads()).max(1);
        let mut t = self.deferred_into_chunks(g, region, chunk);
        pack_all(std::slice::from_ref(&t), || {});
        // Packed, and this tensor's alone: the copy becomes its bytes, so products need not
        // look at a pack again.
        match t.deferred.take().map(Arc::try_unwrap) {
            Some(Ok(pack)) => t.with_layout(g, pack.into_region()),
            Some(Err(pack)) => QTensor { deferred: Some(pack), ..t },
            None => t,
        }
    }

    /// This tensor over `region`, which receives its data in groups of `g` rows later
    /// ([`QTensor::ensure_packed`], or a repack cache's writer thread): until then the tensor
    /// reads its own bytes.
    pub(crate) fn deferred_into(self, g: usize, region: Region) -> QTensor {
        self.deferred_into_chunks(g, region, super::deferred::CHUNK_BYTES)
    }

    /// [`QTensor::deferred_into`] in chunks of about `chunk_bytes` (tests take small ones).
    pub(crate) fn deferred_into_chunks(self, g: usize, region: Region, chunk_bytes: usize) -> QTensor {
        let pack = DeferredPack::new(region, g, self.rows, self.row_bytes(), chunk_bytes);
        QTensor { deferred: Some(Arc::new(pack)), ..self }
    }

    /// This tensor's metadata over `region`, which already holds its data in groups of `g`
    /// rows (a repack cache file).
    pub(crate) fn with_layout(self, g: usize, region: Region) -> QTensor {
        QTensor { bytes: Bytes::Arena(Arc::new(region)), interleave: g, deferred: None, ..self }
    }

    /// Makes sure the packed copy this tensor is waiting for (if any) is complete: packs the
    /// chunks no one has taken, on `pool`'s threads or this one, then waits for those other
    /// threads are writing. From then on [`QTensor::data`] and [`QTensor::interleave`] are
    /// those of the packed copy.
    pub fn ensure_packed(&self, pool: Option<&ThreadPool>) {
        if let Some(pack) = &self.deferred {
            pack.finish(self.qtype, self.source(), &|start, len| self.release_source(start, len), pool);
            if pack.take_release() {
                self.release_source(0, self.source().len());
            }
        }
    }

    /// Whether this tensor waits for a packed copy that no thread has begun writing yet.
    pub(crate) fn pack_pending(&self) -> bool {
        self.deferred.as_deref().is_some_and(|p| !p.started())
    }

    /// Packs chunks of the copy this tensor is waiting for until none is left to take, without
    /// waiting for other threads' chunks (a helper of [`QTensor::ensure_packed`]).
    pub(crate) fn pack_some(&self) {
        if let Some(pack) = &self.deferred {
            pack.work(self.qtype, self.source(), &|start, len| self.release_source(start, len));
        }
    }

    /// Drops this process's pages of source bytes `start..start + len` (once packed); a later
    /// read of them faults the same bytes back in from the file.
    fn release_source(&self, start: usize, len: usize) {
        if let Bytes::Mapped { file, start: at, .. } = &self.bytes {
            file.release(at + start, len);
        }
    }

    /// Rows per interleaved group: 1, or [`INTERLEAVE`] or 16 after
    /// [`QTensor::interleaved`]. (A tensor packed after the load changes layout once; read the
    /// data and layout together with [`QTensor::layout`], or after [`QTensor::ensure_packed`].)
    pub fn interleave(&self) -> usize {
        self.layout().1
    }

    /// The raw blocks and their rows per interleaved group, read together: the packed copy once
    /// complete, the tensor's own bytes before.
    pub fn layout(&self) -> (&[u8], usize) {
        match self.deferred.as_deref().and_then(|p| Some((p.packed()?, p.rows_per_group()))) {
            Some(packed) => packed,
            None => (self.source(), self.interleave),
        }
    }

    /// Row `r` as f32 (`out` holds `cols` values), whatever the layout.
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {:?} into {} values", self, out.len());
        let rb = self.row_bytes();
        let (data, g) = self.layout();
        if g == 1 {
            return super::dequantize_row(self.qtype, &data[r * rb..(r + 1) * rb], out);
        }
        let ts = self.qtype.type_size();
        let group = &data[(r / g) * g * rb..(r / g + 1) * g * rb];
        let bs = self.qtype.block_size();
        for (i, o) in out.chunks_exact_mut(bs).enumerate() {
            if g == x16::ROWS {
                let mut block = [0u8; 256];
                x16::unpack_block(self.qtype, &group[i * g * ts..(i + 1) * g * ts], r % g, &mut block);
                super::dequantize_row(self.qtype, &block[..ts], o);
            } else {
                let at = (i * g + r % g) * ts;
                super::dequantize_row(self.qtype, &group[at..at + ts], o);
            }
        }
    }

    /// The raw blocks in the tensor's layout: row after row, or interleaved groups of rows
    /// ([`QTensor::interleave`]).
    pub fn data(&self) -> &[u8] {
        self.layout().0
    }

    /// The bytes this tensor was made over, whatever a deferred pack has done since.
    fn source(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { file, start, len } => &file.bytes()[*start..*start + *len],
            Bytes::Arena(region) => region.bytes(),
            Bytes::Owned { buf, len } => {
                // SAFETY: `buf` holds at least `len` initialised bytes.
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, *len) }
            }
        }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.source().len() / self.rows.max(1)
    }

    /// The raw blocks of row `r` (row-after-row layout only).
    pub fn row(&self, r: usize) -> &[u8] {
        let (data, g) = self.layout();
        assert_eq!(g, 1, "{self:?}: rows of an interleaved tensor are not contiguous");
        let rb = self.row_bytes();
        &data[r * rb..(r + 1) * rb]
    }
}

/// Packs every tensor of `tensors` that waits for a packed copy, in order, on one thread per core
/// (first touches of fresh pages dominate, and they run in parallel), each thread calling
/// `on_start` first; returns once all are complete.
pub(crate) fn pack_all(tensors: &[QTensor], on_start: fn()) {
    std::thread::scope(|scope| {
        for _ in 1..pack_threads() {
            scope.spawn(|| {
                on_start();
                tensors.iter().for_each(QTensor::pack_some);
            });
        }
        on_start();
        tensors.iter().for_each(|t| t.ensure_packed(None));
    });
}

/// Threads that pack: one per core, up to 8.
fn pack_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}
