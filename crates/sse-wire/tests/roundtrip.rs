//! Property: what the encoder writes, the parser reads back.

use proptest::prelude::*;
use sse_wire::{Frame, ParsedEvent, Parser, encode};

fn field() -> impl Strategy<Value = String> {
    "[^\r\n\0]{1,20}"
}

fn normalise(data: &str) -> String {
    encode::lines(data).collect::<Vec<_>>().join("\n")
}

fn parse_in_chunks(bytes: &[u8], chunk: usize) -> Vec<Frame> {
    let mut p = Parser::new();
    bytes.chunks(chunk.max(1)).flat_map(|c| p.feed(c)).collect()
}

proptest! {
    #[test]
    fn event_round_trips(name in field(), id in field(), data in any::<String>(), chunk in 1usize..64) {
        let bytes = encode::event(&encode::Event { name: Some(&name), id: Some(&id), retry: None, data: &data }).unwrap();
        let frames = parse_in_chunks(&bytes, chunk);
        prop_assert_eq!(frames, vec![Frame::Event(ParsedEvent {
            event_type: name, data: normalise(&data), last_event_id: id,
        })]);
    }

    #[test]
    fn unnamed_data_round_trips(data in any::<String>(), chunk in 1usize..64) {
        let frames = parse_in_chunks(&encode::data(&data), chunk);
        prop_assert_eq!(frames, vec![Frame::Event(ParsedEvent {
            event_type: "message".into(), data: normalise(&data), last_event_id: String::new(),
        })]);
    }

    #[test]
    fn envelope_round_trips_as_one_message(name in field(), payload in "[ -~\n]{0,40}") {
        let frames = Parser::new().feed(&encode::envelope(&name, &payload).unwrap());
        let Some(Frame::Event(ev)) = frames.first() else { panic!("no event: {frames:?}") };
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(&ev.event_type, "message");
        let want_payload = if payload.is_empty() { "null".to_owned() } else { payload.clone() };
        let type_json = serde_like_json_string(&name);
        prop_assert_eq!(&ev.data, &format!("{{\"type\":{type_json},\"payload\":{want_payload}}}"));
    }

    #[test]
    fn names_with_line_breaks_are_refused(prefix in field(), bad in "[\r\n\0]", suffix in field()) {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(encode::envelope(&name, "1").is_err());
        let named = encode::Event { name: Some(&name), data: "1", ..Default::default() };
        prop_assert!(encode::event(&named).is_err());
    }
}

/// Independent JSON string escaping used as the oracle for the envelope's `type`.
fn serde_like_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
