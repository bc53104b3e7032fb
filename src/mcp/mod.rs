//! MCP for clients: the one place that knows the wire. The rmcp server
//! handler of a session (`server`), the stdio transport (`stdio`), the
//! newline-delimited framing both directions share (`wire`), and the
//! one-shot client `warden call` uses (`client`), and Streamable HTTP at
//! `/mcp` (`http`); the bridge that lets a 2026-07-28 client answer what a
//! server behind its call asks (`bridge`).
//!
//! **Architecture Invariant:** rmcp's types are used here and in
//! `backends::mcp`, nowhere else; in `warden serve` on stdio, `stdio` and
//! `server` are the only code that writes stdout.

pub mod auth;
pub mod bridge;
pub mod client;
pub mod fast;
pub mod http;
pub mod server;
pub mod stdio;
pub mod wire;
