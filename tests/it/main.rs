//! Integration tests: the real `warden` binary, spoken to over its pipes.

mod harness;

mod auth;
mod breaker;
mod bridge;
mod chaos;
mod clients;
mod conformance;
mod contain;
mod errors;
mod everything;
mod gateway;
mod hostile;
mod http;
mod layers;
mod logs;
mod mcp_http;
mod operator;
mod protocol;
mod readme;
mod recovery;
mod reload;
mod remote;
mod shutdown;
mod spawn;
mod tools;
