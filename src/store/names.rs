//! What a Maildir file name tells: unique name, flags, delivery time, size.
//!
//! A name is `unique[:2,FLAGS]` (cr.yp.to/proto/maildir.html); Dovecot puts `,S=<size>` and
//! `,W=<size with CRLF>` in the unique part.

use std::borrow::Cow;
use std::fmt::Write;

use sha2::{Digest, Sha256};

/// The unique part: the name without `:2,FLAGS` (or any other `:` info).
pub fn unique(name: &str) -> &str {
    name.split_once(':').map_or(name, |(unique, _)| unique)
}

/// The flags of a `:2,` info, or "" when there is none.
fn flags(name: &str) -> &str {
    name.split_once(":2,").map_or("", |(_, flags)| flags)
}

/// The UIDL of a message: its unique name when that is a valid RFC 1939 unique-id
/// (1 to 70 characters 0x21..=0x7E), else a stable id derived from it.
pub fn uidl(unique: &str) -> Cow<'_, str> {
    let valid =
        (1..=70).contains(&unique.len()) && unique.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if valid {
        return Cow::Borrowed(unique);
    }
    let digest = Sha256::digest(unique.as_bytes());
    let mut id = String::with_capacity(42);
    id.push_str("pop3d-");
    for byte in &digest[..18] {
        let _ = write!(id, "{byte:02x}");
    }
    Cow::Owned(id)
}

/// The delivery time a unique name starts with, in seconds; names without one sort after
/// all others.
pub fn delivery_time(unique: &str) -> u64 {
    let digits = unique.bytes().take_while(u8::is_ascii_digit).count();
    unique[..digits].parse().unwrap_or(u64::MAX)
}

/// The `,W=` size Dovecot writes: the message's size with CRLF line ends.
pub fn wire_size(unique: &str) -> Option<u64> {
    unique
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("W="))
        .and_then(|n| n.parse().ok())
}

/// The name a message gets in cur/ once seen, or None if it already has the S flag there.
pub fn seen_name(name: &str, in_new: bool) -> Option<String> {
    if is_seen(name, in_new) {
        return None;
    }
    let current = flags(name);
    // Maildir flags are kept in ASCII order, each once.
    let mut all: Vec<char> = current.chars().chain(['S']).collect();
    all.sort_unstable();
    all.dedup();
    let flags: String = all.into_iter().collect();
    Some(format!("{}:2,{flags}", unique(name)))
}

/// True for a message in cur/ that carries the Seen flag: nothing to rename.
pub fn is_seen(name: &str, in_new: bool) -> bool {
    !in_new && flags(name).contains('S')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_part_and_flags() {
        assert_eq!(
            unique("1700000000.M1P2.host,S=10,W=12:2,RS"),
            "1700000000.M1P2.host,S=10,W=12"
        );
        assert_eq!(unique("1700000000.M1P2.host"), "1700000000.M1P2.host");
        assert_eq!(flags("x:2,FS"), "FS");
        assert_eq!(flags("x"), "");
    }

    #[test]
    fn uidl_is_the_unique_name_when_valid() {
        assert_eq!(
            uidl("1700000000.M1P2.host,S=10"),
            "1700000000.M1P2.host,S=10"
        );
        let long = "1".repeat(71);
        for bad in [long.as_str(), "with space", "tab\there", "ümlaut", ""] {
            let id = uidl(bad);
            assert_eq!(id.len(), 42, "{bad:?}");
            assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            assert_eq!(id, uidl(bad), "stable");
        }
        assert_ne!(uidl("a b"), uidl("a  b"));
    }

    #[test]
    fn delivery_order_is_time_then_name() {
        let mut names = vec![
            "1700000010.a",
            "999.z",
            "x-no-time",
            "1700000010.B",
            "1700000002.c",
        ];
        names.sort_by_key(|n| (delivery_time(n), *n));
        assert_eq!(
            names,
            [
                "999.z",
                "1700000002.c",
                "1700000010.B",
                "1700000010.a",
                "x-no-time"
            ]
        );
    }

    #[test]
    fn wire_size_from_dovecot_names() {
        assert_eq!(wire_size("1700000000.M1P2.host,S=1000,W=1020"), Some(1020));
        assert_eq!(wire_size("1700000000.M1P2.host,S=1000"), None);
        assert_eq!(wire_size("1700000000.M1P2.host,W=x"), None);
        assert_eq!(wire_size("W=5"), None);
    }

    #[test]
    fn seen_names() {
        assert_eq!(seen_name("123.a", true).as_deref(), Some("123.a:2,S"));
        assert_eq!(seen_name("123.a:2,", false).as_deref(), Some("123.a:2,S"));
        assert_eq!(
            seen_name("123.a:2,RF", false).as_deref(),
            Some("123.a:2,FRS")
        );
        assert_eq!(seen_name("123.a:2,ST", false), None);
        assert_eq!(seen_name("123.a:2,S", true).as_deref(), Some("123.a:2,S"));
    }
}
