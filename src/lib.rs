//! pop3d: a POP3 server (RFC 1939, RFC 2449) over per-user Maildirs, with delete and keep modes.
//!
//! The protocol core (`protocol`, `session`) is sans-IO: bytes in, responses and effects out.
//! `store` and `auth` do the file work, and `server` is the thin async loop around them;
//! only `rt` names the async runtime.

pub mod auth;
pub mod check;
pub mod config;
pub mod demo;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
