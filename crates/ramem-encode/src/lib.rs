//! placeholder
pub mod clip;
pub mod text;
