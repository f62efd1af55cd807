//! Chat-template rendering: every shared real-world template renders, a few match the reference
//! renderer byte for byte, and hostile templates fail fast with `Error::Template` (G29).
//!
//! Expected strings were produced once with Python jinja2 3.1.6 `ImmutableSandboxedEnvironment
//! (trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])`, the setup transformers and
//! llama-cpp-python use.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tallow_core::chat_template::{strftime, ChatMessage, ChatTemplate, TemplateValue, MAX_SOURCE};
use tallow_core::gguf::GgufFile;
use tallow_core::Error;

fn full_conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a terse assistant."),
        ChatMessage::new("user", "Hello!"),
        ChatMessage::new("assistant", "Hi. What do you need?"),
        ChatMessage::new("user", "Name three colors."),
    ]
}

/// For templates that reject a system turn.
fn no_system_conversation() -> Vec<ChatMessage> {
    full_conversation().split_off(1)
}

/// `../shared` next to the checkout; `TALLOW_SHARED_DIR` overrides it (git worktrees live deeper).
fn templates_dir() -> PathBuf {
    match std::env::var_os("TALLOW_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir).join("templates"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/templates"),
    }
}

fn model_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/.models").join(name)
}

fn gguf_template(name: &str) -> Option<String> {
    let gguf = GgufFile::open(model_path(name)).unwrap();
    gguf.get_str("tokenizer.chat_template").unwrap().map(str::to_owned)
}

fn shared_template(name: &str) -> String {
    std::fs::read_to_string(templates_dir().join(name)).unwrap()
}

#[test]
fn every_shared_template_renders() {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(templates_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 70, "expected the 70 shared templates");
    let mut failures = Vec::new();
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(path).unwrap();
        let tmpl = match ChatTemplate::new(&source, "<s>", "</s>") {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: compile: {e}"));
                continue;
            }
        };
        // Some templates (Gemma 2, ...) refuse a system turn; those must accept the rest.
        // firefunction-v2 is tool-only: it concatenates its `functions` JSON and `datetime` strings.
        let vars: &[(&str, TemplateValue)] = if name.contains("firefunction") {
            &[("functions", TemplateValue::from("[]")), ("datetime", TemplateValue::from("2024-07-26"))]
        } else {
            &[]
        };
        let out = tmpl
            .render_with_vars(&full_conversation(), true, vars)
            .or_else(|_| tmpl.render_with_vars(&no_system_conversation(), true, vars));
        // Debug aid: TALLOW_TEMPLATE_DUMP=dir writes each output, to diff against jinja2.
        if let (Some(dir), Ok(text)) = (std::env::var_os("TALLOW_TEMPLATE_DUMP"), &out) {
            std::fs::write(PathBuf::from(dir).join(&name), text).unwrap();
        }
        match out {
            Ok(text) if text.contains("Name three colors.") && text.contains("Hi. What do you need?") => {}
            Ok(text) => failures.push(format!("{name}: conversation missing from output {text:?}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} templates failed:\n{}", failures.len(), entries.len(), failures.join("\n"));
}

#[test]
fn smollm2_chatml_exact() {
    let source = gguf_template("smollm2-135m-q4_1.gguf").expect("SmolLM2 GGUF has a chat template");
    let tmpl = ChatTemplate::new(&source, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        tmpl.render(&full_conversation(), true).unwrap(),
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n\
         <|im_start|>assistant\nHi. What do you need?<|im_end|>\n<|im_start|>user\nName three colors.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Without a system turn the template inserts its default one.
    assert_eq!(
        tmpl.render(&no_system_conversation(), true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi. What do you need?<|im_end|>\n\
         <|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"
    );
    // No generation prompt: the conversation ends after the last turn.
    let out = tmpl.render(&full_conversation(), false).unwrap();
    assert!(out.ends_with("Name three colors.<|im_end|>\n"), "{out:?}");
}

/// The Gemma 3 270M GGUF in tests/.models carries no `tokenizer.chat_template`, so the Gemma
/// format is checked with Gemma 2's template (same turn markup) from the shared set.
#[test]
fn gemma_exact() {
    assert_eq!(gguf_template("gemma-3-270m-q4_k_m.gguf"), None);
    let tmpl = ChatTemplate::new(&shared_template("google-gemma-2-2b-it.jinja"), "<s>", "</s>").unwrap();
    assert_eq!(
        tmpl.render(&no_system_conversation(), true).unwrap(),
        "<s><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi. What do you need?<end_of_turn>\n\
         <start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n"
    );
    // The template's own raise_exception surfaces as Error::Template with its message.
    match tmpl.render(&full_conversation(), true) {
        Err(Error::Template(msg)) => assert!(msg.contains("System role not supported"), "{msg}"),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn qwen25_and_llama31_exact() {
    let qwen = ChatTemplate::new(&shared_template("Qwen-Qwen2.5-7B-Instruct.jinja"), "<s>", "</s>").unwrap();
    assert_eq!(
        qwen.render(&no_system_conversation(), true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi. What do you need?<|im_end|>\n\
         <|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"
    );
    let llama = ChatTemplate::new(&shared_template("meta-llama-Llama-3.1-8B-Instruct.jinja"), "<s>", "</s>").unwrap();
    assert_eq!(
        llama.render(&full_conversation(), true).unwrap(),
        "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\
         Today Date: 26 Jul 2024\n\nYou are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
         Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi. What do you need?<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nName three colors.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

/// Renders `source` and expects a prompt `Error::Template`.
fn assert_rejected_fast(what: &str, source: &str) {
    let start = Instant::now();
    let result = ChatTemplate::new(source, "<s>", "</s>").and_then(|t| t.render(&full_conversation(), true));
    let elapsed = start.elapsed();
    match result {
        Err(Error::Template(_)) => {}
        Err(e) => panic!("{what}: wrong error kind {e:?}"),
        Ok(out) => panic!("{what}: rendered {} bytes instead of failing", out.len()),
    }
    // Generous for debug builds on a loaded machine; an unbounded render would take minutes.
    assert!(elapsed < Duration::from_secs(20), "{what}: took {elapsed:?}");
}

#[test]
fn hostile_templates_fail_fast() {
    assert_rejected_fast("huge loop", "{% for i in range(10**9) %}x{% endfor %}");
    assert_rejected_fast(
        "nested loops",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    );
    assert_rejected_fast("string multiplication", "{{ 'A' * 10**9 }}");
    assert_rejected_fast("string multiplication under limit", "{% for i in range(100) %}{{ 'A' * 10**7 }}{% endfor %}");
    assert_rejected_fast(
        "doubling concatenation",
        "{% set ns = namespace(s='AAAAAAAA') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    );
    assert_rejected_fast("macro recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert_rejected_fast("recursive loop", "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}");
    assert_rejected_fast("syntax error", "{% for m in messages %}{{ m.content }}");
    assert_rejected_fast("raise_exception", "{{ raise_exception('nope') }}");
    assert_rejected_fast("oversized source", &"x".repeat(MAX_SOURCE + 1));
}

/// Classic Jinja SSTI payloads have nothing to reach in minijinja: they render inert or error.
#[test]
fn ssti_payloads_are_inert() {
    let payloads = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self.__init__.__globals__.__builtins__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ messages.__class__ }}{{ config }}{{ request }}",
        "{% include '/etc/passwd' %}",
        "{% import 'os' as os %}{{ os.system('id') }}",
    ];
    for p in payloads {
        let out = ChatTemplate::new(p, "<s>", "</s>").and_then(|t| t.render(&full_conversation(), true));
        if let Ok(text) = out {
            assert!(!text.contains("class") && !text.contains("root:") && !text.contains("uid="), "{p}: {text:?}");
        }
    }
}

#[test]
fn python_methods_and_filters() {
    let source = "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip().split(' ')|join('_') }}|\
                  {% if m.content.startswith('Hi') %}H{% endif %}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}\
                  {{ {'a': [1, 'é']}|tojson(ensure_ascii=False) }}{{ {'b': 1}|tojson(indent=2) }}\
                  {{ bos_token }}{{ eos_token }}{% if add_generation_prompt %}GEN{% endif %}";
    let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
    let out = t.render(&full_conversation(), true).unwrap();
    assert_eq!(
        out,
        "SYSTEM:You_are_a_terse_assistant.|USER:Hello!|ASSISTANT:Hi._What_do_you_need?|H\
         {\"a\": [1, \"é\"]}{\n  \"b\": 1\n}<s></s>GEN"
    );
    // strftime_now renders today's date in the requested format.
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "").unwrap();
    let date = t.render(&[], false).unwrap();
    assert!(date.len() == 10 && date.starts_with("20") && date.as_bytes()[4] == b'-', "{date}");
}

#[test]
fn generation_tag_is_transparent() {
    let source = "{% for m in messages %}{%- generation -%} [{{ m.content }}] {%- endgeneration -%}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    assert_eq!(t.render(&no_system_conversation()[..2], false).unwrap(), "[Hello!][Hi. What do you need?]");
}

#[test]
fn strftime_formats() {
    assert_eq!(
        strftime("%Y-%m-%d %H:%M:%S %A %a %B %b %j %y %%", 0),
        "1970-01-01 00:00:00 Thursday Thu January Jan 001 70 %"
    );
    assert_eq!(strftime("%d %b %Y, %H:%M:%S %A", 1_700_000_000), "14 Nov 2023, 22:13:20 Tuesday");
    assert_eq!(strftime("%Y-%m-%d %j", 951_782_400), "2000-02-29 060"); // leap day
    assert_eq!(strftime("%e|%Q", 86_400 * 31), " 1|%Q");
}
