//! Text stage: tokenizer (prompt, chat template, image-token expansion) and the decoder.
pub mod decoder;
pub mod tokenizer;
