//! The POP3 wire format: command lines in, status lines and message bodies out.

pub mod body;
pub mod command;
pub mod lines;
pub mod response;
