//! warden: a supervised MCP server runtime. Tools are actors in a ractor
//! supervision tree, defined as data in `actors/*.toml`. See ARCHITECTURE.md.

pub mod backends;
pub mod cli;
pub mod config;
pub mod core;
pub mod exec;
pub mod mcp;
pub mod ops;
pub mod supervise;
