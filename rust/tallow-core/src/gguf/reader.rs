//! Parsing of the GGUF header, metadata and tensor table from a byte slice.
//!
//! Every count and length in the file is hostile until checked: each one is bounded by the
//! bytes that remain before anything is allocated, all size arithmetic is checked, and the
//! parsed metadata and tables share a heap budget proportional to the file size
//! ([`metadata_budget`]). Every loop consumes at least one byte per iteration, so parsing is
//! linear in the file size. Offsets in errors are relative to the start of `buf`.

use super::value::{Array, Value, ValueType};
use super::{TensorInfo, GGUF_DEFAULT_ALIGNMENT, GGUF_MAX_ALIGNMENT, GGUF_MAX_DIMS, GGUF_MAX_KEY, GGUF_MAX_NAME};
use crate::error::{Error, Result};
use crate::quant::QType;
use std::collections::HashMap;

/// Bytes of heap that parsing a file of `file_len` bytes may use for metadata and tables.
pub fn metadata_budget(file_len: u64) -> u64 {
    file_len.saturating_mul(4).saturating_add(1 << 20)
}

/// Smallest on-disk metadata entry: key length, one key byte, value type, one value byte.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest on-disk tensor info: name length, one name byte, n_dims (0), type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// Heap per entry of the duplicate-name map (a `(&str, u64)` bucket at most half full, plus control bytes).
const DUP_MAP_BYTES: u64 = 64;

/// Little-endian cursor over the file's bytes; every read names the field it reads.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes of heap the parsed metadata may still use (strings, vectors, tables).
    budget: u64,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0, budget: metadata_budget(buf.len() as u64) }
    }

    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(
                self.pos(),
                field,
                format!("file truncated: need {n} bytes, {} remain", self.remaining()),
            ));
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn charge(&mut self, bytes: u64, at: u64, field: &str) -> Result<()> {
        if bytes > self.budget {
            return Err(Error::gguf(
                at,
                field,
                format!("needs {bytes} bytes of memory, over the budget for a file of {} bytes", self.buf.len()),
            ));
        }
        self.budget -= bytes;
        Ok(())
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &str) -> Result<u32> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &str) -> Result<u64> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn bool(&mut self, field: &str) -> Result<bool> {
        let at = self.pos();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::gguf(at, field, format!("invalid bool byte {b} (must be 0 or 1)"))),
        }
    }

    /// The bytes of a length-prefixed string, charged to the budget.
    fn string_bytes(&mut self, field: &str) -> Result<&'a [u8]> {
        let at = self.pos();
        let n = self.u64(field)?;
        if n > self.remaining() {
            return Err(Error::gguf(
                at,
                field,
                format!("string length {n} exceeds the {} bytes left in the file", self.remaining()),
            ));
        }
        self.charge(n, at, field)?;
        self.take(n, field)
    }

    /// A metadata string value. Token texts in a few real vocabularies are not valid UTF-8;
    /// they are kept (with U+FFFD) rather than refusing the model.
    fn string(&mut self, field: &str) -> Result<String> {
        let at = self.pos();
        let bytes = self.string_bytes(field)?;
        let s = String::from_utf8_lossy(bytes).into_owned();
        // A replaced byte grows to 3 bytes; charge the growth too.
        if s.len() > bytes.len() {
            self.charge((s.len() - bytes.len()) as u64, at, field)?;
        }
        Ok(s)
    }

    /// A key or tensor name: must be valid UTF-8 and 1..=`max` bytes long, so distinct names
    /// never collide after decoding and printing them is safe.
    fn name(&mut self, field: &str, max: usize) -> Result<String> {
        let at = self.pos();
        let bytes = self.string_bytes(field)?;
        if bytes.is_empty() || bytes.len() > max {
            return Err(Error::gguf(at, field, format!("name must be 1..={max} bytes, got {}", bytes.len())));
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(Error::gguf(
                at,
                field,
                format!("name {:?} is not valid UTF-8 ({e})", String::from_utf8_lossy(bytes)),
            )),
        }
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType> {
        let at = self.pos();
        let id = self.u32(field)?;
        ValueType::from_id(id).ok_or_else(|| Error::gguf(at, field, format!("unknown value type {id} (valid: 0..=12)")))
    }

    fn scalar(&mut self, ty: ValueType, field: &str) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(field)?),
            ValueType::I8 => Value::I8(self.u8(field)? as i8),
            ValueType::U16 => Value::U16(self.u16(field)?),
            ValueType::I16 => Value::I16(self.u16(field)? as i16),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(self.u32(field)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(field)?)),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(self.u64(field)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(field)?)),
            ValueType::Bool => Value::Bool(self.bool(field)?),
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => return self.array_value(field),
        })
    }

    /// An array value: element type, count, elements. Arrays of arrays are rejected (as in
    /// llama.cpp), so nesting depth is at most one and there is no recursion.
    fn array_value(&mut self, field: &str) -> Result<Value> {
        let at = self.pos();
        let elem = self.value_type(&format!("{field}.elem_type"))?;
        if elem == ValueType::Array {
            return Err(Error::gguf(at, format!("{field}.elem_type"), "arrays of arrays are not supported"));
        }
        let count_at = self.pos();
        let count_field = format!("{field}.count");
        let count = self.u64(&count_field)?;
        let min = elem.min_disk_size(8);
        if count.checked_mul(min).is_none_or(|n| n > self.remaining()) {
            return Err(Error::gguf(
                count_at,
                count_field,
                format!("array of {count} {elem} elements cannot fit in the {} bytes left", self.remaining()),
            ));
        }
        // In memory an element can be larger than on disk (a String is 24 bytes + text).
        let mem_per = match elem {
            ValueType::String => std::mem::size_of::<String>() as u64,
            _ => min,
        };
        self.charge(count.saturating_mul(mem_per), count_at, &count_field)?;
        let n = count as usize;
        macro_rules! read_vec {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let x = $read(&mut *self).map_err(|e| index_field(e, i))?;
                    v.push(x);
                }
                Array::$variant(v)
            }};
        }
        let arr = match elem {
            ValueType::U8 => read_vec!(U8, |c: &mut Self| c.u8(field)),
            ValueType::I8 => read_vec!(I8, |c: &mut Self| c.u8(field).map(|x| x as i8)),
            ValueType::U16 => read_vec!(U16, |c: &mut Self| c.u16(field)),
            ValueType::I16 => read_vec!(I16, |c: &mut Self| c.u16(field).map(|x| x as i16)),
            ValueType::U32 => read_vec!(U32, |c: &mut Self| c.u32(field)),
            ValueType::I32 => read_vec!(I32, |c: &mut Self| c.u32(field).map(|x| x as i32)),
            ValueType::F32 => read_vec!(F32, |c: &mut Self| c.u32(field).map(f32::from_bits)),
            ValueType::U64 => read_vec!(U64, |c: &mut Self| c.u64(field)),
            ValueType::I64 => read_vec!(I64, |c: &mut Self| c.u64(field).map(|x| x as i64)),
            ValueType::F64 => read_vec!(F64, |c: &mut Self| c.u64(field).map(f64::from_bits)),
            ValueType::Bool => read_vec!(Bool, |c: &mut Self| c.bool(field)),
            ValueType::String => read_vec!(String, |c: &mut Self| c.string(field)),
            ValueType::Array => unreachable!("rejected above"),
        };
        Ok(Value::Array(arr))
    }
}

/// Appends the element index to the field of an error raised inside an array.
fn index_field(e: Error, i: usize) -> Error {
    match e {
        Error::Gguf(mut g) => {
            g.field = format!("{}[{i}]", g.field);
            Error::Gguf(g)
        }
        e => e,
    }
}

/// What `parse` returns: everything but the tensor bytes.
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    /// Byte offset of each metadata entry (for error messages about its value).
    pub metadata_offsets: Vec<u64>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Offset of the tensor data section from the start of `buf`.
    pub data_offset: u64,
}

pub(crate) fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor::new(buf);
    let version = parse_header_start(&mut c)?;

    let n_tensors_at = c.pos();
    let n_tensors = c.u64("n_tensors")?;
    let n_kv_at = c.pos();
    let n_kv = c.u64("n_kv")?;
    // Bound both counts by the bytes left before allocating anything for them.
    let kv_bytes = n_kv.checked_mul(MIN_KV_BYTES);
    if kv_bytes.is_none_or(|n| n > c.remaining()) {
        return Err(Error::gguf(
            n_kv_at,
            "n_kv",
            format!("{n_kv} metadata entries cannot fit in the {} bytes left", c.remaining()),
        ));
    }
    let info_bytes = n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES);
    if info_bytes.zip(kv_bytes).and_then(|(a, b)| a.checked_add(b)).is_none_or(|n| n > c.remaining()) {
        return Err(Error::gguf(
            n_tensors_at,
            "n_tensors",
            format!("{n_tensors} tensors cannot fit in the {} bytes left", c.remaining()),
        ));
    }

    let (metadata, metadata_offsets) = parse_metadata(&mut c, n_kv, n_kv_at)?;
    let alignment = alignment(&metadata, &metadata_offsets)?;
    let tensors = parse_tensor_infos(&mut c, n_tensors, n_tensors_at, alignment)?;

    let data_offset = c
        .pos()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::gguf(c.pos(), "data", "data offset overflows"))?;
    // Offsets are contiguous (checked per tensor), so the last tensor ends the data section.
    if let Some(t) = tensors.last() {
        let end = data_offset.checked_add(t.offset).and_then(|o| o.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > buf.len() as u64) {
            return Err(Error::gguf(
                data_offset,
                "data",
                format!(
                    "tensor data needs {} bytes from offset {data_offset}, the file has {} (truncated?)",
                    t.offset.saturating_add(t.n_bytes),
                    buf.len()
                ),
            ));
        }
    }
    Ok(Parsed { version, metadata, metadata_offsets, tensors, alignment, data_offset })
}

/// Magic and version.
fn parse_header_start(c: &mut Cursor) -> Result<u32> {
    let magic = c.take(4, "magic").map_err(|_| Error::gguf(0, "magic", "not a GGUF file (shorter than 4 bytes)"))?;
    match magic {
        b"GGUF" => {}
        b"FUGG" => {
            return Err(Error::gguf(
                0,
                "magic",
                "not a GGUF file (byte-swapped magic: big-endian GGUF is not supported)",
            ))
        }
        _ => {
            return Err(Error::gguf(
                0,
                "magic",
                format!("not a GGUF file (magic {:?}, expected \"GGUF\")", magic.escape_ascii().to_string()),
            ))
        }
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(Error::gguf(
            4,
            "version",
            "GGUF version 1 is no longer supported (re-convert the model); supported versions: 2, 3",
        )),
        v if (2..=3).contains(&v.swap_bytes()) => Err(Error::gguf(
            4,
            "version",
            format!("unsupported GGUF version {v:#x}: big-endian GGUF is not supported; supported versions: 2, 3"),
        )),
        v => Err(Error::gguf(4, "version", format!("unsupported GGUF version {v}; supported versions: 2, 3"))),
    }
}

/// Metadata entries in file order.
type Metadata = Vec<(String, Value)>;

fn parse_metadata(c: &mut Cursor, n_kv: u64, n_kv_at: u64) -> Result<(Metadata, Vec<u64>)> {
    // Entries, their offsets, and the duplicate-check map.
    let per_entry = std::mem::size_of::<(String, Value)>() as u64 + 8 + DUP_MAP_BYTES;
    c.charge(n_kv.saturating_mul(per_entry), n_kv_at, "n_kv")?;
    let n = n_kv as usize;
    let mut metadata = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        let at = c.pos();
        let key = c.name(&format!("kv[{i}].key"), GGUF_MAX_KEY)?;
        let field = format!("kv[{key:?}]");
        let ty = c.value_type(&format!("{field}.type"))?;
        let value = c.scalar(ty, &field)?;
        metadata.push((key, value));
        offsets.push(at);
    }
    let mut seen: HashMap<&str, u64> = HashMap::with_capacity(n);
    for ((key, _), &at) in metadata.iter().zip(&offsets) {
        if let Some(first) = seen.insert(key, at) {
            return Err(Error::gguf(
                at,
                format!("kv[{key:?}]"),
                format!("duplicate metadata key (first at byte {first})"),
            ));
        }
    }
    drop(seen);
    Ok((metadata, offsets))
}

/// `general.alignment`: a u32 power of two up to [`GGUF_MAX_ALIGNMENT`], default 32.
fn alignment(metadata: &[(String, Value)], offsets: &[u64]) -> Result<u64> {
    let Some(i) = metadata.iter().position(|(k, _)| k == "general.alignment") else {
        return Ok(GGUF_DEFAULT_ALIGNMENT);
    };
    let (at, field) = (offsets[i], "kv[\"general.alignment\"]");
    match metadata[i].1 {
        Value::U32(a) if a.is_power_of_two() && (a as u64) <= GGUF_MAX_ALIGNMENT => Ok(a as u64),
        Value::U32(a) => {
            Err(Error::gguf(at, field, format!("alignment {a} is not a power of two in 1..={GGUF_MAX_ALIGNMENT}")))
        }
        ref v => Err(Error::gguf(at, field, format!("alignment must be a u32, found {}", v.value_type()))),
    }
}

fn parse_tensor_infos(c: &mut Cursor, n_tensors: u64, n_tensors_at: u64, alignment: u64) -> Result<Vec<TensorInfo>> {
    let per_entry = std::mem::size_of::<TensorInfo>() as u64 + 8 + DUP_MAP_BYTES;
    c.charge(n_tensors.saturating_mul(per_entry), n_tensors_at, "n_tensors")?;
    let n = n_tensors as usize;
    let mut tensors = Vec::with_capacity(n);
    let mut name_offsets = Vec::with_capacity(n);
    let mut expected_offset: u64 = 0;
    for i in 0..n {
        let at = c.pos();
        let f = |s: &str| format!("tensor_info[{i}].{s}");
        // GGML_MAX_NAME counts the terminating NUL.
        let name = c.name(&f("name"), GGUF_MAX_NAME - 1)?;
        let dims_at = c.pos();
        let n_dims = c.u32(&f("n_dims"))?;
        if n_dims as usize > GGUF_MAX_DIMS {
            return Err(Error::gguf(
                dims_at,
                f("n_dims"),
                format!("tensor {name:?} has {n_dims} dimensions (at most {GGUF_MAX_DIMS})"),
            ));
        }
        c.charge(8 * n_dims as u64, dims_at, &f("n_dims"))?;
        let mut shape = Vec::with_capacity(n_dims as usize);
        // A 0-dim tensor is a scalar (1 element); a zero dimension gives an empty tensor.
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let d_at = c.pos();
            let ne = format!("ne[{d}]");
            let dim = c.u64(&f(&ne))?;
            if dim > i64::MAX as u64 {
                return Err(Error::gguf(
                    d_at,
                    f(&ne),
                    format!("tensor {name:?} has negative dimension {}", dim as i64),
                ));
            }
            // Checked against i64::MAX as GGML stores element counts as int64_t.
            n_elements = n_elements
                .checked_mul(dim)
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| Error::gguf(d_at, f(&ne), format!("tensor {name:?}: element count overflows")))?;
            shape.push(dim);
        }
        let type_at = c.pos();
        let type_id = c.u32(&f("type"))?;
        let qtype = QType::from_id(type_id).ok_or_else(|| {
            Error::gguf(type_at, f("type"), format!("tensor {name:?} has unknown GGML type {type_id}"))
        })?;
        let ne0 = shape.first().copied().unwrap_or(1);
        let n_bytes = row_bytes_total(qtype, ne0, n_elements).ok_or_else(|| {
            let bs = qtype.block_size() as u64;
            let msg = if !ne0.is_multiple_of(bs) {
                format!("tensor {name:?}: row length {ne0} is not a multiple of the {qtype} block size {bs}")
            } else {
                format!("tensor {name:?}: byte size of {n_elements} {qtype} elements overflows")
            };
            Error::gguf(dims_at + 4, f("ne[0]"), msg)
        })?;
        let off_at = c.pos();
        let offset = c.u64(&f("offset"))?;
        if offset != expected_offset {
            return Err(Error::gguf(
                off_at,
                f("offset"),
                format!(
                    "tensor {name:?} has offset {offset}, expected {expected_offset} \
                     (tensor data must be contiguous, in order, aligned to {alignment})"
                ),
            ));
        }
        expected_offset = offset
            .checked_add(n_bytes)
            .and_then(|end| end.checked_next_multiple_of(alignment))
            .ok_or_else(|| Error::gguf(off_at, f("offset"), format!("tensor {name:?}: data section size overflows")))?;
        tensors.push(TensorInfo { name, shape, qtype, offset, n_bytes, n_elements });
        name_offsets.push(at);
    }
    let mut seen: HashMap<&str, u64> = HashMap::with_capacity(n);
    for (i, (t, &at)) in tensors.iter().zip(&name_offsets).enumerate() {
        if let Some(first) = seen.insert(&t.name, at) {
            return Err(Error::gguf(
                at,
                format!("tensor_info[{i}].name"),
                format!("duplicate tensor name {:?} (first at byte {first})", t.name),
            ));
        }
    }
    drop(seen);
    Ok(tensors)
}

/// Bytes of `n_elements` elements stored in rows of `ne0`, or `None` if a row is not a whole
/// number of blocks or the size overflows.
fn row_bytes_total(qtype: QType, ne0: u64, n_elements: u64) -> Option<u64> {
    let bs = qtype.block_size() as u64;
    if !ne0.is_multiple_of(bs) {
        return None;
    }
    // ne0 is a multiple of bs and divides n_elements (or n_elements is 0), so this is exact.
    (n_elements / bs).checked_mul(qtype.type_size() as u64)
}
