//! Fuzz the SSE parser: it must never panic, and splitting the input into two
//! chunks anywhere must give exactly the frames of parsing it in one piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_wire::Parser;

fuzz_target!(|data: &[u8]| {
    let whole = Parser::new().feed(data);
    let split = data.first().map_or(0, |b| *b as usize) % (data.len() + 1);
    let mut p = Parser::new();
    let mut chunked = p.feed(&data[..split]);
    chunked.extend(p.feed(&data[split..]));
    assert_eq!(whole, chunked);
});
