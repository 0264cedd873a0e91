//! Turning a stored message into the body of a RETR or TOP reply, chunk by chunk.
//!
//! Every line goes out with CRLF whatever the file holds (LF, CRLF, or a last line without a
//! line end), a line starting with '.' gets another '.' (RFC 1939 §3 byte-stuffing), and the
//! reply ends with ".\r\n" on a line of its own. Scanning is by `memchr`, so whole runs of
//! text are copied at once rather than byte by byte.

/// Streaming encoder for one message body.
#[derive(Debug)]
pub struct BodyEncoder {
    /// Bytes of the current line sent so far; 0 at a line start.
    line_len: u64,
    last_was_cr: bool,
    /// Tracked for TOP only: RETR sends every line alike.
    in_header: bool,
    /// Body lines still to send after the header (TOP); None means all (RETR).
    body_lines_left: Option<u64>,
    /// Set once TOP has sent what it was asked for: the rest of the input is ignored.
    done: bool,
}

impl BodyEncoder {
    /// An encoder for RETR (`top_lines` None) or for `TOP n m` (`Some(m)`).
    pub fn new(top_lines: Option<u64>) -> Self {
        BodyEncoder {
            line_len: 0,
            last_was_cr: false,
            in_header: true,
            body_lines_left: top_lines,
            done: false,
        }
    }

    /// True when TOP has everything it needs, so the caller can stop reading the file.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Encodes the next chunk of the file, appending to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.body_lines_left.is_some() {
            self.push_lines(input, out);
        } else {
            self.push_all(input, out);
        }
    }

    /// RETR: no line is counted, so only a bare LF (which gets a CR) and a dot at a line start
    /// (which gets another) change anything. The runs between them are copied whole: for a
    /// CRLF file that is the whole chunk, for an LF file one copy per line.
    ///
    /// A `memchr` call per line costs more than the copying, so after two lines of one length
    /// (base64 and quoted-printable bodies, the bulk of a big message) the next lines' LFs are
    /// guessed at that spacing and the guess checked with one `memchr` count over them all.
    fn push_all(&mut self, input: &[u8], out: &mut Vec<u8>) {
        /// Most lines guessed at once. The batch starts at 1 and doubles while guesses hold, so
        /// a wrong guess wastes little.
        const MAX_BATCH: usize = 32;
        let Some(&last) = input.last() else { return };
        // Room for the usual case up front: a CR per 64-byte line, a stuffed dot now and then.
        out.reserve(input.len() + input.len() / 64 + 8);
        if self.line_len == 0 && input[0] == b'.' {
            out.push(b'.');
        }
        // Input before `run` is already out; input before `from` has had its LFs seen to.
        let mut run = 0;
        let mut from = 0;
        // The last line's length, LF included.
        let mut stride = 0;
        let mut batch = 1;
        while let Some(i) = memchr::memchr(b'\n', &input[from..]) {
            let mut lf = from + i;
            self.line_end(input, lf, &mut run, out);
            let len = lf + 1 - from;
            from = lf + 1;
            if len != stride {
                stride = len;
                continue;
            }
            loop {
                let mut k = 0;
                let mut guess = lf + stride;
                while k < batch && input.get(guess) == Some(&b'\n') {
                    k += 1;
                    guess += stride;
                }
                let end = lf + k * stride;
                // The guessed LFs are there; if they are the only ones, so are the lines.
                if k == 0 || memchr::memchr_iter(b'\n', &input[from..=end]).count() != k {
                    batch = 1;
                    break;
                }
                for _ in 0..k {
                    lf += stride;
                    self.line_end(input, lf, &mut run, out);
                }
                from = lf + 1;
                batch = (batch * 2).min(MAX_BATCH);
            }
        }
        out.extend_from_slice(&input[run..]);
        self.line_len = match from {
            0 => self.line_len + input.len() as u64,
            _ => (input.len() - from) as u64,
        };
        self.last_was_cr = last == b'\r';
    }

    /// RETR's part for the LF at `lf`: a CR before it if it is bare, a second dot after it if
    /// a dot follows. Input from `run` up to an added byte goes out first, and `run` moves on.
    /// Forced inline: left a call (two call sites), it cost an LF file all the guessing saves.
    #[inline(always)]
    fn line_end(&self, input: &[u8], lf: usize, run: &mut usize, out: &mut Vec<u8>) {
        let cr_before = match lf.checked_sub(1) {
            Some(before) => input[before] == b'\r',
            None => self.last_was_cr,
        };
        if !cr_before {
            out.extend_from_slice(&input[*run..lf]);
            out.push(b'\r');
            *run = lf;
        }
        if input.get(lf + 1) == Some(&b'.') {
            out.extend_from_slice(&input[*run..=lf]);
            out.push(b'.');
            *run = lf + 1;
        }
    }

    /// TOP: line by line, counting the header's end and the body lines sent.
    fn push_lines(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if self.line_len == 0 && input[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', input) {
                Some(lf) => {
                    let content = &input[..lf];
                    out.extend_from_slice(content);
                    let cr_before = match content.last() {
                        Some(&b) => b == b'\r',
                        None => self.last_was_cr,
                    };
                    out.extend_from_slice(if cr_before { b"\n" } else { b"\r\n" });
                    let len = self.line_len + content.len() as u64;
                    let empty = len == 0 || (len == 1 && cr_before);
                    input = &input[lf + 1..];
                    self.line_len = 0;
                    self.last_was_cr = false;
                    self.end_of_line(empty);
                }
                None => {
                    out.extend_from_slice(input);
                    self.line_len += input.len() as u64;
                    self.last_was_cr = input.last() == Some(&b'\r');
                    input = &[];
                }
            }
        }
    }

    fn end_of_line(&mut self, line_was_empty: bool) {
        if self.in_header {
            if line_was_empty {
                self.in_header = false;
                if self.body_lines_left == Some(0) {
                    self.done = true;
                }
            }
        } else if let Some(left) = self.body_lines_left.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.done = true;
            }
        }
    }

    /// Ends the reply: completes an unterminated last line, then the ".\r\n" terminator.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.line_len > 0 && !self.done {
            // A trailing CR already went out as content; only its LF is missing.
            out.extend_from_slice(if self.last_was_cr { b"\n" } else { b"\r\n" });
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The number of octets `BodyEncoder` sends for a whole message before byte-stuffing and
/// without the terminator: the size RFC 1939 asks STAT and LIST to report.
#[derive(Debug, Default)]
pub struct WireSize {
    octets: u64,
    last: Option<u8>,
}

impl WireSize {
    pub fn push(&mut self, input: &[u8]) {
        let Some(&last) = input.last() else { return };
        let mut bare_lfs = 0u64;
        let mut prev = self.last;
        let mut rest = input;
        while let Some(lf) = memchr::memchr(b'\n', rest) {
            let before = if lf == 0 { prev } else { Some(rest[lf - 1]) };
            if before != Some(b'\r') {
                bare_lfs += 1;
            }
            prev = Some(b'\n');
            rest = &rest[lf + 1..];
        }
        self.octets += input.len() as u64 + bare_lfs;
        self.last = Some(last);
    }

    pub fn total(&self) -> u64 {
        match self.last {
            None | Some(b'\n') => self.octets,
            // The encoder completes the last line: just the LF after a trailing CR, else CRLF.
            Some(b'\r') => self.octets + 1,
            Some(_) => self.octets + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `input` split into `chunk`-byte pieces, to check that chunk edges don't matter.
    fn encode(input: &[u8], top: Option<u64>, chunk: usize) -> Vec<u8> {
        let mut enc = BodyEncoder::new(top);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            enc.push(piece, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn every_chunking(input: &[u8], top: Option<u64>) -> Vec<u8> {
        let whole = encode(input, top, input.len().max(1));
        for chunk in 1..=input.len().max(1) {
            assert_eq!(encode(input, top, chunk), whole, "chunk size {chunk}");
        }
        whole
    }

    fn size(input: &[u8]) -> u64 {
        let mut s = WireSize::default();
        for piece in input.chunks(3) {
            s.push(piece);
        }
        s.total()
    }

    /// The size reported must be what RETR sends, minus the terminator and stuffed dots.
    fn assert_size_matches(input: &[u8]) {
        let wire = every_chunking(input, None);
        let body = &wire[..wire.len() - 3];
        let stuffed = body
            .split(|&b| b == b'\n')
            .filter(|l| l.first() == Some(&b'.'))
            .count() as u64;
        assert_eq!(size(input), body.len() as u64 - stuffed, "{input:?}");
    }

    #[test]
    fn lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(every_chunking(b"a\nb\n", None), b"a\r\nb\r\n.\r\n");
        assert_eq!(every_chunking(b"a\r\nb\r\n", None), b"a\r\nb\r\n.\r\n");
        assert_eq!(
            every_chunking(b"a\r\nb\nc\r\n", None),
            b"a\r\nb\r\nc\r\n.\r\n"
        );
    }

    #[test]
    fn last_line_without_newline_is_completed() {
        assert_eq!(every_chunking(b"a\nlast", None), b"a\r\nlast\r\n.\r\n");
        assert_eq!(every_chunking(b"a\nlast\r", None), b"a\r\nlast\r\n.\r\n");
        assert_eq!(every_chunking(b"", None), b".\r\n");
    }

    #[test]
    fn dots_are_stuffed() {
        assert_eq!(
            every_chunking(b"a\n.\n..x\n.y\nz.\n", None),
            b"a\r\n..\r\n...x\r\n..y\r\nz.\r\n.\r\n"
        );
        assert_eq!(every_chunking(b".", None), b"..\r\n.\r\n");
    }

    #[test]
    fn bare_cr_inside_a_line_is_content() {
        assert_eq!(every_chunking(b"a\rb\n", None), b"a\rb\r\n.\r\n");
    }

    #[test]
    fn top_sends_header_blank_line_and_n_body_lines() {
        let msg = b"Subject: x\nFrom: y\n\nline1\n.line2\nline3\n";
        assert_eq!(
            every_chunking(msg, Some(0)),
            b"Subject: x\r\nFrom: y\r\n\r\n.\r\n"
        );
        assert_eq!(
            every_chunking(msg, Some(2)),
            b"Subject: x\r\nFrom: y\r\n\r\nline1\r\n..line2\r\n.\r\n"
        );
        assert_eq!(
            every_chunking(msg, Some(u64::MAX)),
            every_chunking(msg, None)
        );
        let crlf = b"Subject: x\r\n\r\nline1\r\nline2\r\n";
        assert_eq!(
            every_chunking(crlf, Some(1)),
            b"Subject: x\r\n\r\nline1\r\n.\r\n"
        );
        // A header with no body at all is sent whole.
        assert_eq!(
            every_chunking(b"Subject: x\n", Some(0)),
            b"Subject: x\r\n.\r\n"
        );
        // Whitespace-only lines do not end the header.
        assert_eq!(
            every_chunking(b"A: b\n \n\nbody\n", Some(0)),
            b"A: b\r\n \r\n\r\n.\r\n"
        );
    }

    #[test]
    fn top_is_done_early_so_the_file_need_not_be_read_to_its_end() {
        let mut enc = BodyEncoder::new(Some(1));
        let mut out = Vec::new();
        enc.push(b"H: v\n\nbody1\nbody2\n", &mut out);
        assert!(enc.is_done());
        enc.push(b"more\n", &mut out);
        enc.finish(&mut out);
        assert_eq!(out, b"H: v\r\n\r\nbody1\r\n.\r\n");
    }

    #[test]
    fn sizes_count_what_retr_sends() {
        for input in [
            &b""[..],
            b"a\n",
            b"a\r\n",
            b"a\nb",
            b"a\nb\r",
            b"\n\n\n",
            b"\r\n\r\n",
            b"x\r\ny\nz\r\n",
            b".\n..\n",
            b"a\rb\n",
            b"\r",
        ] {
            assert_size_matches(input);
        }
        assert_eq!(size(b"a\nb\n"), 6);
        assert_eq!(size(b"a\r\nb\r\n"), 6);
        assert_eq!(size(b"a\nb"), 6);
    }

    #[test]
    fn chunk_edges_between_cr_and_lf_and_before_a_dot() {
        // "a\r" | "\n.b\n": the CR of a CRLF ends one chunk, its LF starts the next.
        assert_eq!(encode(b"a\r\n.b\n", None, 2), b"a\r\n..b\r\n.\r\n");
        // "a\r\n" | ".b\n": a dot opens a chunk at a line start.
        assert_eq!(encode(b"a\r\n.b\n", None, 3), b"a\r\n..b\r\n.\r\n");
        // "a\n" | "." | "\n": a lone dot line split from both its neighbours.
        assert_eq!(encode(b"a\n.\nb", None, 1), b"a\r\n..\r\nb\r\n.\r\n");
        // A CR ending one chunk, content (not an LF) starting the next: the CR is content.
        assert_eq!(encode(b"a\rb\n", None, 2), b"a\rb\r\n.\r\n");
        // A bare LF right after a dot-stuffed line start, and a dot after a bare LF.
        assert_eq!(
            every_chunking(b"\n.\n\n.", None),
            b"\r\n..\r\n\r\n..\r\n.\r\n"
        );
    }

    /// RETR byte by byte, as the spec reads: the oracle for the line-length guessing.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = None;
        for &b in input {
            if b == b'.' && matches!(prev, None | Some(b'\n')) {
                out.push(b'.');
            }
            if b == b'\n' && prev != Some(b'\r') {
                out.push(b'\r');
            }
            out.push(b);
            prev = Some(b);
        }
        match prev {
            None | Some(b'\n') => {}
            Some(b'\r') => out.push(b'\n'),
            Some(_) => out.extend_from_slice(b"\r\n"),
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// Runs of lines of one length, where RETR guesses where the LFs are: guesses that hold,
    /// and ones that fail on a stray LF between the guessed ones, a short or long line, a CRLF
    /// among LFs, a dot at a line start, or the end of the chunk.
    #[test]
    fn lines_of_one_length_are_guessed_right() {
        let cases: [&[u8]; 11] = [
            b"ab\nab\nab\nab\nab\nab\nab\nab\nab\n",
            b"ab\nab\n\nb\nab\n",
            b"ab\r\nab\r\nab\r\nab\r\nab\r\nab\nab\r\n",
            b"ab\nab\na\n\nab\nab\nab\n",
            b"ab\nab\n\n\n\n\n\n\n\n\nab\n",
            b"abc\nabc\nab\n\n\n\nabc\nabc\nabc\nabc",
            b"ab\nab\n.b\nab\n..\n.\nab\nab\n",
            b"\n.\n.\n.\n.\n.\n.\n.\n.",
            b"\n\n\n\n\n\n\n\n\n\n\n\n",
            b"\r\n\r\n\r\n\n\r\n\r\n\r\r\n\r\n",
            b"a\rb\na\rb\na\rb\n\rab\na\rb\n",
        ];
        for input in cases {
            assert_eq!(every_chunking(input, None), reference(input), "{input:?}");
        }
        // Long runs, so the batch grows to its limit, with odd lines deep inside: a stuffed dot
        // and a CRLF (both the same length), a stray LF inside a line, a longer line.
        let mut lines = vec![&b"0123456789abcde\n"[..]; 200];
        lines[60] = b".123456789abcde\n";
        lines[100] = b"0123456\n89abcde\n";
        lines[130] = b"0123456789abcd\r\n";
        lines[150] = b"0123456789abcdef\n";
        let input = lines.concat();
        for chunk in [1, 7, 16, 17, 100, 1000, 1021, 4096, input.len()] {
            assert_eq!(
                encode(&input, None, chunk),
                reference(&input),
                "chunk size {chunk}"
            );
        }
    }

    /// RETR's run-copying path must agree with TOP's line-by-line one when TOP sends all.
    #[test]
    fn retr_and_top_of_everything_agree() {
        let mut input = Vec::new();
        for i in 0..400u32 {
            let line: &[u8] = match i % 7 {
                0 => b".dot\n",
                1 => b"crlf\r\n",
                2 => b"\n",
                3 => b"\r\n",
                4 => b"..\r\n",
                5 => b"bare\rcr\n",
                _ => b"plain text line\n",
            };
            input.extend_from_slice(line);
            input.extend(std::iter::repeat_n(b'x', (i % 5) as usize));
        }
        for chunk in [1, 2, 3, 5, 64, 100, 4096, input.len()] {
            assert_eq!(
                encode(&input, None, chunk),
                encode(&input, Some(u64::MAX), chunk),
                "chunk size {chunk}"
            );
        }
    }
}
