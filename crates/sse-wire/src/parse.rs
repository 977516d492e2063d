//! An incremental event-stream parser following the WHATWG rules.
//!
//! Feed it bytes in chunks of any size; it returns complete frames. It strips
//! one leading UTF-8 BOM, accepts `\r\n`, `\r` and `\n` line ends (also when a
//! `\r\n` pair is split across chunks), ignores unknown fields, treats a line
//! without a colon as a field with an empty value, removes one optional space
//! after the colon, accepts `retry` only when it is all ASCII digits, ignores an
//! `id` containing NUL, dispatches on a blank line, and discards an event that
//! was not terminated when the stream ends (simply by never dispatching it).
//!
//! Unlike a browser it also reports comments and `retry` values as frames, so
//! tests and load generators can observe heartbeats and reconnection hints.

/// An event as a browser's `EventSource` would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event type (`message` when no `event:` field was given).
    pub event_type: String,
    /// The data lines joined with `\n`.
    pub data: String,
    /// The last event id in force when the event was dispatched.
    pub last_event_id: String,
}

/// One thing the parser recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A dispatched event.
    Event(ParsedEvent),
    /// A comment line (the text after the colon, one leading space removed).
    Comment(String),
    /// A valid `retry:` field (milliseconds).
    Retry(u64),
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Incremental parser state. Cheap to create; one per stream.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// Bytes seen so far at the very start, while deciding about the BOM.
    start: Option<Vec<u8>>,
    bom_checked: bool,
    after_cr: bool,
    event_type: String,
    data: String,
    last_event_id: String,
    reconnection_time: Option<u64>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last `retry:` value seen, if any.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// The last event id seen.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds a chunk and returns the frames it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        if !self.bom_checked {
            let mut start = self.start.take().unwrap_or_default();
            start.extend_from_slice(chunk);
            if start.len() < BOM.len() && BOM.starts_with(&start) {
                self.start = Some(start);
                return out;
            }
            self.bom_checked = true;
            let body = start.strip_prefix(BOM).unwrap_or(&start);
            self.scan(body, &mut out);
            return out;
        }
        self.scan(chunk, &mut out);
        out
    }

    fn scan(&mut self, mut rest: &[u8], out: &mut Vec<Frame>) {
        if self.after_cr {
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
            if !rest.is_empty() {
                self.after_cr = false;
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            self.line.extend_from_slice(&rest[..i]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            self.line = line;
            self.line.clear();
            let is_cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if is_cr {
                if rest.is_empty() {
                    self.after_cr = true;
                } else if rest[0] == b'\n' {
                    rest = &rest[1..];
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn process_line(&mut self, raw: &[u8], out: &mut Vec<Frame>) {
        if raw.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(raw);
        let (field, value) = match line.find(':') {
            Some(0) => {
                let text = &line[1..];
                out.push(Frame::Comment(text.strip_prefix(' ').unwrap_or(text).to_owned()));
                return;
            }
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.reconnection_time = Some(ms);
                    out.push(Frame::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        out.push(Frame::Event(ParsedEvent {
            event_type: if event_type.is_empty() { "message".to_owned() } else { event_type },
            data,
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str, d: &str, id: &str) -> Frame {
        Frame::Event(ParsedEvent { event_type: t.into(), data: d.into(), last_event_id: id.into() })
    }

    fn parse_all(input: &[u8]) -> Vec<Frame> {
        Parser::new().feed(input)
    }

    fn parse_bytewise(input: &[u8]) -> Vec<Frame> {
        let mut p = Parser::new();
        input.iter().flat_map(|b| p.feed(std::slice::from_ref(b))).collect()
    }

    #[test]
    fn simple_event_dispatches_on_blank_line() {
        assert_eq!(parse_all(b"data: hello\n\n"), vec![ev("message", "hello", "")]);
    }

    #[test]
    fn all_three_line_endings_including_split_crlf() {
        let input = b"data: a\r\ndata: b\rdata: c\n\r\n";
        let want = vec![ev("message", "a\nb\nc", "")];
        assert_eq!(parse_all(input), want);
        assert_eq!(parse_bytewise(input), want);
    }

    #[test]
    fn leading_bom_is_stripped_once_even_bytewise() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(parse_all(input), vec![ev("message", "x", "")]);
        assert_eq!(parse_bytewise(input), vec![ev("message", "x", "")]);
        // A second BOM is part of the field name, so the line is ignored.
        assert_eq!(parse_all(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), vec![]);
    }

    #[test]
    fn comments_are_reported_and_do_not_dispatch() {
        assert_eq!(
            parse_all(b": heartbeat\n\n:raw\n"),
            vec![Frame::Comment("heartbeat".into()), Frame::Comment("raw".into())]
        );
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        // "data" alone appends an empty line; the event dispatches with empty data.
        assert_eq!(parse_all(b"event: ready\ndata\n\n"), vec![ev("ready", "", "")]);
        assert_eq!(parse_all(b"event: ready\ndata:\n\n"), vec![ev("ready", "", "")]);
    }

    #[test]
    fn only_one_space_after_colon_is_removed() {
        assert_eq!(parse_all(b"data:  two\n\n"), vec![ev("message", " two", "")]);
        assert_eq!(parse_all(b"data:none\n\n"), vec![ev("message", "none", "")]);
    }

    #[test]
    fn retry_accepts_digits_only() {
        assert_eq!(parse_all(b"retry: 1500\n"), vec![Frame::Retry(1500)]);
        let mut p = Parser::new();
        assert_eq!(p.feed(b"retry: 15x\nretry: -1\nretry:\nretry: 1 \n"), vec![]);
        assert_eq!(p.reconnection_time(), None);
    }

    #[test]
    fn id_with_nul_is_ignored_and_id_persists() {
        let frames = parse_all(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\ndata: c\n\n");
        assert_eq!(frames, vec![ev("message", "a", "1"), ev("message", "b", "1"), ev("message", "c", "1")]);
    }

    #[test]
    fn blank_line_without_data_resets_event_type() {
        assert_eq!(parse_all(b"event: x\n\ndata: y\n\n"), vec![ev("message", "y", "")]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(parse_all(b"foo: bar\ndata: y\n\n"), vec![ev("message", "y", "")]);
    }

    #[test]
    fn trailing_partial_event_is_discarded() {
        let mut p = Parser::new();
        assert_eq!(p.feed(b"data: complete\n\ndata: partial\n"), vec![ev("message", "complete", "")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(parse_all(b"data: \xFF\n\n"), vec![ev("message", "\u{FFFD}", "")]);
    }
}
