//! The command line's subcommands besides `serve`.

pub mod call;
pub mod logs;
pub mod operator;
