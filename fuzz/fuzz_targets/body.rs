//! Arbitrary message bytes through `BodyEncoder`, in arbitrary chunkings, against the spec.
//!
//! RETR: the output is the same whatever the chunking; it ends with the one ".\r\n"
//! terminator line; every line ends in CRLF; and undoing the byte-stuffing gives back the
//! message with CRLF line ends (a bare LF gets its CR, an unterminated last line its line
//! end). `WireSize`, fed in other pieces, counts exactly those octets. TOP n: the header, its
//! blank line and n body lines of that, cut at a line end, and `is_done` once it has them.
//!
//! Input: byte 0 picks RETR or a TOP line count, byte 1 seeds the chunk sizes; the rest is
//! the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3d::protocol::body::{BodyEncoder, WireSize};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let [top, seed, message @ ..] = data else {
        return;
    };
    let mut rng = Rng(u32::from(*seed) << 16 | u32::from(*top) << 8 | 0x5a);

    let whole = encode(message, None, &mut Chunks::Whole);
    let chunked = encode(message, None, &mut Chunks::Random(&mut rng));
    assert_eq!(chunked, whole, "the chunking changed the output");
    assert_eq!(encode(message, None, &mut Chunks::Bytes), whole);

    let body = whole
        .strip_suffix(b".\r\n")
        .expect("ends with the terminator");
    let lines = split_lines(body);
    for line in &lines {
        assert!(line.ends_with(b"\r\n"), "a line without CRLF: {line:?}");
        assert_ne!(*line, b".\r\n", "an unstuffed terminator inside the body");
    }
    let unstuffed: Vec<u8> = lines
        .iter()
        .flat_map(|line| line.strip_prefix(b".").unwrap_or(line).iter().copied())
        .collect();
    assert_eq!(
        unstuffed,
        with_crlf(message),
        "unstuffed body is not the message"
    );

    let mut size = WireSize::default();
    let mut rest = message;
    while !rest.is_empty() {
        let n = rng.next() as usize % 70;
        let n = n.min(rest.len());
        size.push(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(size.total(), unstuffed.len() as u64, "WireSize disagrees");

    // TOP: byte 0 is RETR (255), 0..=5 body lines, or "everything" (u64::MAX).
    let top_lines = match top {
        255 => return,
        254 => u64::MAX,
        n => u64::from(n % 6),
    };
    let blank = lines.iter().position(|line| *line == b"\r\n");
    let header = blank.map_or(lines.len(), |blank| blank + 1);
    let wanted = header.saturating_add(usize::try_from(top_lines).unwrap_or(usize::MAX));
    let mut expected: Vec<u8> = lines
        .iter()
        .take(wanted)
        .flat_map(|l| l.iter().copied())
        .collect();
    expected.extend_from_slice(b".\r\n");
    for chunks in [
        &mut Chunks::Whole,
        &mut Chunks::Random(&mut rng),
        &mut Chunks::Bytes,
    ] {
        assert_eq!(
            encode(message, Some(top_lines), chunks),
            expected,
            "TOP {top_lines}"
        );
    }
    // Done exactly when the lines asked for are out, and further input is ignored.
    let mut encoder = BodyEncoder::new(Some(top_lines));
    let mut out = Vec::new();
    encoder.push(message, &mut out);
    // Lines the message ends with LF: the encoder counts only those.
    let terminated = message.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        encoder.is_done(),
        blank.is_some() && terminated >= wanted,
        "is_done after TOP {top_lines}"
    );
    let before = out.len();
    if encoder.is_done() {
        encoder.push(b"more\n.\n", &mut out);
        assert_eq!(out.len(), before, "output after TOP was done");
    }
}

enum Chunks<'a> {
    Whole,
    Bytes,
    Random(&'a mut Rng),
}

fn encode(message: &[u8], top: Option<u64>, chunks: &mut Chunks<'_>) -> Vec<u8> {
    let mut encoder = BodyEncoder::new(top);
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let n = match chunks {
            Chunks::Whole => rest.len(),
            Chunks::Bytes => 1,
            // Some empty pushes too: they must change nothing.
            Chunks::Random(rng) => rng.next() as usize % 40,
        };
        let n = n.min(rest.len());
        encoder.push(&rest[..n], &mut out);
        rest = &rest[n..];
    }
    encoder.finish(&mut out);
    out
}

/// The lines of an encoded body, each with its line end.
fn split_lines(body: &[u8]) -> Vec<&[u8]> {
    body.split_inclusive(|&b| b == b'\n').collect()
}

/// The message as RETR must send it before stuffing: CRLF line ends, the last line ended.
fn with_crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    match message.last() {
        None | Some(b'\n') => {}
        Some(b'\r') => out.push(b'\n'),
        Some(_) => out.extend_from_slice(b"\r\n"),
    }
    out
}

/// xorshift32, deterministic for one input.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}
