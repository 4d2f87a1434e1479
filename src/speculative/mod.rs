//! Dynamic-tree speculative decoding (EAGLE-2's tree, as Spec-LLaVA uses it for VLMs).
//!
//! A small draft VLM proposes a tree of likely next tokens (`tree`): it grows where the draft is
//! confident (cumulative draft probability) and is cut to a node budget. The target checks the
//! whole tree in one forward pass with an ancestor mask (`verify`), the longest agreeing path is
//! kept, and both KV caches are compacted to it (`decode`). Each round is reported as a typed
//! event (`events`), which the UI draws and `--trace` writes.

pub mod adapt;
pub mod decode;
pub mod events;
pub mod tree;
pub mod verify;

use crate::error::{Error, Result};

/// Shape of the draft tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecOptions {
    /// Draft nodes verified per round (root excluded).
    pub budget: usize,
    /// Maximum drafting depth.
    pub depth: usize,
    /// Children proposed per expanded node, and frontier width.
    pub top_k: usize,
    /// Stop deepening when the best frontier path's draft probability falls below this.
    pub threshold: f32,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            budget: 24,
            depth: 8,
            top_k: 4,
            threshold: 0.02,
        }
    }
}

impl SpecOptions {
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 || self.depth == 0 || self.budget == 0 {
            return Err(Error::invalid(
                "budget, depth and top-k must each be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(Error::invalid(format!(
                "threshold must be in [0, 1], got {}",
                self.threshold
            )));
        }
        if self.budget > 256 {
            return Err(Error::invalid(format!(
                "budget {} is too large (at most 256)",
                self.budget
            )));
        }
        Ok(())
    }
}
