//! Renders a model's `tokenizer.chat_template` (Jinja) into a prompt string.
//!
//! The template comes from the model file, so it is untrusted input (reliability G29). minijinja
//! has no filesystem, network or Python object access; on top of that every render is bounded:
//! - fuel ([`FUEL`]): minijinja charges instructions and allocated data, so
//!   `{% for i in range(10**9) %}` and `'A' * 10**9` fail fast;
//! - output: at most [`MAX_OUTPUT`] bytes plus twice the conversation's own size;
//! - recursion: [`RECURSION_LIMIT`] levels of macro/loop nesting;
//! - source: at most [`MAX_SOURCE`] bytes.
//!
//! The environment matches what Hugging Face transformers and llama.cpp provide to templates:
//! `trim_blocks` + `lstrip_blocks`, Python string/dict methods (minijinja-contrib `pycompat`),
//! loop controls, `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` that accepts
//! Python's keyword arguments.

use std::collections::BTreeMap;
use std::io;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind, State};

use crate::error::{Error, Result};

/// Largest accepted template source.
pub const MAX_SOURCE: usize = 1 << 20;
/// Output budget on top of twice the size of the messages.
pub const MAX_OUTPUT: usize = 4 << 20;
/// Fuel per render (about one unit per instruction or per 64 bytes allocated). Real templates
/// use a few thousand units per message; this leaves room for long conversations.
pub const FUEL: u64 = 20_000_000;
pub const RECURSION_LIMIT: usize = 100;

/// A value for [`ChatTemplate::render_with_vars`] (`TemplateValue::from("...")`, `from(true)`,
/// sequences via `from(vec![...])`).
pub use minijinja::Value as TemplateValue;

const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template plus the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. Syntax errors and oversized sources are [`Error::Template`].
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        if source.len() > MAX_SOURCE {
            return Err(Error::Template(format!(
                "template is {} bytes, more than the {MAX_SOURCE}-byte limit",
                source.len()
            )));
        }
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source)).map_err(template_error)?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// Renders the conversation. With `add_generation_prompt` the template appends the header
    /// of the assistant turn the model should continue.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_vars(messages, add_generation_prompt, &[])
    }

    /// [`ChatTemplate::render`] plus extra template variables, e.g. `tools`, `enable_thinking`, or
    /// firefunction's `functions` (a JSON string). They cannot override the four built-in names.
    pub fn render_with_vars(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        vars: &[(&str, TemplateValue)],
    ) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let mut ctx: BTreeMap<&str, Value> = vars.iter().cloned().collect();
        ctx.insert("messages", Value::from(msgs));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token", Value::from(self.eos_token.as_str()));
        let ctx = Value::from(ctx);
        let input_bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let limit = MAX_OUTPUT.saturating_add(input_bytes.saturating_mul(2));
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let mut out = CappedWriter { buf: Vec::new(), limit };
        tmpl.render_captured_to(ctx, &mut out).map_err(template_error)?;
        String::from_utf8(out.buf).map_err(|_| Error::Template("template produced invalid UTF-8".into()))
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for training
/// masks and renders its body unchanged; minijinja has no such tag, so it becomes
/// `{% if true %}...{% endif %}` with the same whitespace-control markers.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i + 2..];
        match parse_block_tag(tag) {
            Some((left, word, right, len)) if word == "generation" || word == "endgeneration" => {
                let body = if word == "generation" { "if true" } else { "endif" };
                out.push_str("{%");
                out.push_str(left);
                out.push(' ');
                out.push_str(body);
                out.push(' ');
                out.push_str(right);
                out.push_str("%}");
                rest = &tag[len..];
            }
            _ => {
                out.push_str("{%");
                rest = tag;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `[-+]? ws* word ws* [-+]? %}` at the start of `s` (just after `{%`). Returns the left
/// marker, the word, the right marker and the byte length consumed through `%}`.
fn parse_block_tag(s: &str) -> Option<(&str, &str, &str, usize)> {
    let marker_len = |t: &str| usize::from(t.starts_with('-') || t.starts_with('+'));
    let l = marker_len(s);
    let after_l = &s[l..];
    let word_start = l + (after_l.len() - after_l.trim_start().len());
    let word_len =
        s[word_start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len() - word_start);
    let after_word = &s[word_start + word_len..];
    let r_start = word_start + word_len + (after_word.len() - after_word.trim_start().len());
    let r = marker_len(&s[r_start..]);
    if !s[r_start + r..].starts_with("%}") {
        return None;
    }
    Some((&s[..l], &s[word_start..word_start + word_len], &s[r_start..r_start + r], r_start + r + 2))
}

/// Output sink that refuses to grow past `limit` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(io::Error::other(format!("template output exceeds {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn template_error(err: minijinja::Error) -> Error {
    // The alternate form includes the template line and the causes (e.g. the capped writer's
    // message behind a WriteFailure).
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    Error::Template(msg)
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("template raised: {msg}")))
}

/// `tojson` with Python's keywords: `indent` is honoured; `ensure_ascii`, `sort_keys` and
/// `separators` are accepted (output is UTF-8 with `", "`/`": "` separators, as transformers'
/// `ensure_ascii=False` rendering gives for the default separators).
fn tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    for key in ["ensure_ascii", "sort_keys", "separators"] {
        let _: Option<Value> = kwargs.get(key)?;
    }
    kwargs.assert_all_used()?;
    let rv = minijinja::filters::tojson(value, indent, Kwargs::from_iter(std::iter::empty::<(&str, Value)>()))?;
    // Charge the serialized size like the builtin does, so huge dumps burn fuel.
    if let Some(s) = rv.as_str() {
        state.consume_fuel(s.len() as u64 / 64 + 1)?;
    }
    Ok(rv)
}

/// `strftime_now(fmt)`: the current UTC time in a subset of C `strftime` (`%Y %y %m %d %e %j
/// %B %b %A %a %H %M %S %%`); other conversions are copied through.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats `unix_secs` (UTC). Public for tests.
pub fn strftime(fmt: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = ((days + 3) % 7) as usize;
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian
/// (Howard Hinnant's era-based algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Inverse of [`civil_from_days`] for years >= 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
