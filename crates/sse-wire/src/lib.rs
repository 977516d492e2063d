//! The Server-Sent Events wire format, as bytes.
//!
//! This crate owns three things and nothing else:
//!
//! * [`encode`]: turns events into the exact bytes a gateway writes on a stream
//!   (the SSEGateway `{type,payload}` envelope for named application events,
//!   plain `data:` lines for unnamed ones, control events such as `ready`).
//!   It refuses, with a [`WireError`], any field that would corrupt the stream
//!   (an event name or id containing CR, LF or NUL) instead of writing it.
//! * [`parse`]: an incremental parser that follows the WHATWG "event stream
//!   interpretation" rules, for clients, load generators and tests.
//! * [`chunked`]: an incremental decoder of the HTTP/1.1 chunked framing an
//!   SSE stream arrives in, so every client (the load generator, the test
//!   client) reads the stream's bytes the same way before parsing them.
//!
//! Architecture invariant: no I/O, no async, no allocation beyond the output.

pub mod chunked;
pub mod encode;
pub mod parse;

pub use chunked::{ChunkError, Dechunker};
pub use encode::{Event, WireError};
pub use parse::{Frame, ParsedEvent, Parser};
