//! The supervision tree: the root, the tools supervisor, the tool actors and
//! their workers, the instances of servers per session, and the stdio
//! session's actor.

pub mod instances;
pub mod reload;
pub mod root;
pub mod tool;
pub mod tools;
pub mod transport;
