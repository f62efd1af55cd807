//! Parsing of the GGUF header, metadata and tensor table from a byte slice.
//!
//! Every count and length in the file is hostile until checked: each one is bounded by the
//! bytes that remain before anything is allocated, all size arithmetic is checked, and the
//! parsed metadata has a memory budget proportional to the file size.

use super::value::{Array, Value, ValueType};
use super::{TensorInfo, GGUF_DEFAULT_ALIGNMENT, GGUF_MAX_ALIGNMENT, GGUF_MAX_DIMS, GGUF_MAX_NAME};
use crate::error::{Error, Result};
use crate::quant::QType;
use std::collections::HashSet;

/// Little-endian cursor over the file's bytes; every read names the field it reads.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    version: u32,
    /// Bytes of heap the parsed metadata may still use (strings, vectors).
    budget: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        let budget = (buf.len() as u64).saturating_mul(4).saturating_add(1 << 20);
        Cursor { buf, pos: 0, version: 3, budget }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn err(&self, at: u64, field: &str, message: impl Into<String>) -> Error {
        Error::gguf(at, field, message)
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(
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

    fn charge(&mut self, bytes: u64, at: u64, field: &str) -> Result<()> {
        if bytes > self.budget {
            return Err(self.err(at, field, "metadata exceeds the memory budget for this file size"));
        }
        self.budget -= bytes;
        Ok(())
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, field)?.try_into().unwrap()))
    }
    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, field)?.try_into().unwrap()))
    }
    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, field)?.try_into().unwrap()))
    }

    /// A count or length: u32 in GGUF v1, u64 from v2 on.
    fn len(&mut self, field: &str) -> Result<u64> {
        if self.version == 1 {
            Ok(self.u32(field)? as u64)
        } else {
            self.u64(field)
        }
    }

    fn len_bytes(&self) -> u64 {
        if self.version == 1 {
            4
        } else {
            8
        }
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let at = self.pos();
        let n = self.len(field)?;
        if n > self.remaining() {
            return Err(self.err(
                at,
                field,
                format!("string length {n} exceeds the {} bytes left in the file", self.remaining()),
            ));
        }
        self.charge(n, at, field)?;
        let bytes = self.take(n, field)?;
        // Token texts in a few real vocabularies are not valid UTF-8; keep them readable
        // rather than refusing the model.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn scalar(&mut self, ty: ValueType, field: &str) -> Result<Value> {
        let at = self.pos();
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
            ValueType::Bool => match self.u8(field)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(at, field, format!("invalid bool byte {b} (must be 0 or 1)"))),
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => unreachable!("arrays are read by `value`"),
        })
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType> {
        let at = self.pos();
        let id = self.u32(field)?;
        ValueType::from_id(id).ok_or_else(|| self.err(at, field, format!("unknown value type {id}")))
    }

    pub(crate) fn value(&mut self, ty: ValueType, field: &str) -> Result<Value> {
        if ty != ValueType::Array {
            return self.scalar(ty, field);
        }
        let at = self.pos();
        let elem = self.value_type(field)?;
        if elem == ValueType::Array {
            return Err(self.err(at, field, "arrays of arrays are not supported"));
        }
        let count_at = self.pos();
        let count = self.len(field)?;
        let min = elem.min_disk_size(self.len_bytes());
        if count.checked_mul(min).is_none_or(|n| n > self.remaining()) {
            return Err(self.err(
                count_at,
                field,
                format!("array of {count} {elem} elements cannot fit in the {} bytes left", self.remaining()),
            ));
        }
        // In memory an element can be larger than on disk (a String is 24 bytes + text).
        let mem_per = match elem {
            ValueType::String => std::mem::size_of::<String>() as u64,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            _ => 4,
        };
        self.charge(count.saturating_mul(mem_per), count_at, field)?;
        let n = count as usize;
        macro_rules! read_vec {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push($read(&mut *self)?);
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
            ValueType::Bool => read_vec!(Bool, |c: &mut Self| {
                let at = c.pos();
                match c.u8(field)? {
                    0 => Ok(false),
                    1 => Ok(true),
                    b => Err(c.err(at, field, format!("invalid bool byte {b} (must be 0 or 1)"))),
                }
            }),
            ValueType::String => read_vec!(String, |c: &mut Self| c.string(field)),
            ValueType::Array => unreachable!(),
        };
        Ok(Value::Array(arr))
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
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

pub(crate) fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor::new(buf);
    let magic = c.take(4, "magic").map_err(|_| Error::gguf(0, "magic", "not a GGUF file (shorter than 4 bytes)"))?;
    match magic {
        b"GGUF" => {}
        b"FUGG" => return Err(Error::gguf(0, "magic", "big-endian GGUF files are not supported")),
        _ => {
            return Err(Error::gguf(
                0,
                "magic",
                format!("not a GGUF file (magic {:?})", String::from_utf8_lossy(magic)),
            ))
        }
    }
    let version = c.u32("version")?;
    if !(1..=3).contains(&version) {
        let hint = if version.swap_bytes() <= 3 { " (big-endian GGUF files are not supported)" } else { "" };
        return Err(Error::gguf(4, "version", format!("unsupported GGUF version {version}; supported: 1, 2, 3{hint}")));
    }
    c.version = version;

    let n_tensors_at = c.pos();
    let n_tensors = c.len("n_tensors")?;
    let n_kv_at = c.pos();
    let n_kv = c.len("n_kv")?;
    // Minimum sizes: a kv is a key length, a key byte, a type and a 1-byte value;
    // a tensor info is a name length, a name byte, n_dims, one dim, a type and an offset.
    let lb = c.len_bytes();
    if n_kv.checked_mul(lb + 1 + 4 + 1).is_none_or(|n| n > c.remaining()) {
        return Err(Error::gguf(n_kv_at, "n_kv", format!("{n_kv} metadata entries cannot fit in the file")));
    }
    if n_tensors.checked_mul(lb + 1 + 4 + lb + 4 + 8).is_none_or(|n| n > c.remaining()) {
        return Err(Error::gguf(n_tensors_at, "n_tensors", format!("{n_tensors} tensors cannot fit in the file")));
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut metadata_offsets = Vec::with_capacity(n_kv as usize);
    let mut seen = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let at = c.pos();
        let key = c.string(&format!("kv[{i}].key"))?;
        if key.is_empty() {
            return Err(Error::gguf(at, format!("kv[{i}].key"), "empty metadata key"));
        }
        let field = format!("kv[{key:?}]");
        if !seen.insert(key.clone()) {
            return Err(Error::gguf(at, field, "duplicate metadata key"));
        }
        let ty = c.value_type(&field)?;
        let value = c.value(ty, &field)?;
        metadata.push((key, value));
        metadata_offsets.push(at);
    }

    let mut alignment = GGUF_DEFAULT_ALIGNMENT;
    if let Some(i) = metadata.iter().position(|(k, _)| k == "general.alignment") {
        let at = metadata_offsets[i];
        match metadata[i].1 {
            Value::U32(a) if a != 0 && a.is_power_of_two() && (a as u64) <= GGUF_MAX_ALIGNMENT => {
                alignment = a as u64
            }
            Value::U32(a) => {
                return Err(Error::gguf(
                    at,
                    "kv[\"general.alignment\"]",
                    format!("alignment {a} is not a power of two in 1..={GGUF_MAX_ALIGNMENT}"),
                ))
            }
            ref v => {
                return Err(Error::gguf(
                    at,
                    "kv[\"general.alignment\"]",
                    format!("alignment must be a u32, found {}", v.value_type()),
                ))
            }
        }
    }

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    let mut expected_offset: u64 = 0;
    for i in 0..n_tensors {
        let at = c.pos();
        let f = |s: &str| format!("tensor_info[{i}].{s}");
        let name = c.string(&f("name"))?;
        if name.is_empty() || name.len() >= GGUF_MAX_NAME {
            return Err(Error::gguf(
                at,
                f("name"),
                format!("tensor name must be 1..{} bytes, got {}", GGUF_MAX_NAME, name.len()),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(Error::gguf(at, f("name"), format!("duplicate tensor name {name:?}")));
        }
        let dims_at = c.pos();
        let n_dims = c.u32(&f("n_dims"))?;
        if n_dims as usize > GGUF_MAX_DIMS {
            return Err(Error::gguf(dims_at, f("n_dims"), format!("{n_dims} dimensions (at most {GGUF_MAX_DIMS})")));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let d_at = c.pos();
            let dim = c.len(&f(&format!("ne[{d}]")))?;
            if dim > i64::MAX as u64 {
                return Err(Error::gguf(d_at, f(&format!("ne[{d}]")), format!("negative dimension {}", dim as i64)));
            }
            n_elements = n_elements
                .checked_mul(dim)
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| Error::gguf(d_at, f(&format!("ne[{d}]")), "element count overflows"))?;
            shape.push(dim);
        }
        let type_at = c.pos();
        let type_id = c.u32(&f("type"))?;
        let qtype = QType::from_id(type_id).ok_or_else(|| {
            Error::gguf(type_at, f("type"), format!("tensor {name:?} has unknown GGML type {type_id}"))
        })?;
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % qtype.block_size() as u64 != 0 {
            return Err(Error::gguf(
                dims_at,
                f("ne[0]"),
                format!("tensor {name:?}: row length {ne0} is not a multiple of the {qtype} block size {}", qtype.block_size()),
            ));
        }
        let n_bytes = (n_elements / qtype.block_size() as u64)
            .checked_mul(qtype.type_size() as u64)
            .ok_or_else(|| Error::gguf(dims_at, f("ne"), format!("tensor {name:?}: byte size overflows")))?;
        let off_at = c.pos();
        let offset = c.u64(&f("offset"))?;
        if offset != expected_offset {
            return Err(Error::gguf(
                off_at,
                f("offset"),
                format!("tensor {name:?} has offset {offset}, expected {expected_offset} (tensors must be contiguous and aligned)"),
            ));
        }
        expected_offset = offset
            .checked_add(n_bytes)
            .and_then(|end| end.checked_next_multiple_of(alignment))
            .ok_or_else(|| Error::gguf(off_at, f("offset"), "tensor data size overflows"))?;
        tensors.push(TensorInfo { name, shape, qtype, offset, n_bytes, n_elements });
    }

    let data_offset = c
        .pos()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::gguf(c.pos(), "data", "data offset overflows"))?;
    if let Some(t) = tensors.last() {
        let end = data_offset.checked_add(t.offset).and_then(|o| o.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > buf.len() as u64) {
            return Err(Error::gguf(
                data_offset,
                "data",
                format!(
                    "tensor data needs {} bytes from offset {data_offset}, the file has {}",
                    t.offset.saturating_add(t.n_bytes),
                    buf.len()
                ),
            ));
        }
    }
    Ok(Parsed { version, metadata, metadata_offsets, tensors, alignment, data_offset })
}
