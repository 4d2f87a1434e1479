//! The text tokenizer against Hugging Face transformers: prompt ids with `<image>` expansion,
//! decoding, chat templates, BOS/EOS, special tokens and load errors.
//!
//! Expected values come from tools/reference/make_tokenizer_fixtures.py (transformers 4.57.1) in
//! tests/fixtures/tokenizer/; the tokenizer itself is the Llama-2 one LLaVA-1.5 ships, in
//! tests/fixtures/llama2-tokenizer (Llama-2 vocabulary with `<image>` = 32045).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use spec_llava::text::tokenizer::TextTokenizer;

const IMAGE: &str = "<image>";

fn llama2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama2-tokenizer")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture() -> Value {
    read_json(&fixture_dir().join("llama2.json"))
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing {key}"))
}

fn llama2() -> TextTokenizer {
    TextTokenizer::load(&llama2_dir()).expect("load the Llama-2 tokenizer")
}

fn llama2_bytes() -> (Vec<u8>, Vec<u8>) {
    let dir = llama2_dir();
    (
        fs::read(dir.join("tokenizer.json")).expect("tokenizer.json"),
        fs::read(dir.join("tokenizer_config.json")).expect("tokenizer_config.json"),
    )
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("spec-llava-tok-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// A temp checkpoint dir holding a copy of the Llama-2 tokenizer.json.
    fn with_tokenizer(tag: &str) -> Self {
        let dir = Self::new(tag);
        fs::copy(
            llama2_dir().join("tokenizer.json"),
            dir.0.join("tokenizer.json"),
        )
        .expect("copy tokenizer.json");
        dir
    }

    fn write(&self, name: &str, contents: &str) {
        fs::write(self.0.join(name), contents).expect("write temp file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn vocabulary_facts_match_transformers() {
    let tok = llama2();
    let fx = fixture();
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.vocab_size(), 32046);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), vec![2]);
    assert_eq!(tok.token_id(IMAGE), Some(32045));
    assert_eq!(tok.token_id("▁The"), Some(450));
    assert_eq!(tok.token_id("no-such-token"), None);
    assert!(tok.name().ends_with("tokenizer.json"), "{}", tok.name());
}

#[test]
fn prompts_with_image_expansion_match_llava_processor() {
    let tok = llama2();
    let fx = fixture();
    let cases = fx["prompts"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = text(case, "name");
        let count = case["num_image_tokens"].as_u64().unwrap() as usize;
        let expected = ids(&case["ids"]);
        let got = tok
            .encode_prompt(text(case, "prompt"), IMAGE, count)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}: ids differ from transformers");
        assert_eq!(got[0], 1, "{name}: starts with BOS");
        assert_eq!(
            tok.decode(&got).unwrap(),
            text(case, "decoded"),
            "{name}: decode differs from transformers"
        );
    }
}

#[test]
fn llava15_prompt_has_576_image_tokens_in_one_run() {
    let tok = llama2();
    let ids = tok
        .encode_prompt("USER: <image>\nDescribe the image. ASSISTANT:", IMAGE, 576)
        .unwrap();
    let first = ids.iter().position(|&id| id == 32045).unwrap();
    assert_eq!(&ids[..first], &[1, 3148, 1001, 29901, 29871]);
    assert!(ids[first..first + 576].iter().all(|&id| id == 32045));
    assert_eq!(ids.iter().filter(|&&id| id == 32045).count(), 576);
    assert_eq!(ids.len(), 5 + 576 + 12);
}

#[test]
fn decode_round_trips_plain_text() {
    let tok = llama2();
    for case in fixture()["decodes"].as_array().unwrap() {
        let original = text(case, "text");
        let expected = ids(&case["ids"]);
        assert_eq!(tok.encode(original).unwrap(), expected, "{original:?}");
        let decoded = tok.decode(&expected).unwrap();
        assert_eq!(decoded, text(case, "decoded"), "{original:?}");
        assert_eq!(decoded, original, "round trip of {original:?}");
    }
}

#[test]
fn config_special_tokens_are_skipped_when_decoding() {
    let (json, config) = llama2_bytes();
    // The config names </s> as EOS, so decoding drops it like transformers' from_pretrained does;
    // tokenizer.json alone does not flag </s> as special, so without the config it stays.
    let with_config =
        TextTokenizer::from_bytes(&json, Some(&config), None, "tokenizer.json").unwrap();
    let bare = TextTokenizer::from_bytes(&json, None, None, "tokenizer.json").unwrap();
    let ids = [1, 450, 2, 32045, 3];
    assert_eq!(with_config.decode(&ids).unwrap(), "The\u{0}");
    assert_eq!(bare.decode(&ids).unwrap(), "The</s>\u{0}");
    assert_eq!(bare.bos_id(), None);
    assert!(bare.eos_ids().is_empty());
}

#[test]
fn token_text_is_readable() {
    let tok = llama2();
    assert_eq!(tok.token_text(450), " The");
    assert_eq!(tok.token_text(29871), " ");
    assert_eq!(tok.token_text(13), "\n");
    assert_eq!(tok.token_text(3), "\u{0}");
    assert_eq!(tok.token_text(243), "<0xF0>"); // a lone UTF-8 lead byte
    assert_eq!(tok.token_text(32045), "<image>");
    assert_eq!(tok.token_text(1), "<s>");
    assert_eq!(tok.token_text(2), "</s>");
    assert_eq!(tok.token_text(29892), ",");
    assert_eq!(tok.token_text(99_999), "<id 99999?>");
}

const BYTE_LEVEL_TOKENIZER: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 4, "content": "<|im_end|>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"Ġcat": 0, "Ċ": 1, "Ã©": 2, "Ã": 3}, "merges": []}
}"#;

#[test]
fn token_text_maps_byte_level_alphabet() {
    let config = r#"{"eos_token": "<|im_end|>", "bos_token": null}"#;
    let tok = TextTokenizer::from_bytes(
        BYTE_LEVEL_TOKENIZER.as_bytes(),
        Some(config.as_bytes()),
        None,
        "qwen/tokenizer.json",
    )
    .unwrap();
    assert_eq!(tok.token_text(0), " cat");
    assert_eq!(tok.token_text(1), "\n");
    assert_eq!(tok.token_text(2), "é");
    assert_eq!(tok.token_text(3), "<0xC3>");
    assert_eq!(tok.token_text(4), "<|im_end|>");
    assert_eq!(tok.decode(&[0, 1, 2, 4]).unwrap(), " cat\né");
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_ids(), vec![4]);
}

#[test]
fn chat_templates_render_like_apply_chat_template() {
    let (json, config) = llama2_bytes();
    let fx = fixture();
    let templates = fx["chat"].as_array().unwrap();
    assert_eq!(templates.len(), 4);
    for entry in templates {
        let name = text(entry, "name");
        let template = text(entry, "template").to_string();
        let tok = TextTokenizer::from_bytes(&json, Some(&config), Some(template), "tokenizer.json")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(tok.has_chat_template());
        for render in entry["renders"].as_array().unwrap() {
            let user = text(render, "user_text");
            let got = tok.chat_prompt(user);
            match render.get("rendered").and_then(Value::as_str) {
                Some(expected) => assert_eq!(
                    got.as_deref()
                        .unwrap_or_else(|e| panic!("{name} {user:?}: {e}")),
                    expected,
                    "{name} {user:?}"
                ),
                None => {
                    let err = got.expect_err("template raises").to_string();
                    assert!(err.contains(text(render, "error")), "{name}: {err}");
                    assert!(
                        err.starts_with("chat template for tokenizer.json: "),
                        "{err}"
                    );
                }
            }
        }
    }
}

#[test]
fn without_template_the_llava15_prompt_is_used() {
    let tok = llama2();
    assert!(!tok.has_chat_template());
    let llava15 = &fixture()["chat"][0];
    assert_eq!(text(llava15, "name"), "llava15");
    for render in llava15["renders"].as_array().unwrap() {
        let user = text(render, "user_text");
        assert_eq!(tok.chat_prompt(user).unwrap(), text(render, "rendered"));
    }
}

#[test]
fn bos_written_by_the_template_is_not_added_twice() {
    let (json, config) = llama2_bytes();
    let template =
        "{{ bos_token }}USER: <image>\n{{ messages[0]['content'][1]['text'] }} ASSISTANT:";
    let tok = TextTokenizer::from_bytes(
        &json,
        Some(&config),
        Some(template.into()),
        "tokenizer.json",
    )
    .unwrap();
    let prompt = tok.chat_prompt("Describe the image.").unwrap();
    assert_eq!(prompt, "<s>USER: <image>\nDescribe the image. ASSISTANT:");
    let ids = tok.encode_prompt(&prompt, IMAGE, 3).unwrap();
    assert_eq!(&ids[..2], &[1, 3148]);
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1);
}

#[test]
fn load_finds_the_chat_template_in_order() {
    let config: Value = read_json(&llama2_dir().join("tokenizer_config.json"));
    let with_template = |template: Value| {
        let mut c = config.clone();
        c["chat_template"] = template;
        c.to_string()
    };

    let dir = TempDir::with_tokenizer("order");
    dir.write(
        "tokenizer_config.json",
        &with_template(Value::from("from config")),
    );
    assert_eq!(
        TextTokenizer::load(&dir.0)
            .unwrap()
            .chat_prompt("x")
            .unwrap(),
        "from config"
    );

    dir.write(
        "chat_template.json",
        r#"{"chat_template": "from json {{ messages[0]['role'] }}"}"#,
    );
    assert_eq!(
        TextTokenizer::load(&dir.0)
            .unwrap()
            .chat_prompt("x")
            .unwrap(),
        "from json user"
    );

    dir.write("chat_template.jinja", "from jinja {{ eos_token }}\n");
    assert_eq!(
        TextTokenizer::load(&dir.0)
            .unwrap()
            .chat_prompt("x")
            .unwrap(),
        "from jinja </s>"
    );

    let named = TempDir::with_tokenizer("named");
    let list = serde_json::json!([
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "default {{ add_generation_prompt }}"}
    ]);
    named.write("tokenizer_config.json", &with_template(list));
    assert_eq!(
        TextTokenizer::load(&named.0)
            .unwrap()
            .chat_prompt("x")
            .unwrap(),
        "default True"
    ); // Python spelling, as Jinja2 prints it

    named.write(
        "tokenizer_config.json",
        &with_template(serde_json::json!([{"name": "a", "template": "b"}])),
    );
    let err = TextTokenizer::load(&named.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("default"),
        "{err}"
    );
}

#[test]
fn load_errors_name_the_file() {
    let empty = TempDir::new("missing");
    let err = TextTokenizer::load(&empty.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("cannot read"),
        "{err}"
    );

    let corrupt = TempDir::new("corrupt");
    corrupt.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
    let err = TextTokenizer::load(&corrupt.0).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json: not valid JSON"), "{err}");

    corrupt.write(
        "tokenizer.json",
        r#"{"architectures": ["LlavaForConditionalGeneration"]}"#,
    );
    let err = TextTokenizer::load(&corrupt.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json: not a Hugging Face tokenizer"),
        "{err}"
    );

    corrupt.write("tokenizer.json", r#"{"model": {"type": "NoSuchModel"}}"#);
    let err = TextTokenizer::load(&corrupt.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json: not a tokenizer this version can read"),
        "{err}"
    );

    let bad_config = TempDir::with_tokenizer("bad-config");
    bad_config.write("tokenizer_config.json", "{ nope");
    let err = TextTokenizer::load(&bad_config.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json: not valid JSON"),
        "{err}"
    );

    let bad_template = TempDir::with_tokenizer("bad-template");
    bad_template.write("chat_template.json", r#"{"template": "x"}"#);
    let err = TextTokenizer::load(&bad_template.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chat_template.json: has no \"chat_template\""),
        "{err}"
    );

    bad_template.write(
        "chat_template.jinja",
        "{{ raise_exception('only text chats') }}",
    );
    let tok = TextTokenizer::load(&bad_template.0).unwrap();
    let err = tok.chat_prompt("x").unwrap_err().to_string();
    assert!(
        err.contains("chat_template.jinja: ") && err.contains("only text chats"),
        "{err}"
    );
    fs::remove_file(bad_template.0.join("chat_template.jinja")).unwrap();

    bad_template.write(
        "chat_template.json",
        r#"{"chat_template": "{% for x in %}"}"#,
    );
    let err = TextTokenizer::load(&bad_template.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chat_template.json: does not compile as a Jinja template"),
        "{err}"
    );
}

/// The Llama-2 tokenizer.json with `<image>` removed from its added tokens.
fn tokenizer_without_image() -> Vec<u8> {
    let mut json: Value = read_json(&llama2_dir().join("tokenizer.json"));
    let added = json["added_tokens"].as_array_mut().unwrap();
    added.retain(|t| t["content"] != IMAGE);
    serde_json::to_vec(&json).unwrap()
}

#[test]
fn missing_image_token_is_a_clear_error() {
    let (_, config) = llama2_bytes();
    let json = tokenizer_without_image();
    let tok =
        TextTokenizer::from_bytes(&json, Some(&config), None, "llava/tokenizer.json").unwrap();
    assert_eq!(tok.token_id(IMAGE), None);
    let err = tok
        .encode_prompt("USER: <image>\nDescribe. ASSISTANT:", IMAGE, 576)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("llava/tokenizer.json: "), "{err}");
    assert!(err.contains("`<image>` is not in the vocabulary"), "{err}");

    // In the vocabulary (the newline byte, id 13) but typed as text it is six characters.
    let err = llama2()
        .encode_prompt("USER: <0x0A> x ASSISTANT:", "<0x0A>", 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not encode as one token"), "{err}");
}

#[test]
fn prompt_without_image_token_is_an_error() {
    let tok = llama2();
    let err = tok
        .encode_prompt("USER: Describe. ASSISTANT:", IMAGE, 576)
        .unwrap_err();
    assert!(
        err.to_string().contains("no image token `<image>`"),
        "{err}"
    );
    let err = tok.encode_prompt("USER: <image>\nx", IMAGE, 0).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn llama_tokenizer_class_rebuilds_bos_eos_and_cleans_up() {
    let dir = TempDir::with_tokenizer("llama-class");
    let config =
        fs::read_to_string(fixture_dir().join("llama_class/tokenizer_config.json")).unwrap();
    dir.write("tokenizer_config.json", &config);
    let tok = TextTokenizer::load(&dir.0).unwrap();
    // AddedToken-dict spelling of bos/eos in this config.
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), vec![2]);
    let expected = read_json(&fixture_dir().join("llama_class/expected.json"));
    for case in expected["cases"].as_array().unwrap() {
        let ids_expected = ids(&case["ids"]);
        let got = tok.encode(text(case, "text")).unwrap();
        assert_eq!(got, ids_expected, "{}", text(case, "text"));
        assert_eq!(got.last(), Some(&2), "add_eos_token appends </s>");
        assert_eq!(tok.decode(&got).unwrap(), text(case, "decoded"));
    }
}

#[test]
fn llama_class_with_unknown_bos_names_the_config() {
    let (json, _) = llama2_bytes();
    let config = r#"{"tokenizer_class": "LlamaTokenizer", "bos_token": "<nope>"}"#;
    let err = TextTokenizer::from_bytes(&json, Some(config.as_bytes()), None, "m/tokenizer.json")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "m/tokenizer_config.json: bos_token `<nope>` is not in the vocabulary"
    );
}

#[test]
fn extra_eos_ids_are_appended_once() {
    let mut tok = llama2();
    tok.set_extra_eos(&[2, 32007]);
    assert_eq!(tok.eos_ids(), vec![2, 32007]);
    tok.set_extra_eos(&[]);
    assert_eq!(tok.eos_ids(), vec![2]);
}

#[test]
fn same_vocabulary_compares_ids_added_tokens_and_specials() {
    let (json, config) = llama2_bytes();
    let a = llama2();
    let b = TextTokenizer::from_bytes(&json, Some(&config), None, "other/tokenizer.json").unwrap();
    assert!(a.same_vocabulary(&b));

    let no_image =
        TextTokenizer::from_bytes(&tokenizer_without_image(), Some(&config), None, "x").unwrap();
    assert!(!a.same_vocabulary(&no_image));

    let mut other_eos = b.clone();
    other_eos.set_extra_eos(&[32007]);
    assert!(!a.same_vocabulary(&other_eos));

    let bare = TextTokenizer::from_bytes(&json, None, None, "x").unwrap();
    assert!(!a.same_vocabulary(&bare), "no BOS/EOS and </s> not special");
}
