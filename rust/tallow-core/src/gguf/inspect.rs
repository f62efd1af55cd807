//! The `tallow inspect FILE` report: header, metadata and tensor table as plain text.
//!
//! Everything taken from the file is escaped: a key, string or tensor name cannot move the
//! cursor, change colours or forge lines on the user's terminal (llama.cpp #14381).

use super::value::{Array, Value};
use super::GgufFile;
use crate::quant::QType;
use std::fmt::Write;

/// Arrays longer than this are summarised by their first elements.
const ARRAY_PREVIEW: usize = 8;
/// Strings are cut after this many characters.
const MAX_STRING_CHARS: usize = 200;

/// Escapes control characters (C0, DEL, C1, incl. ESC of ANSI sequences), backslashes and the
/// Unicode bidi/line separators as `\n`, `\x1b`, `\u{202e}`; other text is kept as is.
pub fn escape_for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // C1 controls, bidi overrides/isolates, line/paragraph separators, BOM.
            c if matches!(c as u32, 0x80..=0x9f | 0x200e | 0x200f | 0x202a..=0x202e | 0x2066..=0x2069 | 0x2028 | 0x2029 | 0xfeff) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A string as a quoted, escaped literal, cut after [`MAX_STRING_CHARS`] characters.
fn quote(s: &str) -> String {
    let n_chars = s.chars().count();
    if n_chars <= MAX_STRING_CHARS {
        return format!("\"{}\"", escape_for_terminal(s));
    }
    let cut: String = s.chars().take(MAX_STRING_CHARS).collect();
    format!("\"{}\"… ({n_chars} chars)", escape_for_terminal(&cut))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("{x:?}"),
        Value::F64(x) => format!("{x:?}"),
        Value::Bool(x) => x.to_string(),
        Value::String(s) => quote(s),
        Value::Array(a) => array(a),
    }
}

/// `[1, 2, 3]`, or `[array of 49152 String: "a", "b", … ]` when longer than the preview.
fn array(a: &Array) -> String {
    let shown = a.len().min(ARRAY_PREVIEW);
    let items: Vec<String> = (0..shown).filter_map(|i| a.get(i)).map(|v| scalar(&v)).collect();
    if a.len() <= ARRAY_PREVIEW {
        format!("[{}]", items.join(", "))
    } else {
        format!("[array of {} {}: {}, … ]", a.len(), a.element_type(), items.join(", "))
    }
}

/// Human-readable report of `file`: header, every metadata entry, the tensor table, totals.
pub fn render_inspect(file: &GgufFile, path_display: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "GGUF file: {}", escape_for_terminal(path_display));
    let _ = writeln!(out, "  version:     {}", file.version());
    let _ = writeln!(out, "  alignment:   {}", file.alignment());
    let _ = writeln!(out, "  n_kv:        {}", file.metadata().len());
    let _ = writeln!(out, "  n_tensors:   {}", file.tensors().len());
    let _ = writeln!(out, "  data offset: {}", file.data_offset());
    let _ = writeln!(out, "  file size:   {} bytes", file.file_size());

    let _ = writeln!(out, "\nMetadata ({} entries):", file.metadata().len());
    let key_width = file.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0).min(48);
    for (key, value) in file.metadata() {
        let ty = match value {
            Value::Array(a) => format!("[{}]", a.element_type()),
            v => v.value_type().to_string(),
        };
        let _ = writeln!(out, "  {:<key_width$}  {:<8}  {}", escape_for_terminal(key), ty, scalar(value));
    }

    let _ = writeln!(out, "\nTensors ({}):", file.tensors().len());
    let name_width = file.tensors().iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "  {:<name_width$}  {:<7}  {:<24}  {:>12}  {:>12}  {:>12}",
        "name", "type", "shape", "n_elements", "offset", "bytes"
    );
    let mut by_type: Vec<(QType, usize, u64)> = Vec::new();
    let (mut n_params, mut n_bytes) = (0u64, 0u64);
    for t in file.tensors() {
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<7}  {:<24}  {:>12}  {:>12}  {:>12}",
            escape_for_terminal(&t.name),
            t.qtype.name(),
            shape,
            t.n_elements,
            file.data_offset().saturating_add(t.offset),
            t.n_bytes
        );
        n_params = n_params.saturating_add(t.n_elements);
        n_bytes = n_bytes.saturating_add(t.n_bytes);
        match by_type.iter_mut().find(|(q, _, _)| *q == t.qtype) {
            Some(e) => {
                e.1 += 1;
                e.2 = e.2.saturating_add(t.n_bytes);
            }
            None => by_type.push((t.qtype, 1, t.n_bytes)),
        }
    }
    let _ = writeln!(out, "\nTotal: {n_params} parameters, {n_bytes} bytes of tensor data");
    for (q, count, bytes) in by_type {
        let _ = writeln!(out, "  {:<7}  {count:>5} tensors  {bytes:>12} bytes", q.name());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    #[test]
    fn escapes_control_and_ansi() {
        assert_eq!(escape_for_terminal("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape_for_terminal("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_for_terminal("\0\x07\x7f\\"), "\\x00\\x07\\x7f\\\\");
        assert_eq!(escape_for_terminal("\u{9b}2J \u{202e}abc"), "\\u{9b}2J \\u{202e}abc");
        assert_eq!(escape_for_terminal("héllo 世界 <|im_start|>"), "héllo 世界 <|im_start|>");
    }

    #[test]
    fn truncates_long_strings() {
        let s = "ab".repeat(300);
        let q = quote(&s);
        assert!(q.starts_with(&format!("\"{}\"…", "ab".repeat(100))), "{q}");
        assert!(q.ends_with("(600 chars)"), "{q}");
        // Cutting counts characters, never splits one.
        let q = quote(&"é".repeat(201));
        assert!(q.contains(&"é".repeat(200)) && q.ends_with("(201 chars)"), "{q}");
    }

    #[test]
    fn summarises_long_arrays() {
        let short = Array::I32(vec![1, -2, 3]);
        assert_eq!(array(&short), "[1, -2, 3]");
        let tokens: Vec<String> = (0..49152).map(|i| format!("t{i}\n")).collect();
        let s = array(&Array::String(tokens));
        assert_eq!(
            s,
            "[array of 49152 String: \"t0\\n\", \"t1\\n\", \"t2\\n\", \"t3\\n\", \"t4\\n\", \"t5\\n\", \"t6\\n\", \"t7\\n\", … ]"
        );
    }

    #[test]
    fn report_escapes_everything_from_the_file() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()));
        w.add_kv("evil\x1b[2J", Value::String("line1\nFAKE: \x1b]0;title\x07".into()));
        w.add_kv("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.5; 20])));
        w.add_f32_tensor("tok\x1bembd", &[4, 2], &[0.0; 8]).unwrap();
        w.add_tensor("blk.0.q", &[64, 2], QType::Q4_0, vec![0; 72]).unwrap();
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        let r = render_inspect(&f, "model\n.gguf");
        assert!(!r.chars().any(|c| c.is_control() && c != '\n'), "{r}");
        assert!(r.contains("model\\n.gguf"));
        assert!(r.contains("evil\\x1b[2J"));
        assert!(r.contains("\"line1\\nFAKE: \\x1b]0;title\\x07\""));
        assert!(r.contains("[array of 20 F32: 0.5, 0.5"));
        assert!(r.contains("tok\\x1bembd"));
        assert!(r.contains("[64, 2]"));
        assert!(r.contains("Total: 136 parameters, 104 bytes"), "{r}");
        assert!(r.contains("Q4_0         1 tensors            72 bytes"), "{r}");
        assert_eq!(r.lines().filter(|l| l.starts_with("  ") && l.contains("FAKE")).count(), 1);
    }

    #[test]
    fn report_on_smollm2() {
        let path =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models/smollm2-135m-q4_1.gguf");
        let f = GgufFile::open(&path).unwrap();
        let r = render_inspect(&f, "smollm2-135m-q4_1.gguf");
        assert!(r.contains("  version:     3\n"), "{r}");
        assert!(r.contains("n_tensors:   272"));
        assert!(r.contains("general.architecture"));
        assert!(r.contains("\"llama\""));
        // The 49152-token vocabulary is summarised, not printed.
        assert!(r.contains("[array of 49152 String: \"<|endoftext|>\", \"<|im_start|>\""), "{r}");
        assert!(r.lines().count() < 272 + 100);
        assert!(r.contains("token_embd.weight") && r.contains("Q8_0"));
        assert!(r.contains("Total: 134515008 parameters"), "{}", &r[r.len().saturating_sub(400)..]);
        // The chat template's newlines are escaped.
        let tmpl = r.lines().find(|l| l.contains("tokenizer.chat_template")).unwrap();
        assert!(tmpl.contains("\\n"), "{tmpl}");
        assert!(!r.chars().any(|c| c.is_control() && c != '\n'));
    }
}
