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

/// Appends `N SIZE\r\n`, a line of LIST. Digits are written by hand: a big mailbox's
/// listing is 100,000 of these, and `fmt` machinery would be most of its cost.
pub fn list_line(out: &mut Vec<u8>, n: usize, size: u64) {
    push_decimal(out, n as u64);
    out.push(b' ');
    push_decimal(out, size);
    out.extend_from_slice(b"\r\n");
}

/// Appends `N UID\r\n`, a line of UIDL.
pub fn uidl_line(out: &mut Vec<u8>, n: usize, uid: &str) {
    push_decimal(out, n as u64);
    out.push(b' ');
    out.extend_from_slice(uid.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
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

    #[test]
    fn listing_lines_match_formatted_ones() {
        for (n, size) in [
            (1, 0),
            (9, 10),
            (10, 99),
            (12345, u64::MAX),
            (usize::MAX, 7),
        ] {
            let mut out = Vec::new();
            list_line(&mut out, n, size);
            uidl_line(&mut out, n, "1700000000.M1P2.host");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{n} {size}\r\n{n} 1700000000.M1P2.host\r\n")
            );
        }
    }
}
