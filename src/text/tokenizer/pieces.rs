//! How token ids read as text: the spelling of vocabulary pieces ("▁" and GPT-2's byte-level
//! alphabet for spaces, `<0xHH>` byte-fallback tokens) for [`TextTokenizer::token_text`], and
//! transformers' `clean_up_tokenization` for `decode`.
//!
//! [`TextTokenizer::token_text`]: super::TextTokenizer::token_text

use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// How vocabulary entries spell text, for [`TextTokenizer::token_text`](super::TextTokenizer::token_text).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PieceStyle {
    /// GPT-2 byte-level alphabet ("Ġ" is a space).
    byte_level: bool,
    /// `<0xHH>` tokens stand for single bytes.
    byte_fallback: bool,
}

impl PieceStyle {
    /// A readable form of one vocabulary piece (not an added token): "▁cat" and "Ġcat" become
    /// " cat", `<0x0A>` becomes "\n"; bytes that are not valid UTF-8 on their own show as `<0xHH>`.
    pub(super) fn piece_text(self, token: &str) -> String {
        if self.byte_level {
            return bytes_text(&byte_level_bytes(token));
        }
        if self.byte_fallback {
            if let Some(byte) = parse_byte_token(token) {
                return bytes_text(&[byte]);
            }
        }
        token.replace('\u{2581}', " ")
    }
}

/// Which spelling the vocabulary uses, read from the decoder's component types.
pub(super) fn piece_style(inner: &Tokenizer) -> PieceStyle {
    let decoder = inner
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .unwrap_or(Json::Null);
    let mut types = Vec::new();
    collect_types(&decoder, &mut types);
    PieceStyle {
        byte_level: types.iter().any(|t| t == "ByteLevel"),
        byte_fallback: types.iter().any(|t| t == "ByteFallback"),
    }
}

fn collect_types(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(kind) = map.get("type").and_then(Json::as_str) {
                out.push(kind.to_string());
            }
            map.values().for_each(|v| collect_types(v, out));
        }
        Json::Array(list) => list.iter().for_each(|v| collect_types(v, out)),
        _ => {}
    }
}

/// `<0x0A>` -> 0x0A.
fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Text for raw bytes: valid UTF-8 as is, the rest as `<0xHH>`.
fn bytes_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("<0x{byte:02X}>"));
        }
    }
    out
}

/// GPT-2's byte-level alphabet, inverted: each char of a token stands for one byte (a char
/// outside the alphabet is kept as its own UTF-8).
fn byte_level_bytes(token: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(token.len());
    for c in token.chars() {
        match byte_level_byte(c) {
            Some(byte) => bytes.push(byte),
            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes
}

fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let code = c as u32;
    if code < 256 && printable(code) {
        return u8::try_from(code).ok();
    }
    // The other 68 bytes are numbered 256.. in byte order.
    let index = code.checked_sub(256)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(usize::try_from(index).ok()?)
        .and_then(|b| u8::try_from(b).ok())
}

/// transformers' `clean_up_tokenization`.
pub(super) fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |acc, (from, to)| acc.replace(from, to))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        // GPT-2's table: "Ġ" (U+0120) is the space, "Ċ" (U+010A) the newline.
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('A'), Some(b'A'));
        assert_eq!(byte_level_byte('\u{143}'), Some(0xAD));
        assert_eq!(byte_level_byte('\u{144}'), None);
        let mapped: HashSet<u8> = (0u32..0x200)
            .filter_map(char::from_u32)
            .filter_map(byte_level_byte)
            .collect();
        assert_eq!(mapped.len(), 256);
    }

    #[test]
    fn byte_tokens_and_invalid_utf8() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("<0x0A0>"), None);
        assert_eq!(bytes_text(&[0xF0, b'a']), "<0xF0>a");
        assert_eq!(bytes_text("é".as_bytes()), "é");
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Hello , world . Is n't it ? I 'm"),
            "Hello, world. Isn't it? I'm"
        );
    }
}
