//! What runs a tool's call: builtins, command-line programs, MCP servers.

pub mod builtin;
pub mod command;
pub mod mcp;
