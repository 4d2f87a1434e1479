//! Vision stage: image preprocessing and the vision tower.
pub mod preprocess;
mod resize;
pub mod tower;
