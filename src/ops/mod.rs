//! Operating a running instance: the breaker clock, health and recovery,
//! the control socket, the HTTP listener, logging.

pub mod breaker;
pub mod control;
pub mod health;
pub mod http;
pub mod logging;
pub mod recovery;
