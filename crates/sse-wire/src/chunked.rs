//! Incremental decoder of HTTP/1.1 `Transfer-Encoding: chunked` bodies.
//!
//! An SSE stream over HTTP/1.1 reaches a client chunked (the gateway writes
//! one chunk per batch of frames), so a client must undo that framing before
//! it hands the bytes to [`crate::Parser`]. The load generator and the test
//! client both use this one decoder.
//!
//! Owns the framing state of one body and nothing else: no I/O, no buffering
//! of payload beyond what the caller hands in (a partial size line is the only
//! thing it keeps).

use thiserror::Error;

/// The body is not valid chunked encoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    /// A size line that is not a hexadecimal number (extensions allowed).
    #[error("bad chunk size line {0:?}")]
    BadSize(String),
    /// A size or trailer line longer than any real one.
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A chunk's payload not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
}

/// Longest size or trailer line accepted; real ones are a few bytes.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a `<hex size>[;ext]\r\n` line.
    Size,
    /// Copying this many more payload bytes.
    Data(usize),
    /// Expecting the `\r` after a chunk's payload.
    DataCr,
    /// Expecting the `\n` after a chunk's payload.
    DataLf,
    /// After the zero-size chunk: skipping trailer lines up to the empty one.
    Trailer,
    /// The terminating empty line was read.
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug)]
pub struct Dechunker {
    state: State,
    line: Vec<u8>,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self { state: State::Size, line: Vec::new() }
    }
}

impl Dechunker {
    /// True once the whole body (terminating chunk and trailer) was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending payload bytes to `out`. Returns how many input
    /// bytes belong to this body (all of them unless the body ended inside).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size | State::Trailer => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.push_line(rest)?;
                        return Ok(input.len());
                    };
                    self.push_line(&rest[..nl])?;
                    pos += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    let text = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = if self.state == State::Trailer {
                        if text.is_empty() { State::Done } else { State::Trailer }
                    } else {
                        match parse_size(text)? {
                            0 => State::Trailer,
                            n => State::Data(n),
                        }
                    };
                    self.line = line;
                    self.line.clear();
                }
                State::Data(n) => {
                    let take = n.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = if take == n { State::DataCr } else { State::Data(n - take) };
                }
                State::DataCr => {
                    self.state = match rest[0] {
                        b'\r' => State::DataLf,
                        // A bare LF is tolerated, as most parsers do.
                        b'\n' => State::Size,
                        _ => return Err(ChunkError::MissingCrlf),
                    };
                    pos += 1;
                }
                State::DataLf => {
                    if rest[0] != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Size;
                    pos += 1;
                }
            }
        }
        Ok(pos)
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), ChunkError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }
}

fn parse_size(line: &[u8]) -> Result<usize, ChunkError> {
    let bad = || ChunkError::BadSize(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let hex = text.split(';').next().unwrap_or("").trim();
    usize::from_str_radix(hex, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(body: &[u8], piece: usize) -> (Vec<u8>, bool, usize) {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in body.chunks(piece) {
            used += d.feed(part, &mut out).expect("valid body");
            if d.is_done() {
                break;
            }
        }
        (out, d.is_done(), used)
    }

    #[test]
    fn decodes_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n";
        for piece in [1, 2, 3, 7, body.len()] {
            let (out, done, used) = decode_in_pieces(body, piece);
            assert_eq!(out, b"hello world!", "piece size {piece}");
            assert!(done);
            assert_eq!(used, body.len());
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body_and_reports_bytes_used() {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        let used = d.feed(b"2\r\nab\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 200", &mut out).expect("valid");
        assert_eq!(out, b"ab");
        assert!(d.is_done());
        assert_eq!(used, 20);
    }

    #[test]
    fn an_open_stream_is_not_done() {
        let (out, done, _) = decode_in_pieces(b"3\r\nabc\r\n4\r\nde", 100);
        assert_eq!(out, b"abcde");
        assert!(!done);
    }

    #[test]
    fn rejects_bad_framing() {
        let mut out = Vec::new();
        assert!(matches!(Dechunker::default().feed(b"zz\r\n", &mut out), Err(ChunkError::BadSize(_))));
        assert_eq!(Dechunker::default().feed(b"1\r\naXY", &mut out), Err(ChunkError::MissingCrlf));
        assert_eq!(Dechunker::default().feed(&[b'1'; MAX_LINE + 1], &mut out), Err(ChunkError::LineTooLong));
    }
}
