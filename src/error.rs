//! One error type for the whole pipeline. Every error that comes from user input names the file (or
//! input) it is about, so the CLI can print one clear line and the web app can show it in the page.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with a specific file or input (path, URL or a name such as "dropped image").
    #[error("{file}: {msg}")]
    File { file: String, msg: String },
    /// A problem not tied to one file (bad option values, mismatched models, ...).
    #[error("{0}")]
    Invalid(String),
    /// The model's logits held NaN (or +inf) at output token `token` (0-based): a broken
    /// checkpoint, or an overflow in half precision. The caption stops; the engine stays usable.
    #[error("the model produced NaN at token {token} (non-finite logits: a broken checkpoint, or an overflow in half precision)")]
    NonFinite { token: usize },
    /// The caller cancelled the run.
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(file: impl Display, msg: impl Display) -> Self {
        Error::File {
            file: file.to_string(),
            msg: msg.to_string(),
        }
    }
    pub fn invalid(msg: impl Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}
