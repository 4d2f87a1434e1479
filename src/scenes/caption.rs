//! The caption grammar: renders [`SceneFacts`] as the one canonical caption and parses captions
//! back.
//!
//! ```text
//! caption   := group (sep group)* " on a " pattern " " bg-colour " background."
//! sep       := ", "  before every later group but the last | " and " before the last
//! group     := count " " size " " colour " " shape placement
//! count     := "a" | "two" | "three" | "four"   (shape is plural unless count is "a")
//! placement := " at the " cells          one cell per object, reading order
//!            | " " relation              a single object whose cell shares an edge with
//!                                        the cell of a single-object previous group
//! cells     := cell | cell (", " cell)* " and " cell
//! cell      := "top left" | "top" | "top right" | "left" | "center" | "right"
//!            | "bottom left" | "bottom" | "bottom right"
//! relation  := "above it" | "below it" | "left of it" | "right of it"
//!                                        ("it" is the previous group)
//! ```
//!
//! Example: "a large red circle at the top left, a small white star below it and two small blue
//! triangles at the bottom and bottom right on a striped gray background." Groups come largest
//! size first, then by their first cell in reading order; "below it" places the star under the
//! circle.
//!
//! The parser is strict about the grammar (a caption that strays from it yields `None`) but
//! ignores letter case and whitespace, and accepts a missing final period.

use super::{
    Background, BackgroundColour, Cell, Colour, Group, Pattern, Relation, SceneFacts, Shape, Size,
    GRID,
};

/// Count words, index = count - 1.
const COUNTS: [&str; 4] = ["a", "two", "three", "four"];
/// Punctuation that [`caption_tokens`] splits off words.
const PUNCTUATION: &[char] = &[',', '.', ';', ':', '!', '?'];

/// Renders the canonical caption for `facts`. Counts above four (never generated) are written as
/// "four"; such facts do not round-trip.
pub fn render_caption(facts: &SceneFacts) -> String {
    let mut tokens: Vec<&str> = Vec::new();
    let last = facts.groups.len().saturating_sub(1);
    for (i, group) in facts.groups.iter().enumerate() {
        if i > 0 {
            tokens.push(if i == last { "and" } else { "," });
        }
        group_tokens(group, &mut tokens);
    }
    tokens.extend([
        "on",
        "a",
        facts.background.pattern.word(),
        facts.background.colour.word(),
        "background",
        ".",
    ]);
    join_tokens(&tokens)
}

fn group_tokens<'a>(group: &'a Group, tokens: &mut Vec<&'a str>) {
    let count = group.count();
    tokens.push(COUNTS.get(count.wrapping_sub(1)).copied().unwrap_or("four"));
    tokens.push(group.size.word());
    tokens.push(group.colour.word());
    tokens.push(if count == 1 {
        group.shape.word()
    } else {
        group.shape.plural()
    });
    match group.relation {
        Some(relation) => tokens.extend(relation.words()),
        None => {
            tokens.extend(["at", "the"]);
            let last = group.cells.len().saturating_sub(1);
            for (i, cell) in group.cells.iter().enumerate() {
                if i > 0 {
                    tokens.push(if i == last { "and" } else { "," });
                }
                tokens.extend(cell.words());
            }
        }
    }
}

/// Joins tokens with single spaces, attaching punctuation to the word before it.
fn join_tokens(tokens: &[&str]) -> String {
    let mut out = String::new();
    for token in tokens {
        let is_punct = token.len() == 1 && token.starts_with(PUNCTUATION);
        if !out.is_empty() && !is_punct {
            out.push(' ');
        }
        out.push_str(token);
    }
    out
}

/// Splits a caption into lowercase tokens: words on whitespace, with each punctuation mark a token
/// of its own ("left," -> "left", ","). This is the token count the 12-40 budget refers to.
pub fn caption_tokens(caption: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for piece in caption.split_whitespace() {
        let mut word = String::new();
        for ch in piece.chars() {
            if PUNCTUATION.contains(&ch) {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(ch.to_string());
            } else {
                word.extend(ch.to_lowercase());
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
    }
    tokens
}

/// Every token (words and punctuation) the grammar can produce.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Vec::new();
    words.extend(COUNTS);
    words.extend(Size::ALL.map(Size::word));
    words.extend(Colour::ALL.map(Colour::word));
    words.extend(Shape::ALL.map(Shape::word));
    words.extend(Shape::ALL.map(Shape::plural));
    words.extend(["at", "the", "top", "bottom", "left", "right", "center"]);
    words.extend(["above", "below", "of", "it"]);
    words.extend(["and", ",", "on", "background", "."]);
    words.extend(Pattern::ALL.map(Pattern::word));
    words.extend(BackgroundColour::ALL.map(BackgroundColour::word));
    let mut seen = std::collections::HashSet::new();
    words.retain(|w| seen.insert(*w));
    words
}

/// Parses a caption written in the grammar above back into facts; `None` if it strays from the
/// grammar (unknown word, count/plural mismatch, wrong number of cells, a relation without a
/// single-object group before it or pointing off the grid, more than nine groups).
pub fn parse_caption(caption: &str) -> Option<SceneFacts> {
    let tokens = caption_tokens(caption);
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
    };
    let mut groups: Vec<Group> = Vec::new();
    loop {
        let group = parser.group(groups.last())?;
        groups.push(group);
        if groups.len() > Cell::ALL.len() {
            return None;
        }
        match parser.peek() {
            Some(",") | Some("and") => parser.pos += 1,
            _ => break,
        }
    }
    let background = parser.background()?;
    parser.eat(".");
    parser.at_end().then_some(SceneFacts { groups, background })
}

struct Parser<'a> {
    tokens: &'a [String],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> Option<&'a str> {
        self.tokens.get(self.pos + ahead).map(String::as_str)
    }

    fn next(&mut self) -> Option<&'a str> {
        let token = self.tokens.get(self.pos)?;
        self.pos += 1;
        Some(token.as_str())
    }

    /// Consumes `word` if it is next.
    fn eat(&mut self, word: &str) -> bool {
        let found = self.peek() == Some(word);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, word: &str) -> Option<()> {
        self.eat(word).then_some(())
    }

    fn at_end(&self) -> bool {
        self.pos == self.tokens.len()
    }

    /// Takes the next token if it is one of `items`' words.
    fn one_of<T: Copy>(&mut self, items: &[T], word: impl Fn(T) -> &'static str) -> Option<T> {
        let token = self.next()?;
        items.iter().copied().find(|&item| word(item) == token)
    }

    fn group(&mut self, previous: Option<&Group>) -> Option<Group> {
        let count = self.one_of(&[1, 2, 3, 4], |n: usize| COUNTS[n - 1])?;
        let size = self.one_of(&Size::ALL, Size::word)?;
        let colour = self.one_of(&Colour::ALL, Colour::word)?;
        let shape = if count == 1 {
            self.one_of(&Shape::ALL, Shape::word)?
        } else {
            self.one_of(&Shape::ALL, Shape::plural)?
        };
        let (cells, relation) = if self.eat("at") {
            self.expect("the")?;
            (self.cells()?, None)
        } else {
            let relation = self.relation()?;
            let anchor = match previous.map(|g| g.cells.as_slice()) {
                Some([anchor]) => *anchor,
                _ => return None,
            };
            (vec![anchor.offset(relation.offset())?], Some(relation))
        };
        (cells.len() == count).then_some(Group {
            shape,
            colour,
            size,
            cells,
            relation,
        })
    }

    /// A cell list; a "," or "and" continues it only when a cell name follows (otherwise it
    /// separates groups).
    fn cells(&mut self) -> Option<Vec<Cell>> {
        let mut cells = vec![self.cell()?];
        while matches!(self.peek(), Some(",") | Some("and"))
            && self.peek_at(1).is_some_and(is_cell_word)
        {
            self.pos += 1;
            cells.push(self.cell()?);
        }
        Some(cells)
    }

    fn cell(&mut self) -> Option<Cell> {
        let (row, col) = match self.next()? {
            "center" => (1, 1),
            "left" => (1, 0),
            "right" => (1, 2),
            edge @ ("top" | "bottom") => {
                let row = if edge == "top" { 0 } else { GRID - 1 };
                let col = match self.peek() {
                    Some("left") => 0,
                    Some("right") => GRID - 1,
                    _ => 1,
                };
                if col != 1 {
                    self.pos += 1;
                }
                (row, col)
            }
            _ => return None,
        };
        Some(Cell { row, col })
    }

    fn relation(&mut self) -> Option<Relation> {
        let relation = match self.next()? {
            "above" => Relation::Above,
            "below" => Relation::Below,
            "left" => Relation::LeftOf,
            "right" => Relation::RightOf,
            _ => return None,
        };
        if matches!(relation, Relation::LeftOf | Relation::RightOf) {
            self.expect("of")?;
        }
        self.expect("it")?;
        Some(relation)
    }

    fn background(&mut self) -> Option<Background> {
        self.expect("on")?;
        self.expect("a")?;
        let pattern = self.one_of(&Pattern::ALL, Pattern::word)?;
        let colour = self.one_of(&BackgroundColour::ALL, BackgroundColour::word)?;
        self.expect("background")?;
        Some(Background { pattern, colour })
    }
}

fn is_cell_word(token: &str) -> bool {
    matches!(token, "top" | "bottom" | "left" | "right" | "center")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_punctuation_and_lowercase() {
        assert_eq!(
            caption_tokens("A Star, at  the top."),
            ["a", "star", ",", "at", "the", "top", "."]
        );
    }

    #[test]
    fn cell_lists_and_group_separators_are_told_apart() {
        let caption =
            "two small blue triangles at the top left and bottom, a large red circle above it \
                       and a small pink ring at the center on a noisy navy background.";
        // "above it" after a two-object group has no single anchor: not in the grammar.
        assert_eq!(parse_caption(caption), None);
        let caption =
            "a large red circle at the bottom left, a small blue triangle above it and two small \
                       pink rings at the top and right on a noisy navy background";
        let facts = parse_caption(caption).expect("parses");
        let cells: Vec<Vec<Cell>> = facts.groups.iter().map(|g| g.cells.clone()).collect();
        assert_eq!(
            cells,
            [
                vec![Cell { row: 2, col: 0 }],
                vec![Cell { row: 1, col: 0 }],
                vec![Cell { row: 0, col: 1 }, Cell { row: 1, col: 2 }]
            ]
        );
        assert_eq!(facts.groups[1].relation, Some(Relation::Above));
        assert_eq!(render_caption(&facts), format!("{caption}."));
    }

    #[test]
    fn module_doc_example_round_trips() {
        let caption =
            "a large red circle at the top left, a small white star below it and two small \
                       blue triangles at the bottom and bottom right on a striped gray background.";
        let facts = parse_caption(caption).expect("parses");
        assert_eq!(facts.groups[1].cells, [Cell { row: 1, col: 0 }]);
        assert_eq!(
            facts.groups[2].cells,
            [Cell { row: 2, col: 1 }, Cell { row: 2, col: 2 }]
        );
        assert_eq!(render_caption(&facts), caption);
    }

    #[test]
    fn grammar_violations_do_not_parse() {
        let good = "a small red star at the top on a plain gray background.";
        assert!(parse_caption(good).is_some());
        for bad in [
            "a small red stars at the top on a plain gray background.",
            "two small red stars at the top on a plain gray background.",
            "a small red star at the top on a plain gray background. extra",
            "a small red star below it on a plain gray background.",
            "a small red star at the top, a large blue ring above it on a plain gray background.",
            "a tiny red star at the top on a plain gray background.",
            "",
        ] {
            assert_eq!(parse_caption(bad), None, "{bad}");
        }
    }
}
