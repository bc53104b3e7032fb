//! warden: a supervised MCP server runtime. Tools are actors in a ractor
//! supervision tree, defined as data in `actors/*.toml`. See ARCHITECTURE.md.

pub mod breaker;
pub mod builtin;
pub mod call;
pub mod config;
pub mod control;
pub mod error;
pub mod exec;
pub mod gateway;
pub mod guard;
pub mod health;
pub mod http;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod operator;
pub mod pipe;
pub mod ratelimit;
pub mod recovery;
pub mod root;
pub mod runtime;
pub mod stdio;
pub mod supervisor;
pub mod tool;
pub mod transport;
