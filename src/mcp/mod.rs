//! MCP for clients: the rmcp handler and the stdio transport.

pub mod server;
pub mod stdio;
pub mod wire;
