//! The supervision tree.

pub mod root;
pub mod tool;
pub mod tools;
