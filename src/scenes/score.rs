//! Per-attribute scoring of a predicted caption against a scene, for `spec-llava eval`.
//!
//! The predicted caption is parsed; its groups are matched one-to-one to the true groups by the
//! assignment that agrees on the most attributes (ties go to caption order), so one wrong word
//! costs one attribute and does not shift every later group. Then, per true group: shape, colour,
//! size and count are right or wrong; position counts the true objects whose cell the matched group
//! also names; relation counts true relations that the matched group states the same way about the
//! matched anchor. A caption that does not parse scores 0 on everything (totals still count).

use super::{parse_caption, Group, Scene, SceneFacts};
use std::ops::AddAssign;

/// `correct` out of `total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub correct: u32,
    pub total: u32,
}

impl Tally {
    fn of(correct: bool) -> Tally {
        Tally {
            correct: u32::from(correct),
            total: 1,
        }
    }

    /// correct / total, or 1.0 when there was nothing to get right.
    pub fn fraction(self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            f64::from(self.correct) / f64::from(self.total)
        }
    }
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.correct += other.correct;
        self.total += other.total;
    }
}

/// How much of a scene a predicted caption got right. Add scores of many scenes with `+=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributeScores {
    /// The caption equals the canonical caption (surrounding whitespace ignored).
    pub exact: Tally,
    /// The caption follows the grammar.
    pub parsed: Tally,
    /// Per true group.
    pub shape: Tally,
    pub colour: Tally,
    pub size: Tally,
    pub count: Tally,
    /// Per true object.
    pub position: Tally,
    /// Per true group placed by a relation ("below it").
    pub relation: Tally,
    /// Pattern and colour of the background, both right (one per scene).
    pub background: Tally,
    /// Predicted groups matched to no true group (hallucinated objects).
    pub extra_groups: u32,
}

impl AddAssign for AttributeScores {
    fn add_assign(&mut self, o: AttributeScores) {
        self.exact += o.exact;
        self.parsed += o.parsed;
        self.shape += o.shape;
        self.colour += o.colour;
        self.size += o.size;
        self.count += o.count;
        self.position += o.position;
        self.relation += o.relation;
        self.background += o.background;
        self.extra_groups += o.extra_groups;
    }
}

/// Scores `predicted` against the scene it should describe.
pub fn attribute_scores(predicted: &str, truth: &Scene) -> AttributeScores {
    let parsed = parse_caption(predicted);
    let mut scores = score_facts(parsed.as_ref(), &truth.facts);
    scores.exact = Tally::of(predicted.trim() == truth.caption);
    scores
}

/// [`attribute_scores`] from the true caption alone (it must follow the grammar, as every
/// generated caption does): what scorers outside the engine (the trainer) use, with the same
/// numbers. `None` when `truth` does not parse.
pub fn caption_scores(predicted: &str, truth: &str) -> Option<AttributeScores> {
    let facts = parse_caption(truth)?;
    let mut scores = score_facts(parse_caption(predicted).as_ref(), &facts);
    scores.exact = Tally::of(predicted.trim() == truth.trim());
    Some(scores)
}

/// Scores parsed facts (`None`: the caption did not parse) against the true facts; `exact` here
/// means equal facts, which a canonical caption has exactly when its text is equal.
pub fn score_facts(predicted: Option<&SceneFacts>, truth: &SceneFacts) -> AttributeScores {
    let matching = predicted.map(|p| best_matching(&p.groups, &truth.groups));
    let mut s = AttributeScores {
        exact: Tally::of(predicted == Some(truth)),
        parsed: Tally::of(predicted.is_some()),
        background: Tally::of(predicted.is_some_and(|p| p.background == truth.background)),
        ..AttributeScores::default()
    };
    for (i, t) in truth.groups.iter().enumerate() {
        let matched = match (predicted, &matching) {
            (Some(p), Some(m)) => m[i].map(|j| (j, &p.groups[j])),
            _ => None,
        };
        let same = |f: &dyn Fn(&Group) -> bool| matched.is_some_and(|(_, g)| f(g));
        s.shape += Tally::of(same(&|g| g.shape == t.shape));
        s.colour += Tally::of(same(&|g| g.colour == t.colour));
        s.size += Tally::of(same(&|g| g.size == t.size));
        s.count += Tally::of(same(&|g| g.count() == t.count()));
        let overlap = matched.map_or(0, |(_, g)| shared_cells(g, t));
        s.position += Tally {
            correct: overlap as u32,
            total: t.count() as u32,
        };
        if let Some(relation) = t.relation {
            // Same relation word, stated about the group matched to the true anchor.
            let anchor_ok = |j: usize| {
                i > 0 && j > 0 && matching.as_ref().is_some_and(|m| m[i - 1] == Some(j - 1))
            };
            s.relation += Tally::of(
                matched.is_some_and(|(j, g)| g.relation == Some(relation) && anchor_ok(j)),
            );
        }
    }
    if let (Some(p), Some(m)) = (predicted, &matching) {
        s.extra_groups = (p.groups.len() - m.iter().flatten().count()) as u32;
    }
    s
}

fn shared_cells(a: &Group, b: &Group) -> usize {
    b.cells.iter().filter(|c| a.cells.contains(c)).count()
}

/// How many attributes two groups agree on (position counted per shared cell).
fn agreement(p: &Group, t: &Group) -> usize {
    usize::from(p.shape == t.shape)
        + usize::from(p.colour == t.colour)
        + usize::from(p.size == t.size)
        + usize::from(p.count() == t.count())
        + shared_cells(p, t)
}

/// For each true group, the index of its predicted group (or none), maximising total agreement.
/// Exhaustive search: at most 9 predicted groups (the parser's limit) and a handful of true ones.
fn best_matching(predicted: &[Group], truth: &[Group]) -> Vec<Option<usize>> {
    let mut current = Vec::with_capacity(truth.len());
    let mut best = (0, vec![None; truth.len()]);
    let mut used = vec![false; predicted.len()];
    search(predicted, truth, &mut used, &mut current, 0, &mut best);
    best.1
}

fn search(
    predicted: &[Group],
    truth: &[Group],
    used: &mut [bool],
    current: &mut Vec<Option<usize>>,
    score: usize,
    best: &mut (usize, Vec<Option<usize>>),
) {
    let i = current.len();
    let Some(t) = truth.get(i) else {
        // Strictly better only, so the first assignment found (caption order) wins ties.
        if score > best.0 {
            *best = (score, current.clone());
        }
        return;
    };
    for j in 0..predicted.len() {
        if !used[j] {
            used[j] = true;
            current.push(Some(j));
            search(
                predicted,
                truth,
                used,
                current,
                score + agreement(&predicted[j], t),
                best,
            );
            current.pop();
            used[j] = false;
        }
    }
    current.push(None);
    search(predicted, truth, used, current, score, best);
    current.pop();
}
