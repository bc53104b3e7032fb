//! The call path and its rules: a call's context and admission, the gate
//! that bounds a tool's concurrency, the tool registry, circuit breakers,
//! rate limits, restart budgets, memory levels, typed status, and the
//! runtime that holds them.
//!
//! **Architecture Invariant:** nothing here knows the protocol or the actors:
//! `core` imports neither rmcp nor ractor, nor `mcp`, `supervise` or `ops`.
//! What runs a call is a [`call::Backend`] that those layers register.

pub mod breaker;
pub mod call;
pub mod catalog;
pub mod error;
pub mod gate;
pub mod health;
pub mod levels;
pub mod metrics;
pub mod names;
pub mod ratelimit;
pub mod registry;
pub mod reload;
pub mod restart;
pub mod runtime;
pub mod session;
pub mod status;
pub mod text;
