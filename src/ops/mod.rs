//! Operating a running instance: health, recovery, control, HTTP, logging.

pub mod control;
pub mod health;
pub mod http;
pub mod logging;
pub mod recovery;
