//! Status lines, written straight into the connection's output buffer.

use std::fmt;
use std::io::Write;

/// RFC 2449 §8 / RFC 3206 response codes, so clients can tell why a command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The mailbox is locked by another session (RFC 2449 §8.1.1).
    InUse,
    /// Too soon after the last login (RFC 2449 §8.1.2).
    LoginDelay,
    /// Bad credentials, not a server fault (RFC 3206 §4).
    Auth,
    /// A server fault that may go away (RFC 3206 §5).
    SysTemp,
    /// A server fault that needs an administrator (RFC 3206 §5).
    SysPerm,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Code::InUse => "[IN-USE]",
            Code::LoginDelay => "[LOGIN-DELAY]",
            Code::Auth => "[AUTH]",
            Code::SysTemp => "[SYS/TEMP]",
            Code::SysPerm => "[SYS/PERM]",
        })
    }
}

/// Appends `+OK text\r\n`.
pub fn ok(out: &mut Vec<u8>, text: impl fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "+OK {text}\r\n");
}

/// Appends a bare `+OK\r\n`, for replies with nothing to say (NOOP).
pub fn ok_bare(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Appends `-ERR [CODE] text\r\n`.
pub fn err(out: &mut Vec<u8>, code: Option<Code>, text: impl fmt::Display) {
    let _ = match code {
        Some(code) => write!(out, "-ERR {code} {text}\r\n"),
        None => write!(out, "-ERR {text}\r\n"),
    };
}

/// Appends one line of a multi-line reply.
pub fn line(out: &mut Vec<u8>, text: impl fmt::Display) {
    let _ = write!(out, "{text}\r\n");
}

/// Ends a multi-line reply whose lines never start with '.', so need no stuffing.
pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_status_lines() {
        let mut out = Vec::new();
        ok(&mut out, "2 320");
        ok_bare(&mut out);
        err(&mut out, Some(Code::InUse), "Mailbox is locked");
        err(&mut out, None, "No such message");
        line(&mut out, "1 120");
        end(&mut out);
        assert_eq!(
            out,
            b"+OK 2 320\r\n+OK\r\n-ERR [IN-USE] Mailbox is locked\r\n-ERR No such message\r\n1 120\r\n.\r\n"
        );
    }
}
