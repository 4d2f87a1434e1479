//! The procedural scene world: a deterministic generator `seed -> (RGB image, caption)` used to
//! train and evaluate the demo LLaVA target/draft pair and behind the web app's "random scene"
//! button.
//!
//! A scene holds 1-4 objects on a 3x3 grid of cells (one object per cell, so objects never
//! overlap). Objects that share shape, colour and size form one *group* ("two small blue
//! triangles"); a scene has at most three groups. Each object gets a shape, colour and size class,
//! then jitter in position, size, rotation and colour; the background has a pattern (plain,
//! striped, shaded, noisy) and a colour, and object colours hard to see on it are not used.
//! Drawing is anti-aliased by 4x4 supersampling, followed by a mild blur and pixel noise.
//!
//! The caption is canonical: one fixed word order per scene (the grammar is documented in
//! `caption.rs`) so greedy decoding has a well-defined target, and every attribute can be parsed
//! back ([`parse_caption`]). [`attribute_scores`] compares a predicted caption with a scene
//! attribute by attribute; `spec-llava eval` reports those numbers.
//!
//! Determinism: the random stream is `StdRng::seed_from_u64(seed)` (ChaCha12, the same on every
//! platform), and drawing uses only IEEE-exact float arithmetic (no `sin`/`cos`/`powf` from the
//! platform's libm), so native and wasm32 builds produce the same bytes for the same seed.

mod caption;
mod draw;
mod score;

pub use caption::{caption_tokens, parse_caption, render_caption, vocabulary};
pub use score::{attribute_scores, caption_scores, score_facts, AttributeScores, Tally};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Width and height of every scene image, in pixels.
pub const IMAGE_SIZE: u32 = 64;
/// The grid is `GRID x GRID` cells; each object sits in its own cell.
pub const GRID: u8 = 3;
/// Most objects in one scene.
pub const MAX_OBJECTS: usize = 4;
/// Most groups (distinct shape/colour/size triples) in one scene; keeps captions within 40 tokens.
pub const MAX_GROUPS: usize = 3;

/// Object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Heart,
    Ring,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 8] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Heart,
        Shape::Ring,
        Shape::Diamond,
        Shape::Cross,
    ];

    /// The singular caption word ("circle").
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Heart => "heart",
            Shape::Ring => "ring",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    /// The plural caption word ("circles", "crosses").
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Heart => "hearts",
            Shape::Ring => "rings",
            Shape::Diamond => "diamonds",
            Shape::Cross => "crosses",
        }
    }

    /// Largest rotation (radians, either way) that keeps the shape recognisable: more would turn
    /// a square into a diamond; circles and rings do not rotate visibly.
    fn max_rotation(self) -> f32 {
        match self {
            Shape::Circle | Shape::Ring => 0.0,
            Shape::Triangle | Shape::Star => 0.35,
            Shape::Diamond => 0.2,
            Shape::Square | Shape::Heart | Shape::Cross => 0.26,
        }
    }
}

/// Object colours. All of them are saturated or extreme enough to stay distinct from each other
/// after blur and noise; [`BackgroundColour::allows`] removes the ones too close to a background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
    Pink,
}

impl Colour {
    pub const ALL: [Colour; 9] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
        Colour::Pink,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
            Colour::Pink => "pink",
        }
    }

    /// Nominal sRGB value before per-object jitter.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 35],
            Colour::Green => [40, 175, 60],
            Colour::Blue => [40, 80, 235],
            Colour::Yellow => [250, 220, 40],
            Colour::Purple => [135, 50, 190],
            Colour::Orange => [250, 140, 20],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
            Colour::Pink => [250, 125, 190],
        }
    }
}

/// Size classes. Radii (half the extent, in pixels) are far enough apart that jitter never makes
/// two classes meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::Small, Size::Medium, Size::Large];

    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }

    /// Radius range in pixels (inclusive low, exclusive high).
    fn radius_range(self) -> (f32, f32) {
        match self {
            Size::Small => (5.0, 5.6),
            Size::Medium => (6.8, 7.4),
            Size::Large => (8.6, 9.2),
        }
    }
}

/// One cell of the 3x3 grid; row 0 is the top, column 0 the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    pub row: u8,
    pub col: u8,
}

impl Cell {
    /// All cells in reading order (the order [`Cell::index`] follows).
    pub const ALL: [Cell; 9] = [
        Cell { row: 0, col: 0 },
        Cell { row: 0, col: 1 },
        Cell { row: 0, col: 2 },
        Cell { row: 1, col: 0 },
        Cell { row: 1, col: 1 },
        Cell { row: 1, col: 2 },
        Cell { row: 2, col: 0 },
        Cell { row: 2, col: 1 },
        Cell { row: 2, col: 2 },
    ];

    /// Reading-order index 0..9.
    pub fn index(self) -> usize {
        usize::from(self.row) * usize::from(GRID) + usize::from(self.col)
    }

    /// The caption words naming the cell: "top left", "top", ..., "center", ..., "bottom right".
    pub fn words(self) -> &'static [&'static str] {
        const NAMES: [&[&str]; 9] = [
            &["top", "left"],
            &["top"],
            &["top", "right"],
            &["left"],
            &["center"],
            &["right"],
            &["bottom", "left"],
            &["bottom"],
            &["bottom", "right"],
        ];
        NAMES[self.index() % NAMES.len()]
    }

    /// The cell `offset` (rows, cols) away, if it is still on the grid.
    pub fn offset(self, (dr, dc): (i8, i8)) -> Option<Cell> {
        let row = self.row.checked_add_signed(dr)?;
        let col = self.col.checked_add_signed(dc)?;
        (row < GRID && col < GRID).then_some(Cell { row, col })
    }

    /// Centre of the cell in pixel coordinates.
    fn centre(self) -> [f32; 2] {
        let cell = IMAGE_SIZE as f32 / f32::from(GRID);
        [
            (f32::from(self.col) + 0.5) * cell,
            (f32::from(self.row) + 0.5) * cell,
        ]
    }
}

/// How a group sits relative to the group just before it in the caption ("below it"). Used
/// instead of an absolute position when both groups are single objects in edge-adjacent cells, so
/// the cell stays exactly recoverable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::Above,
        Relation::Below,
        Relation::LeftOf,
        Relation::RightOf,
    ];

    /// Caption words, e.g. `["left", "of", "it"]`.
    pub fn words(self) -> &'static [&'static str] {
        match self {
            Relation::Above => &["above", "it"],
            Relation::Below => &["below", "it"],
            Relation::LeftOf => &["left", "of", "it"],
            Relation::RightOf => &["right", "of", "it"],
        }
    }

    /// (rows, cols) from the anchor's cell to this group's cell.
    pub fn offset(self) -> (i8, i8) {
        match self {
            Relation::Above => (-1, 0),
            Relation::Below => (1, 0),
            Relation::LeftOf => (0, -1),
            Relation::RightOf => (0, 1),
        }
    }

    /// The relation that takes `anchor` to `cell`, if they share an edge.
    pub fn between(anchor: Cell, cell: Cell) -> Option<Relation> {
        Relation::ALL
            .into_iter()
            .find(|r| anchor.offset(r.offset()) == Some(cell))
    }
}

/// Background patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    Plain,
    Striped,
    /// A linear gradient.
    Shaded,
    Noisy,
}

impl Pattern {
    pub const ALL: [Pattern; 4] = [
        Pattern::Plain,
        Pattern::Striped,
        Pattern::Shaded,
        Pattern::Noisy,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Pattern::Plain => "plain",
            Pattern::Striped => "striped",
            Pattern::Shaded => "shaded",
            Pattern::Noisy => "noisy",
        }
    }
}

/// Background colours: a vocabulary of their own, so a background never reads like an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackgroundColour {
    Gray,
    Beige,
    Teal,
    Navy,
}

impl BackgroundColour {
    pub const ALL: [BackgroundColour; 4] = [
        BackgroundColour::Gray,
        BackgroundColour::Beige,
        BackgroundColour::Teal,
        BackgroundColour::Navy,
    ];

    pub fn word(self) -> &'static str {
        match self {
            BackgroundColour::Gray => "gray",
            BackgroundColour::Beige => "beige",
            BackgroundColour::Teal => "teal",
            BackgroundColour::Navy => "navy",
        }
    }

    /// Nominal sRGB value before jitter and pattern.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            BackgroundColour::Gray => [128, 128, 128],
            BackgroundColour::Beige => [222, 204, 165],
            BackgroundColour::Teal => [16, 132, 128],
            BackgroundColour::Navy => [28, 36, 92],
        }
    }

    /// Whether objects of `colour` stay clearly visible on this background (and its pattern's
    /// lighter and darker shades).
    pub fn allows(self, colour: Colour) -> bool {
        let clashes: &[Colour] = match self {
            BackgroundColour::Gray => &[],
            BackgroundColour::Beige => &[Colour::White, Colour::Yellow],
            BackgroundColour::Teal => &[Colour::Green, Colour::Blue],
            BackgroundColour::Navy => &[Colour::Black, Colour::Blue, Colour::Purple],
        };
        !clashes.contains(&colour)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Background {
    pub pattern: Pattern,
    pub colour: BackgroundColour,
}

/// Identical objects (same shape, colour and size), as one caption phrase describes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// One cell per object, in reading order; the count is `cells.len()`.
    pub cells: Vec<Cell>,
    /// Set when the caption places this (single-object) group relative to the previous group
    /// instead of naming its cell.
    pub relation: Option<Relation>,
}

impl Group {
    pub fn count(&self) -> usize {
        self.cells.len()
    }
}

/// Everything a caption says about a scene; [`parse_caption`] recovers it from the caption.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SceneFacts {
    /// Groups in caption order: larger size classes first, then by the first cell in reading
    /// order.
    pub groups: Vec<Group>,
    pub background: Background,
}

/// One drawn object, with the jittered geometry actually used.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSpec {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub cell: Cell,
    /// Centre in pixels (x, y), y down.
    pub centre: [f32; 2],
    /// Half the extent in pixels; the shape fits in the circle of this radius.
    pub radius: f32,
    /// Rotation in radians, clockwise on screen.
    pub rotation: f32,
    /// Jittered colour actually painted.
    pub rgb: [u8; 3],
}

/// One generated scene.
#[derive(Clone, Debug)]
pub struct Scene {
    pub seed: u64,
    pub image: image::RgbImage,
    pub caption: String,
    pub facts: SceneFacts,
    /// Objects in caption order.
    pub objects: Vec<ObjectSpec>,
}

/// Generates the scene for `seed`; the same seed gives the same image bytes and caption on every
/// platform.
pub fn generate(seed: u64) -> Scene {
    let mut rng = StdRng::seed_from_u64(seed);
    let background = Background {
        pattern: pick(&mut rng, &Pattern::ALL),
        colour: pick(&mut rng, &BackgroundColour::ALL),
    };
    let facts = SceneFacts {
        groups: choose_groups(&mut rng, background.colour),
        background,
    };
    let objects = place_objects(&mut rng, &facts);
    let image = draw::render(&mut rng, background, &objects);
    let caption = render_caption(&facts);
    Scene {
        seed,
        image,
        caption,
        facts,
        objects,
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Index drawn with probability proportional to `weights[i]`.
fn weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (i, &w) in weights.iter().enumerate() {
        if roll < w {
            return i;
        }
        roll -= w;
    }
    0
}

/// Object counts per group for a scene: how many objects, then how they split into groups.
fn group_sizes(rng: &mut StdRng) -> &'static [usize] {
    // (split, weight): more groups are likelier, since they make richer captions.
    const SPLITS: [(&[usize], u32); 10] = [
        (&[1], 20),
        (&[2], 8),
        (&[1, 1], 22),
        (&[3], 4),
        (&[2, 1], 10),
        (&[1, 1, 1], 16),
        (&[4], 3),
        (&[3, 1], 4),
        (&[2, 2], 5),
        (&[2, 1, 1], 8),
    ];
    let weights: Vec<u32> = SPLITS.iter().map(|s| s.1).collect();
    SPLITS[weighted(rng, &weights)].0
}

/// Draws the groups (distinct shape/colour/size triples, colours allowed on the background), gives
/// each object its own cell, and puts groups and cells into canonical caption order.
fn choose_groups(rng: &mut StdRng, background: BackgroundColour) -> Vec<Group> {
    let palette: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|&c| background.allows(c))
        .collect();
    let mut cells = Cell::ALL;
    cells.shuffle(rng);
    let mut next_cell = cells.into_iter();
    let mut groups: Vec<Group> = Vec::new();
    for &count in group_sizes(rng) {
        let (shape, colour, size) = distinct_traits(rng, &palette, &groups);
        let mut group_cells: Vec<Cell> = next_cell.by_ref().take(count).collect();
        group_cells.sort();
        groups.push(Group {
            shape,
            colour,
            size,
            cells: group_cells,
            relation: None,
        });
    }
    groups.sort_by_key(|g| {
        (
            std::cmp::Reverse(g.size),
            g.cells.first().map(|c| c.index()),
        )
    });
    for i in 1..groups.len() {
        let (before, after) = groups.split_at_mut(i);
        let (prev, group) = (&before[i - 1], &mut after[0]);
        if let ([anchor], [cell]) = (prev.cells.as_slice(), group.cells.as_slice()) {
            group.relation = Relation::between(*anchor, *cell);
        }
    }
    groups
}

/// A shape/colour/size triple that no earlier group uses (else the two groups would be one).
fn distinct_traits(rng: &mut StdRng, palette: &[Colour], taken: &[Group]) -> (Shape, Colour, Size) {
    let is_free = |s: Shape, c: Colour, z: Size| {
        !taken
            .iter()
            .any(|g| (g.shape, g.colour, g.size) == (s, c, z))
    };
    for _ in 0..32 {
        let traits = (
            pick(rng, &Shape::ALL),
            pick(rng, palette),
            pick(rng, &Size::ALL),
        );
        if is_free(traits.0, traits.1, traits.2) {
            return traits;
        }
    }
    // With >= 6 colours x 8 shapes x 3 sizes and <= 3 groups, this is never reached in practice;
    // it keeps the function total without a panic.
    for s in Shape::ALL {
        for &c in palette {
            for z in Size::ALL {
                if is_free(s, c, z) {
                    return (s, c, z);
                }
            }
        }
    }
    (Shape::Circle, Colour::Red, Size::Small)
}

/// Jittered geometry for every object, in caption order. An object stays inside its cell (with a
/// margin), so objects never overlap and the cell is unambiguous.
fn place_objects(rng: &mut StdRng, facts: &SceneFacts) -> Vec<ObjectSpec> {
    let half_cell = IMAGE_SIZE as f32 / f32::from(GRID) / 2.0;
    let mut objects = Vec::new();
    for group in &facts.groups {
        for &cell in &group.cells {
            let (lo, hi) = group.size.radius_range();
            let radius = rng.random_range(lo..hi);
            // Keep 60% of the free room for jitter so the object's centre stays well inside.
            let room = ((half_cell - radius - 0.8) * 0.6).max(0.0);
            let [cx, cy] = cell.centre();
            let centre = [
                cx + rng.random_range(-room..=room),
                cy + rng.random_range(-room..=room),
            ];
            let max_rot = group.shape.max_rotation();
            let rotation = rng.random_range(-max_rot..=max_rot);
            let rgb = group.colour.rgb().map(|v| jitter_channel(rng, v, 12));
            objects.push(ObjectSpec {
                shape: group.shape,
                colour: group.colour,
                size: group.size,
                cell,
                centre,
                radius,
                rotation,
                rgb,
            });
        }
    }
    objects
}

fn jitter_channel(rng: &mut StdRng, value: u8, amount: i16) -> u8 {
    let shifted = i16::from(value) + rng.random_range(-amount..=amount);
    shifted.clamp(0, 255) as u8
}

/// Encodes a scene image as PNG bytes (for the web app, which has no file system).
pub fn png_bytes(image: &image::RgbImage) -> crate::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| crate::Error::invalid(format!("encoding scene PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Writes scenes `seed .. seed + count` to `dir` as `scene_{seed}.png`, plus `captions.jsonl`
/// with one `{"file", "seed", "caption"}` line per scene.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_scenes(dir: &std::path::Path, count: usize, seed: u64) -> crate::Result<()> {
    use crate::Error;
    use std::io::Write;

    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir.display(), e))?;
    let jsonl_path = dir.join("captions.jsonl");
    let file =
        std::fs::File::create(&jsonl_path).map_err(|e| Error::file(jsonl_path.display(), e))?;
    let mut jsonl = std::io::BufWriter::new(file);
    for i in 0..count as u64 {
        let scene_seed = seed.wrapping_add(i);
        let scene = generate(scene_seed);
        let name = format!("scene_{scene_seed}.png");
        let path = dir.join(&name);
        std::fs::write(&path, png_bytes(&scene.image)?)
            .map_err(|e| Error::file(path.display(), e))?;
        let line =
            serde_json::json!({ "file": name, "seed": scene_seed, "caption": scene.caption });
        writeln!(jsonl, "{line}").map_err(|e| Error::file(jsonl_path.display(), e))?;
    }
    jsonl
        .flush()
        .map_err(|e| Error::file(jsonl_path.display(), e))
}
