//! Arbitrary client bytes through `LineReader` (in arbitrary read sizes) and `command::parse`.
//!
//! Checks, beside "no panic": the lines the reader yields are the ones a plain split of the
//! whole stream gives (so read boundaries never matter), an overlong line is reported once
//! and skipped, a parsed command prints and parses back to itself, and an error's text (the
//! `-ERR` reply) is one short line.
//!
//! Input: byte 0 chooses the line limit (bit 0: SASL's 4 KB, else 255) and seeds the read
//! sizes with byte 1; the rest is the stream. `parse` also gets the whole input as one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3d::protocol::command::{self, Command, ParseError};
use pop3d::protocol::lines::{Line, LineReader, MAX_LINE, MAX_SASL_LINE};

fuzz_target!(|data: &[u8]| run(data));

/// What the reader must yield: `Some(line)` for a command line, `None` for an overlong one.
type Item = Option<Vec<u8>>;

fn run(data: &[u8]) {
    // A whole input may hold LFs, which a line from the reader never does: no panic is all
    // that is asked then.
    if data.contains(&b'\n') {
        let _ = command::parse(data);
    } else {
        check_parse(data);
    }
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let limit = if flags & 1 == 1 {
        MAX_SASL_LINE
    } else {
        MAX_LINE
    };
    let got = read_in_pieces(stream, limit, u32::from(*seed) << 8 | u32::from(*flags) | 1);
    assert_eq!(got, expected_lines(stream, limit), "limit {limit}");
    for line in got.iter().flatten() {
        check_parse(line);
    }
}

/// The reference: split at LF; a line (LF included) over the limit is one `None`, as is an
/// unterminated tail already at the limit; otherwise drop one CR before the LF.
fn expected_lines(stream: &[u8], limit: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = stream;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..lf];
        items.push(if lf + 1 > limit {
            None
        } else {
            Some(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        });
        rest = &rest[lf + 1..];
    }
    if rest.len() >= limit {
        items.push(None);
    }
    items
}

/// Feeds the stream through a `LineReader` in reads of pseudo-random sizes (some filling all
/// the room there is), taking every line after each read as the server does.
fn read_in_pieces(mut stream: &[u8], limit: usize, mut state: u32) -> Vec<Item> {
    let mut reader = LineReader::new();
    reader.set_limit(limit);
    let mut items = Vec::new();
    let take = |reader: &mut LineReader, items: &mut Vec<Item>| loop {
        let waiting = reader.has_line();
        match reader.next_line() {
            Some(line) => {
                assert!(waiting, "next_line gave a line has_line did not announce");
                items.push(match line {
                    Line::Command(bytes) => {
                        assert!(bytes.len() < limit, "a line of {} octets", bytes.len());
                        assert!(!bytes.contains(&b'\n'));
                        Some(bytes.to_vec())
                    }
                    Line::TooLong => None,
                });
            }
            None => break,
        }
    };
    while !stream.is_empty() {
        // xorshift32: deterministic for one input.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let room = reader.unfilled();
        assert!(!room.is_empty(), "no room to read into");
        let want = match state % 4 {
            0 => room.len(),
            1 => 1,
            _ => 1 + (state >> 8) as usize % 300,
        };
        let n = want.min(room.len()).min(stream.len());
        room[..n].copy_from_slice(&stream[..n]);
        reader.filled(n);
        stream = &stream[n..];
        take(&mut reader, &mut items);
    }
    items
}

/// Parses a line as the reader yields it (no LF): a command prints and parses back to
/// itself, an error is a one-line reply of bounded length.
fn check_parse(line: &[u8]) {
    match command::parse(line) {
        Ok(cmd) => {
            let text = std::str::from_utf8(line).expect("a parsed line is UTF-8");
            assert!(!text.contains(['\0', '\r']));
            let printed = render(&cmd);
            assert_eq!(
                command::parse(printed.as_bytes()),
                Ok(cmd),
                "printed as {printed:?}"
            );
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty());
            assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
            // The echoed word is cut to 16 characters, so the reply stays short.
            assert!(text.len() <= 128, "{text:?}");
            if let ParseError::Unknown(word) | ParseError::BadNumber(word) = &e {
                assert!(word.chars().count() <= 16);
            }
        }
    }
}

/// A command as a client would write it.
fn render(cmd: &Command<'_>) -> String {
    match cmd {
        Command::User(name) => format!("USER {name}"),
        Command::Pass(password) => format!("PASS {password}"),
        Command::Apop { user, digest } => format!("APOP {user} {digest}"),
        Command::Quit => "QUIT".into(),
        Command::Stat => "STAT".into(),
        Command::List(None) => "LIST".into(),
        Command::List(Some(n)) => format!("LIST {n}"),
        Command::Retr(n) => format!("RETR {n}"),
        Command::Dele(n) => format!("DELE {n}"),
        Command::Noop => "NOOP".into(),
        Command::Rset => "RSET".into(),
        Command::Top { msg, lines } => format!("TOP {msg} {lines}"),
        Command::Uidl(None) => "UIDL".into(),
        Command::Uidl(Some(n)) => format!("UIDL {n}"),
        Command::Capa => "CAPA".into(),
        Command::Stls => "STLS".into(),
        Command::Auth(None) => "AUTH".into(),
        Command::Auth(Some((mechanism, None))) => format!("AUTH {mechanism}"),
        Command::Auth(Some((mechanism, Some(initial)))) => format!("AUTH {mechanism} {initial}"),
    }
}
