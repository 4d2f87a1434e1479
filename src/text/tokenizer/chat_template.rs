//! The chat template: where it comes from (chat_template.jinja, chat_template.json or the
//! tokenizer config) and how it renders, like transformers' `apply_chat_template`.
//!
//! MiniJinja is set up like transformers' Jinja environment (trim_blocks, lstrip_blocks, loop
//! controls, `raise_exception`, a Python-style `tojson`, Python string/dict methods, and
//! `{% generation %}` blocks rendered as plain text).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use super::config::parse_config;
use super::CheckpointFiles;
use crate::error::{Error, Result};

/// Name under which the chat template is stored in the MiniJinja environment.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template and the file it came from (for error messages).
#[derive(Clone)]
pub(super) struct ChatTemplate {
    env: Environment<'static>,
    source_name: String,
}

impl ChatTemplate {
    /// Compile `source`; `source_name` names it in error messages.
    pub(super) fn compile(source: String, source_name: String) -> Result<Self> {
        Ok(Self {
            env: compile_template(source, &source_name)?,
            source_name,
        })
    }

    /// The prompt for one image and one user message (`add_generation_prompt=True`), with the
    /// bos/eos/unk/pad token strings passed like `special_tokens_map`.
    pub(super) fn render(
        &self,
        user_text: &str,
        template_tokens: &[(&'static str, String)],
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&self.source_name, &e))?;
        let image = Value::from_iter([("type", Value::from("image"))]);
        let text = Value::from_iter([("type", "text"), ("text", user_text)]);
        let message = Value::from_iter([
            ("role", Value::from("user")),
            ("content", Value::from(vec![image, text])),
        ]);
        let mut context: Vec<(&str, Value)> = vec![
            ("messages", Value::from(vec![message])),
            ("add_generation_prompt", Value::from(true)),
        ];
        for (key, text) in template_tokens {
            context.push((key, Value::from(text.as_str())));
        }
        template
            .render(Value::from_iter(context))
            .map_err(|e| template_error(&self.source_name, &e))
    }
}

/// A render error, named by the template's source, with MiniJinja's cause chain.
fn template_error(source_name: &str, err: &minijinja::Error) -> Error {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::file(source_name, msg)
}

/// The chat template from `chat_template.jinja` or `chat_template.json`, with its file name.
pub(super) fn template_from_files(files: &dyn CheckpointFiles) -> Result<Option<(String, String)>> {
    if let Some(bytes) = files.read("chat_template.jinja")? {
        let name = files.path("chat_template.jinja");
        let source =
            String::from_utf8(bytes).map_err(|_| Error::file(&name, "not valid UTF-8 text"))?;
        return Ok(Some((source, name)));
    }
    let Some(bytes) = files.read("chat_template.json")? else {
        return Ok(None);
    };
    let name = files.path("chat_template.json");
    let map = parse_config(&bytes, &name)?;
    match template_from_config(&map, &name)? {
        Some(source) => Ok(Some((source, name))),
        None => Err(Error::file(&name, "has no \"chat_template\" entry")),
    }
}

/// `chat_template` as a string, or a list of `{name, template}` of which "default" is used.
pub(super) fn template_from_config(
    config: &serde_json::Map<String, Json>,
    name: &str,
) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(list)) => {
            let default = list
                .iter()
                .find(|entry| entry.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|entry| entry.get("template"))
                .and_then(Json::as_str)
            {
                Some(source) => Ok(Some(source.to_string())),
                None => Err(Error::file(
                    name,
                    "chat_template is a list of named templates without a \"default\" one",
                )),
            }
        }
        Some(_) => Err(Error::file(
            name,
            "chat_template must be a string or a list of {name, template}",
        )),
    }
}

/// A MiniJinja environment that renders templates like transformers' ImmutableSandboxedEnvironment.
fn compile_template(source: String, source_name: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", python_tojson);
    env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
        .map_err(|e| {
            Error::file(
                source_name,
                format!("does not compile as a Jinja template: {e}"),
            )
        })?;
    Ok(env)
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `{% generation %}...{% endgeneration %}` (an extension that only records
/// offsets) becomes `{% if true %}...{% endif %}`, keeping any `-`/`+` whitespace modifiers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match rewrite_tag(tag) {
            Some((replacement, used)) => {
                out.push_str(&replacement);
                rest = &tag[used..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with a generation/endgeneration tag, its replacement and byte length.
fn rewrite_tag(tag: &str) -> Option<(String, usize)> {
    let end = tag.find("%}")?;
    let inner = &tag[2..end];
    let (open, body) = split_modifier_start(inner);
    let (body, close) = split_modifier_end(body);
    let keyword = match body.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((format!("{{%{open} {keyword} {close}%}}"), end + 2))
}

fn split_modifier_start(s: &str) -> (&str, &str) {
    match s.chars().next() {
        Some(c @ ('-' | '+')) => s.split_at(c.len_utf8()),
        _ => ("", s),
    }
}

fn split_modifier_end(s: &str) -> (&str, &str) {
    match s.chars().last() {
        Some('-' | '+') => s.split_at(s.len() - 1),
        _ => (s, ""),
    }
}

/// transformers' `tojson`: Python `json.dumps` (", " and ": " separators, no HTML escaping,
/// `ensure_ascii=False`), with the `indent`, `sort_keys` and `ensure_ascii` options.
fn python_tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let options = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&value, &options, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(value)),
        ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or(""), style)),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            let items = keys
                .into_iter()
                .map(|key| {
                    let item = value.get_item(&key)?;
                    Ok((key, item))
                })
                .collect::<std::result::Result<Vec<_>, minijinja::Error>>()?;
            write_container(out, style, depth, ('{', '}'), &items, |(key, item), out| {
                out.push_str(&json_string(&key.to_string(), style));
                out.push_str(": ");
                write_json(item, style, depth + 1, out)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, style, depth, ('[', ']'), &items, |item, out| {
                write_json(item, style, depth + 1, out)
            })?;
        }
        _ => out.push_str(&json_string(&value.to_string(), style)),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    (open, close): (char, char),
    items: &[T],
    mut write_item: impl FnMut(&T, &mut String) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if style.indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        write_item(item, out)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 => format!("{x:.1}"),
        Ok(x) if x.is_nan() => "NaN".to_string(),
        Ok(x) if x.is_infinite() => if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string(),
        Ok(x) => x.to_string(),
        Err(_) => value.to_string(),
    }
}

fn json_string(s: &str, style: &JsonStyle) -> String {
    let escaped = serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    if !style.ensure_ascii {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks_with_their_modifiers() {
        let src = "a{% generation %}b{%- endgeneration -%} c {%+generation%}{% if x %}{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "a{% if true %}b{%- endif -%} c {%+ if true %}{% if x %}{% endif %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
        assert_eq!(rewrite_generation_tags("x {% y"), "x {% y");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        // Expected strings are Python's json.dumps(x, ensure_ascii=False[, indent=2]) and
        // json.dumps(x, ensure_ascii=True, sort_keys=True).
        let source = r#"{% set x = {'b': [1, 2.0, none, true], 'a': 'é"<>
', 'e': {}, 'l': []} %}{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(ensure_ascii=true, sort_keys=true) }}"#;
        let env = compile_template(source.to_string(), "test").unwrap();
        let out = env.get_template(TEMPLATE_NAME).unwrap().render(()).unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(
            parts[0],
            r#"{"b": [1, 2.0, null, true], "a": "é\"<>\n", "e": {}, "l": []}"#
        );
        assert_eq!(
            parts[1],
            "{\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"a\": \"é\\\"<>\\n\",\n  \"e\": {},\n  \"l\": []\n}"
        );
        assert_eq!(
            parts[2],
            r#"{"a": "\u00e9\"<>\n", "b": [1, 2.0, null, true], "e": {}, "l": []}"#
        );
    }
}
