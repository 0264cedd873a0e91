//! Splitting the client's byte stream into command lines, in a fixed-size buffer.
//!
//! RFC 2449 §4 caps a command line at 255 octets including CRLF. A longer line is reported
//! once and then skipped up to its line end, so a client can never make us buffer more than
//! the current limit plus one read, however much it sends.

/// Longest command line we accept, CRLF included (RFC 2449 §4).
pub const MAX_LINE: usize = 255;

/// Longest answer to a SASL challenge. RFC 5034 sets no 255-octet limit there, and a PLAIN
/// response with RFC 4616's longest names and password is about 1 KB of base64.
pub const MAX_SASL_LINE: usize = 4096;

/// Room for a few pipelined commands per read; a multiple of `MAX_LINE`.
const CAPACITY: usize = 1024;

/// One item taken from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A command line without its line end (CRLF, or a bare LF as lenient clients send).
    Command(&'a [u8]),
    /// A line longer than `MAX_LINE`; its bytes are being discarded.
    TooLong,
}

/// A bounded buffer between socket reads and the command parser.
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The longest line accepted now, CRLF included.
    limit: usize,
    /// True while skipping the rest of an overlong line.
    discarding: bool,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    pub fn new() -> Self {
        LineReader {
            buf: vec![0; CAPACITY],
            start: 0,
            end: 0,
            limit: MAX_LINE,
            discarding: false,
        }
    }

    /// Sets the longest line accepted from now on (`MAX_LINE` for commands, `MAX_SASL_LINE`
    /// for SASL answers); the buffer grows to hold it, and shrinks back after.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        let wanted = limit.next_power_of_two().max(CAPACITY);
        if self.buf.len() != wanted && self.end <= wanted {
            self.buf.resize(wanted, 0);
            self.buf.shrink_to(wanted);
        }
    }

    /// Free space to read into; call `filled` with the number of bytes read.
    pub fn unfilled(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Whether a complete line (or an overlong one) is waiting, so the caller knows it need
    /// not flush and read before calling `next_line`.
    pub fn has_line(&self) -> bool {
        let pending = &self.buf[self.start..self.end];
        memchr::memchr(b'\n', pending).is_some()
            || (!self.discarding && pending.len() >= self.limit)
    }

    /// Drops everything buffered: after STLS, bytes sent in plaintext must not be run inside
    /// the TLS session (RFC 2595 §2.2, the STARTTLS injection attack).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = false;
    }

    /// Takes the next line, or None when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            match memchr::memchr(b'\n', pending) {
                Some(lf) => {
                    let line_start = self.start;
                    self.start += lf + 1;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if lf + 1 > self.limit {
                        return Some(Line::TooLong);
                    }
                    let mut line = &self.buf[line_start..line_start + lf];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    return Some(Line::Command(line));
                }
                None if self.discarding => {
                    self.start = self.end;
                    return None;
                }
                None if pending.len() >= self.limit => {
                    self.start = self.end;
                    self.discarding = true;
                    return Some(Line::TooLong);
                }
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(reader: &mut LineReader, mut bytes: &[u8]) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let room = reader.unfilled();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            reader.filled(n);
            bytes = &bytes[n..];
            while let Some(line) = reader.next_line() {
                out.push(match line {
                    Line::Command(l) => Ok(l.to_vec()),
                    Line::TooLong => Err(()),
                });
            }
        }
        out
    }

    #[test]
    fn splits_pipelined_lines_with_crlf_or_lf() {
        let mut r = LineReader::new();
        let lines = feed(&mut r, b"USER a\r\nPASS b\nSTAT\r\n");
        assert_eq!(
            lines,
            vec![
                Ok(b"USER a".to_vec()),
                Ok(b"PASS b".to_vec()),
                Ok(b"STAT".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        let mut r = LineReader::new();
        assert!(feed(&mut r, b"RE").is_empty());
        assert!(!r.has_line());
        assert_eq!(feed(&mut r, b"TR 1\r\n"), vec![Ok(b"RETR 1".to_vec())]);
    }

    #[test]
    fn a_line_of_exactly_255_octets_is_accepted() {
        let mut r = LineReader::new();
        let mut line = vec![b'A'; MAX_LINE - 2];
        line.extend_from_slice(b"\r\n");
        assert_eq!(feed(&mut r, &line), vec![Ok(vec![b'A'; MAX_LINE - 2])]);
    }

    #[test]
    fn overlong_lines_are_reported_once_and_skipped() {
        let mut r = LineReader::new();
        let mut input = vec![b'A'; MAX_LINE - 1];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(feed(&mut r, &input), vec![Err(()), Ok(b"NOOP".to_vec())]);

        // Ten megabytes without a line end: one report, bounded buffer, then recovery.
        let mut r = LineReader::new();
        let mut input = vec![b'x'; 10 << 20];
        input.extend_from_slice(b"\r\nSTAT\r\n");
        assert_eq!(feed(&mut r, &input), vec![Err(()), Ok(b"STAT".to_vec())]);
        assert_eq!(r.buf.len(), CAPACITY);
    }

    #[test]
    fn a_raised_limit_takes_longer_lines_then_falls_back() {
        let mut r = LineReader::new();
        r.set_limit(MAX_SASL_LINE);
        let mut line = vec![b'Q'; 3000];
        line.extend_from_slice(b"\r\n");
        assert_eq!(feed(&mut r, &line), vec![Ok(vec![b'Q'; 3000])]);
        let mut too_long = vec![b'Q'; MAX_SASL_LINE];
        too_long.extend_from_slice(b"\r\n");
        assert_eq!(feed(&mut r, &too_long), vec![Err(())]);
        r.set_limit(MAX_LINE);
        assert_eq!(r.buf.len(), CAPACITY);
        assert_eq!(feed(&mut r, &line), vec![Err(())]);
    }

    #[test]
    fn clear_drops_what_was_pipelined() {
        let mut r = LineReader::new();
        let room = r.unfilled();
        room[..12].copy_from_slice(b"STLS\r\nCAPA\r\n");
        r.filled(12);
        assert_eq!(r.next_line(), Some(Line::Command(b"STLS")));
        r.clear();
        assert_eq!(r.next_line(), None);
    }
}
