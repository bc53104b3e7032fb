//! The supervision tree: the root, the tools supervisor, the tool actors and
//! their workers, and the stdio session's actor.

pub mod reload;
pub mod root;
pub mod tool;
pub mod tools;
pub mod transport;
