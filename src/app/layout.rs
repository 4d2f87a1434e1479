//! Where each node of a speculation tree goes in the tree view.
//!
//! [`plan`] is what the page draws: depth left to right, the accepted path on the top row,
//! pruned candidates collapsed per verified node, labels shortened to their column.
//! [`layout`] below is the older tidy layered layout (kept for callers that want every node).
//!
//! Depth is the row. Leaves take consecutive columns in depth-first order (children in id order,
//! which is the draft's ranking), and a parent sits midway between its first and last child. Two
//! subtrees never share a column range, so nodes on one row are at least one column apart for
//! any tree (the view handles 1–128 nodes; the tests check up to 256).

use crate::speculative::events::NodeEvent;
use crate::speculative::tree::NodeStatus;

/// Column and row of every node (same order as the input), and the grid's size.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeLayout {
    pub positions: Vec<(f32, usize)>,
    pub columns: usize,
    pub rows: usize,
}

/// Lay out nodes given as (parent) links: node 0 is the root (no parent), every parent id is
/// smaller than its child's. Nodes whose parent is missing are placed as extra roots.
pub fn layout(nodes: &[NodeEvent]) -> TreeLayout {
    let n = nodes.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match node.parent {
            Some(p) if p < i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let mut positions = vec![(0.0f32, 0usize); n];
    let mut next_leaf = 0usize;
    // Iterative post-order (trees can be deep chains; no recursion limits).
    for &root in &roots {
        let mut stack = vec![(root, 0usize, false)];
        while let Some((v, depth, visited)) = stack.pop() {
            if visited || children[v].is_empty() {
                let x = if children[v].is_empty() {
                    next_leaf += 1;
                    (next_leaf - 1) as f32
                } else {
                    let first = positions[children[v][0]].0;
                    let last = positions[*children[v].last().unwrap()].0;
                    (first + last) / 2.0
                };
                positions[v] = (x, depth);
                continue;
            }
            stack.push((v, depth, true));
            for &c in children[v].iter().rev() {
                stack.push((c, depth + 1, false));
            }
        }
    }
    let rows = positions.iter().map(|p| p.1 + 1).max().unwrap_or(0);
    TreeLayout {
        positions,
        columns: next_leaf,
        rows,
    }
}

/// Acceptance by depth over rounds: for each depth d >= 1, the share of rounds whose tree reached
/// depth d in which the target accepted at least d tokens.
pub fn acceptance_by_depth(rounds: &[crate::speculative::events::RoundEvent]) -> Vec<f64> {
    let max_depth = rounds
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| n.depth))
        .max()
        .unwrap_or(0);
    (1..=max_depth)
        .map(|d| {
            let reached: Vec<_> = rounds
                .iter()
                .filter(|r| r.nodes.iter().any(|n| n.depth >= d))
                .collect();
            if reached.is_empty() {
                0.0
            } else {
                reached.iter().filter(|r| r.accepted >= d).count() as f64 / reached.len() as f64
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tree view's plan: which nodes are drawn, where, and with which label.
// ---------------------------------------------------------------------------------------------

/// Label font size (px) of the tree view: the view draws labels at exactly this size.
pub const FONT_PX: f32 = 12.0;
/// Row pitch and node (pill) height.
pub const ROW_PX: f32 = 28.0;
pub const PILL_H: f32 = 20.0;
/// Space kept free on every side of the drawing.
pub const MARGIN_PX: f32 = 8.0;
/// Horizontal gap between a node and the next column's node, and the label's inner padding.
pub const GAP_PX: f32 = 10.0;
pub const PAD_PX: f32 = 4.0;
/// Column width bounds: a narrow panel shortens labels down to `MIN_COL_PX` columns; below that
/// the drawing is wider than asked (the view scales it down).
pub const MIN_COL_PX: f32 = 40.0;
pub const MAX_COL_PX: f32 = 130.0;
/// Width of a "+5" badge.
pub const BADGE_W: f32 = 30.0;

/// What the tree view is asked to draw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanOptions {
    /// Width available (px).
    pub width: f32,
    /// Draw every pruned candidate as a node instead of collapsing them into badges.
    pub show_pruned: bool,
    /// Nodes whose collapsed pruned candidates the user expanded.
    pub expanded: Vec<usize>,
}

/// One drawn node. `x` is its left edge, `y` its centre line.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedNode {
    pub id: usize,
    /// Place in focus order among nodes and badges.
    pub seq: usize,
    pub column: usize,
    pub row: usize,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    /// What the node shows (fits `w`; shortened with an ellipsis).
    pub label: String,
    /// The token's readable text in full (byte tokens merged along the path where they complete a
    /// character), for the text alternative.
    pub text: String,
}

/// The collapsed (or expanded) pruned candidates below one drawn node.
#[derive(Debug, Clone, PartialEq)]
pub struct Badge {
    /// The drawn node the candidates hang below (their nearest verified ancestor).
    pub owner: usize,
    /// Place in focus order among nodes and badges.
    pub seq: usize,
    /// How many pruned candidates it stands for.
    pub count: usize,
    pub expanded: bool,
    /// Right of its node (a node with no drawn children), else under it in the same column.
    pub beside: bool,
    pub column: usize,
    pub row: usize,
    pub x: f32,
    pub y: f32,
    pub w: f32,
}

/// Where everything of one round goes.
#[derive(Debug, Clone, PartialEq)]
pub struct TreePlan {
    /// Drawn nodes in focus order: depth first, the accepted path first.
    pub nodes: Vec<PlacedNode>,
    /// (parent id, child id) of every drawn edge; both ends are in `nodes`.
    pub edges: Vec<(usize, usize)>,
    pub badges: Vec<Badge>,
    pub width: f32,
    pub height: f32,
    pub columns: usize,
    pub rows: usize,
    /// Left edge and width of each column (a node's pill is at most its column less `GAP_PX`).
    pub column_x: Vec<f32>,
    pub column_w: Vec<f32>,
    /// Pruned candidates of the round, drawn or not.
    pub pruned_total: usize,
}

impl TreePlan {
    /// The drawn node of id `id`.
    pub fn node(&self, id: usize) -> Option<&PlacedNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

fn is_pruned(n: &NodeEvent) -> bool {
    n.status == NodeStatus::Pruned
}

/// For every node, the nearest ancestor that is not pruned (itself if it is not pruned). Nodes
/// whose parent link is broken own themselves.
pub fn pruned_owner(nodes: &[NodeEvent]) -> Vec<usize> {
    let mut owner: Vec<usize> = (0..nodes.len()).collect();
    for (i, n) in nodes.iter().enumerate() {
        if is_pruned(n) {
            if let Some(p) = n.parent.filter(|&p| p < i) {
                owner[i] = owner[p];
            }
        }
    }
    owner
}

/// Pruned candidates collapsed per drawn node: (owner, count), owners in id order. The counts add
/// up to the round's pruned total.
pub fn pruned_groups(nodes: &[NodeEvent]) -> Vec<(usize, usize)> {
    let owner = pruned_owner(nodes);
    let mut counts = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if is_pruned(n) {
            counts[owner[i]] += 1;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .filter(|&(_, c)| c > 0)
        .collect()
}

/// A token text split into text and the raw bytes the tokenizer shows as `<0xHH>`.
fn pieces(text: &str) -> Vec<Result<char, u8>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(b) = rest
            .strip_prefix("<0x")
            .and_then(|r| r.get(..3))
            .filter(|h| h.ends_with('>'))
            .and_then(|h| u8::from_str_radix(&h[..2], 16).ok())
        {
            out.push(Err(b));
            rest = &rest[6..];
        } else {
            out.push(Ok(c));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Readable texts of a round's tokens. A byte token (`<0xE2>`, as the tokenizer shows a byte that
/// is not UTF-8 on its own) that completes a character together with the bytes just before it on
/// its path shows that character; bytes that do not (yet) make a character show as `\xE2`.
pub fn token_texts(nodes: &[NodeEvent]) -> Vec<String> {
    // Bytes left pending at the end of each node (an incomplete UTF-8 sequence), for its children.
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); nodes.len()];
    let mut texts = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let mut carry: Vec<u8> = n
            .parent
            .filter(|&p| p < i)
            .map(|p| pending[p].clone())
            .unwrap_or_default();
        // Bytes of `carry` that are this node's own (the rest were shown by its ancestors).
        let mut own_from = carry.len();
        let mut out = String::new();
        let flush = |carry: &mut Vec<u8>, own_from: &mut usize, out: &mut String| {
            for b in &carry[(*own_from).min(carry.len())..] {
                out.push_str(&format!("\\x{b:02X}"));
            }
            carry.clear();
            *own_from = 0;
        };
        for piece in pieces(&n.text) {
            match piece {
                Ok(c) => {
                    flush(&mut carry, &mut own_from, &mut out);
                    out.push(c);
                }
                Err(b) => {
                    carry.push(b);
                    match std::str::from_utf8(&carry) {
                        Ok(s) => {
                            out.push_str(s);
                            carry.clear();
                            own_from = 0;
                        }
                        // Incomplete so far: wait for more bytes.
                        Err(e) if e.error_len().is_none() && carry.len() < 4 => {}
                        Err(_) => {
                            // Not a character: show the bytes one by one, keeping the last byte
                            // in case it starts a new one.
                            let last = carry.pop();
                            flush(&mut carry, &mut own_from, &mut out);
                            carry.extend(last);
                            if let Ok(s) = std::str::from_utf8(&carry) {
                                out.push_str(s);
                                carry.clear();
                            }
                        }
                    }
                }
            }
        }
        // What is still pending is shown as bytes here and handed to the children, which show the
        // character if they complete it.
        for b in &carry[own_from.min(carry.len())..] {
            out.push_str(&format!("\\x{b:02X}"));
        }
        pending[i] = carry;
        texts.push(out);
    }
    texts
}

/// A token's text as a node label: the word without its leading space; whitespace, line breaks
/// and control characters made visible; never empty.
pub fn token_label(text: &str) -> String {
    let word = text.strip_prefix(' ').unwrap_or(text);
    let mut out = String::new();
    for c in word.chars() {
        match c {
            ' ' => out.push('␣'),
            '\n' => out.push('⏎'),
            '\r' => out.push('↵'),
            '\t' => out.push('⇥'),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push(if text.is_empty() { '∅' } else { '␣' });
    }
    out
}

/// Whether a character is drawn double width (CJK, Hangul, full-width forms, emoji).
fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1FAFF | 0x20000..=0x3FFFD)
}

/// A generous estimate of a text's drawn width (px) at `font_px` in a sans-serif face: never
/// less than what common faces draw, so labels that "fit" never overlap.
pub fn text_width(text: &str, font_px: f32) -> f32 {
    let em: f32 =
        text.chars()
            .map(|c| match c {
                'i' | 'j' | 'l' | 't' | 'f' | 'r' | 'I' | '.' | ',' | ':' | ';' | '\'' | '!'
                | '|' => 0.38,
                ' ' => 0.35,
                'm' | 'w' | 'M' | 'W' | '@' | '%' => 0.95,
                'A'..='Z' => 0.74,
                c if c.is_ascii() => 0.64,
                c if is_wide(c) => 1.05,
                _ => 0.8,
            })
            .sum();
    em * font_px
}

/// `label` if it fits `max_px` at `font_px`, else its longest prefix that fits with an ellipsis
/// (at least "…").
pub fn shorten(label: &str, max_px: f32, font_px: f32) -> String {
    if text_width(label, font_px) <= max_px {
        return label.to_string();
    }
    let ellipsis = text_width("…", font_px);
    let mut out = String::new();
    let mut used = ellipsis;
    for c in label.chars() {
        let w = text_width(c.encode_utf8(&mut [0; 4]), font_px);
        if used + w > max_px {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// The text alternative of a node, e.g. "accepted: 'yellow', draft confidence 0.91".
pub fn node_description(node: &NodeEvent, text: &str) -> String {
    let quoted = format!("'{}'", token_label(text));
    match node.status {
        NodeStatus::Accepted if node.parent.is_none() => {
            format!("previous token: {quoted}, already in the caption")
        }
        NodeStatus::Bonus => format!("bonus, the target's own token: {quoted}"),
        s => {
            let name = match s {
                NodeStatus::Accepted => "accepted",
                NodeStatus::Rejected => "rejected",
                NodeStatus::Expanded => "verified, not reached",
                _ => "pruned",
            };
            format!("{name}: {quoted}, draft confidence {:.2}", node.prob)
        }
    }
}

/// Place one round for the tree view. Depth runs left to right (one column per depth), siblings
/// top to bottom with the accepted (or bonus) child first and the rest in the draft's order, and a
/// parent on its first child's row: the accepted path is the top row and reads as the words it
/// added, the bonus token at its end. Pruned candidates are collapsed into one badge per drawn
/// node (their nearest verified ancestor) unless expanded or `show_pruned`; a badge sits right
/// of a node with no drawn children, else under its node. Columns share `options.width`, each as
/// wide as its labels want until they do not all fit; then labels are shortened to their column.
pub fn plan(nodes: &[NodeEvent], options: &PlanOptions) -> TreePlan {
    let n = nodes.len();
    let owner = pruned_owner(nodes);
    let groups = pruned_groups(nodes);
    let drawn = |i: usize| {
        !is_pruned(&nodes[i]) || options.show_pruned || options.expanded.contains(&owner[i])
    };
    // Children lists among drawn nodes; an extra child slot for a badge (usize::MAX).
    const BADGE: usize = usize::MAX;
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for i in (0..n).filter(|&i| drawn(i)) {
        match nodes[i].parent {
            Some(p) if p < i && drawn(p) => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let first_rank =
        |i: usize| !matches!(nodes[i].status, NodeStatus::Accepted | NodeStatus::Bonus);
    for c in children.iter_mut() {
        c.sort_by_key(|&i| (first_rank(i), i));
    }
    let mut badge_of = vec![None; n];
    if !options.show_pruned {
        for &(o, count) in &groups {
            badge_of[o] = Some(count);
            children[o].push(BADGE);
        }
    }
    // Preorder: a first child shares its parent's row, any later child opens a new row (its
    // row is taken when it is popped, after its elder siblings' subtrees are placed).
    let mut order: Vec<(usize, bool, usize, usize)> = Vec::new(); // (id or owner, badge, column, row)
    let mut max_row: Option<usize> = None;
    for &root in &roots {
        let mut stack: Vec<(usize, bool, usize, Option<usize>)> = vec![(root, false, 0, None)];
        while let Some((v, badge, column, row)) = stack.pop() {
            let row = row.unwrap_or_else(|| max_row.map_or(0, |m| m + 1));
            max_row = Some(max_row.map_or(row, |m| m.max(row)));
            order.push((v, badge, column, row));
            if badge {
                continue;
            }
            let leaf = children[v].len() == 1;
            for (k, &c) in children[v].iter().enumerate().rev() {
                if c == BADGE && !leaf {
                    // Under its node, in the node's column: free, as the node's subtree lies
                    // to its right (the row below is reserved when the subtree is one row).
                    stack.push((v, true, column, Some(row + 1)));
                } else {
                    let id = if c == BADGE { v } else { c };
                    stack.push((id, c == BADGE, column + 1, (k == 0).then_some(row)));
                }
            }
        }
    }
    let columns = order.iter().map(|o| o.2 + 1).max().unwrap_or(1);
    let rows = max_row.map_or(1, |r| r + 1);
    let avail = if options.width.is_finite() {
        options.width
    } else {
        0.0
    };
    let texts = token_texts(nodes);
    let labels: Vec<String> = texts.iter().map(|t| token_label(t)).collect();
    // Each column as wide as its widest full label wants, within bounds; if they do not all fit,
    // the widest give way first (one cap for all, found by bisection), never below the minimum.
    let mut want = vec![MIN_COL_PX; columns];
    for &(v, badge, column, _) in &order {
        let w = if badge {
            BADGE_W + GAP_PX
        } else {
            text_width(&labels[v], FONT_PX) + 2.0 * PAD_PX + GAP_PX
        };
        want[column] = want[column].max(w.min(MAX_COL_PX));
    }
    let inner = avail - 2.0 * MARGIN_PX;
    let total = |cap: f32| want.iter().map(|&w| w.min(cap)).sum::<f32>();
    let column_w: Vec<f32> = if total(MAX_COL_PX) <= inner {
        // Room to spare: spread it evenly, up to the maximum column width.
        let extra = (inner - total(MAX_COL_PX)) / columns as f32;
        want.iter()
            .map(|&w| (w + extra).min(MAX_COL_PX.max(w)))
            .collect()
    } else {
        let (mut lo, mut hi) = (MIN_COL_PX, MAX_COL_PX);
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if total(mid) <= inner {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        want.iter().map(|&w| w.min(lo)).collect()
    };
    let mut column_x = Vec::with_capacity(columns);
    let mut x = MARGIN_PX;
    for &w in &column_w {
        column_x.push(x);
        x += w;
    }
    let width = avail.max(x + MARGIN_PX);
    let height = 2.0 * MARGIN_PX + rows as f32 * ROW_PX;
    let mut placed = Vec::new();
    let mut badges = Vec::new();
    for (seq, &(v, badge, column, row)) in order.iter().enumerate() {
        let x = column_x[column];
        let max_w = column_w[column] - GAP_PX;
        let y = MARGIN_PX + row as f32 * ROW_PX + ROW_PX / 2.0;
        if badge {
            badges.push(Badge {
                owner: v,
                seq,
                count: badge_of[v].unwrap_or(0),
                expanded: options.expanded.contains(&v),
                column,
                row,
                x,
                y,
                w: BADGE_W.min(max_w),
                beside: nodes_children_drawn(&children, v) == 0,
            });
        } else {
            let label = shorten(&labels[v], max_w - 2.0 * PAD_PX, FONT_PX);
            let w = (text_width(&label, FONT_PX) + 2.0 * PAD_PX).clamp(PILL_H.min(max_w), max_w);
            placed.push(PlacedNode {
                id: v,
                seq,
                column,
                row,
                x,
                y,
                w,
                label,
                text: texts[v].clone(),
            });
        }
    }
    let edges = placed
        .iter()
        .filter_map(|c| {
            let p = nodes[c.id].parent?;
            (p < c.id && drawn(p)).then_some((p, c.id))
        })
        .collect();
    TreePlan {
        nodes: placed,
        edges,
        badges,
        width,
        height,
        columns,
        rows,
        column_x,
        column_w,
        pruned_total: nodes.iter().filter(|n| is_pruned(n)).count(),
    }
}

/// Drawn children of `v` (badge slots excluded).
fn nodes_children_drawn(children: &[Vec<usize>], v: usize) -> usize {
    children[v].iter().filter(|&&c| c != usize::MAX).count()
}

/// When each phase of a round's live drawing starts (ms after the round arrives): draft levels
/// appear one column every `step_ms`; at `prune_at_ms` the candidates cut by the budget fade into
/// their badges; at `verify_at_ms` the verdict colours nodes (the accepted path left to right, one
/// column every `path_step_ms`); at `fly_at_ms` the accepted words fly into the caption.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    pub step_ms: u32,
    pub prune_at_ms: u32,
    pub verify_at_ms: u32,
    pub path_step_ms: u32,
    pub fly_at_ms: u32,
}

/// Phase times for a round whose drawn tree has `columns` columns. The whole sequence stays
/// under about 1.6 s up to 30 columns (the default depth 8 draws about 11).
pub fn phase_times(columns: usize) -> PhaseTimes {
    let columns = columns.max(1) as u32;
    let step_ms = (560 / columns).clamp(10, 80);
    let prune_at_ms = step_ms * columns + 80;
    let verify_at_ms = prune_at_ms + 220;
    let path_step_ms = (360 / columns).clamp(8, 50);
    PhaseTimes {
        step_ms,
        prune_at_ms,
        verify_at_ms,
        path_step_ms,
        fly_at_ms: verify_at_ms + path_step_ms * columns + 150,
    }
}

/// Phase times of a round as the tree view draws it by default.
pub fn round_phase_times(nodes: &[NodeEvent]) -> PhaseTimes {
    let columns = nodes
        .iter()
        .filter(|n| !is_pruned(n))
        .map(|n| n.depth + 1)
        .max()
        .unwrap_or(1);
    phase_times(columns + 1)
}
