//! The call path and its rules.

pub mod breaker;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod runtime;
