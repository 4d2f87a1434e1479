//! Model references as the page's target and draft fields accept them: a Hugging Face model id
//! (`org/name`, optional `@revision`), resolved on a hub as
//! `<hub>/<org>/<name>/resolve/<revision>/<file>` (https://huggingface.co unless the page's
//! `?hub=URL` names a mirror), or a base URL / path of a checkpoint folder.
//!
//! An id has exactly two segments and no scheme; a relative path that could look like one is
//! written with `./` (or `/`), as on the hub's own clients.

/// The hub a model id resolves on when the page names none.
pub const DEFAULT_HUB: &str = "https://huggingface.co";

/// What a model field holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// `org/name[@revision]` on a hub.
    Hub { id: String, revision: String },
    /// A URL or path of a checkpoint folder.
    Url(String),
}

fn id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.contains("..")
}

impl ModelRef {
    /// Read a model field; `None` for an empty one.
    pub fn parse(input: &str) -> Option<ModelRef> {
        let input = input.trim();
        if input.is_empty() {
            return None;
        }
        if !input.contains("://") && !input.starts_with(['.', '/']) {
            let (path, revision) = match input.split_once('@') {
                Some((p, r)) => (p, Some(r)),
                None => (input, None),
            };
            let revision_ok = revision.is_none_or(|r| {
                !r.is_empty()
                    && r.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            });
            if let Some((org, name)) = path.split_once('/') {
                if id_segment(org) && id_segment(name) && revision_ok {
                    return Some(ModelRef::Hub {
                        id: format!("{org}/{name}"),
                        revision: revision.unwrap_or("main").to_string(),
                    });
                }
            }
        }
        Some(ModelRef::Url(input.to_string()))
    }

    /// The checkpoint folder's base URL: a hub id under `hub`, a URL as given (the caller makes
    /// relative paths absolute).
    pub fn base_url(&self, hub: &str) -> String {
        match self {
            ModelRef::Hub { id, revision } => format!(
                "{}/{id}/resolve/{}",
                hub.trim_end_matches('/'),
                // The hub encodes a revision's slashes (`refs/pr/1`) as one path segment.
                revision.replace('/', "%2F")
            ),
            ModelRef::Url(u) => u.trim_end_matches('/').to_string(),
        }
    }
}

/// A download pair the page suggests: a target and a draft that share a tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct SuggestedPair {
    pub label: &'static str,
    pub target: &'static str,
    pub draft: &'static str,
    /// Download size of both checkpoints as published (f16), for the button.
    pub download: &'static str,
    /// What the pair needs on the device once quantized to q4 while loading.
    pub device: &'static str,
}

/// Public pairs that work as target + draft (same tokenizer; `README.md` lists them too).
pub const SUGGESTED_PAIRS: &[SuggestedPair] = &[
    SuggestedPair {
        label: "LLaVA-1.5-7B + TinyLLaVA-1.1B",
        target: "llava-hf/llava-1.5-7b-hf",
        draft: "bczhou/tiny-llava-v1-hf",
        download: "14.1 GB + 2.8 GB",
        device: "about 4.9 GB as q4",
    },
    SuggestedPair {
        label: "LLaVA-Interleave Qwen 7B + 0.5B",
        target: "llava-hf/llava-interleave-qwen-7b-hf",
        draft: "llava-hf/llava-interleave-qwen-0.5b-hf",
        download: "16.2 GB + 1.8 GB",
        device: "about 5.6 GB as q4",
    },
    SuggestedPair {
        label: "LLaVA-1.5-13B + TinyLLaVA-1.1B",
        target: "llava-hf/llava-1.5-13b-hf",
        draft: "bczhou/tiny-llava-v1-hf",
        download: "26.7 GB + 2.8 GB",
        device: "about 8.3 GB as q4",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_on_the_hub_and_urls_stay() {
        let hub = |s: &str| {
            ModelRef::parse(s)
                .unwrap()
                .base_url("http://127.0.0.1:9/hub/")
        };
        assert_eq!(
            hub("llava-hf/llava-1.5-7b-hf"),
            "http://127.0.0.1:9/hub/llava-hf/llava-1.5-7b-hf/resolve/main"
        );
        assert_eq!(
            hub(" org/m.v2@refs/pr/3 "),
            "http://127.0.0.1:9/hub/org/m.v2/resolve/refs%2Fpr%2F3"
        );
        assert_eq!(
            hub("org/name@abc123"),
            "http://127.0.0.1:9/hub/org/name/resolve/abc123"
        );
        for url in [
            "https://example.org/ckpt/",
            "./web/models/demo",
            "/models/x",
            "web/models/demo/target",
            "org/../x",
            "org/name@",
            "org/na me",
        ] {
            assert!(
                matches!(ModelRef::parse(url), Some(ModelRef::Url(_))),
                "{url} is not an id"
            );
        }
        assert_eq!(hub("https://example.org/ckpt/"), "https://example.org/ckpt");
        assert_eq!(ModelRef::parse("   "), None);
    }

    #[test]
    fn suggested_pairs_are_ids() {
        for p in SUGGESTED_PAIRS {
            for id in [p.target, p.draft] {
                assert!(
                    matches!(ModelRef::parse(id), Some(ModelRef::Hub { .. })),
                    "{id}"
                );
            }
        }
    }
}
