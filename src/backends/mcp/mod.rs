//! MCP servers as supervised tools: the gateway (`kind = "mcp"`).
//!
//! A `server:<name>` actor ([`server`]) launches one downstream MCP server
//! over stdio and speaks to it as an rmcp client ([`pipe`]); its tools and
//! prompts are re-exported as `<prefix>_<name>` ([`catalog`]); its calls go
//! from the caller's task straight to the live [`link::Link`], the tool's
//! backend, after the same admission and gate as any tool.

pub mod catalog;
pub mod link;
pub mod pipe;
pub mod server;

pub use link::Link;
pub use server::{ServerActor, ServerArgs};
