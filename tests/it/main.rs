//! Integration tests: the real `warden` binary, spoken to over its pipes.

mod harness;

mod chaos;
mod protocol;
mod shutdown;
mod tools;
