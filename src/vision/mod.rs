//! Vision stage: image preprocessing and the vision tower.
pub mod preprocess;
pub mod tower;
