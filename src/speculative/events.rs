//! One typed record per speculation round: what the UI draws and `--trace` writes (JSON lines).

use serde::{Deserialize, Serialize};

use crate::speculative::tree::{DraftTree, NodeStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub id: usize,
    pub parent: Option<usize>,
    pub token: u32,
    pub text: String,
    pub depth: usize,
    /// Draft probability of this token given its parent.
    pub prob: f32,
    /// Cumulative draft log-probability of the path to this node.
    pub score: f32,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundTimings {
    pub draft_ms: f64,
    pub verify_ms: f64,
    pub bookkeeping_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundEvent {
    pub round: usize,
    pub nodes: Vec<NodeEvent>,
    /// Draft tokens the target accepted this round (bonus excluded).
    pub accepted: usize,
    /// Tokens this round added to the output (accepted + bonus, cut at EOS / the token limit).
    pub emitted: Vec<u32>,
    pub timings_ms: RoundTimings,
}

impl RoundEvent {
    pub fn new(
        round: usize,
        tree: &DraftTree,
        accepted: usize,
        emitted: Vec<u32>,
        timings: RoundTimings,
        text: &dyn Fn(u32) -> String,
    ) -> Self {
        let nodes = tree
            .nodes
            .iter()
            .enumerate()
            .map(|(id, n)| NodeEvent {
                id,
                parent: n.parent,
                token: n.token,
                text: text(n.token),
                depth: n.depth,
                prob: n.prob,
                score: n.score,
                status: n.status,
            })
            .collect();
        RoundEvent {
            round,
            nodes,
            accepted,
            emitted,
            timings_ms: timings,
        }
    }

    pub fn count(&self, status: NodeStatus) -> usize {
        self.nodes.iter().filter(|n| n.status == status).count()
    }
}
