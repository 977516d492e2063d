//! The Server-Sent Events wire format, as bytes.
//!
//! This crate owns two things and nothing else:
//!
//! * [`encode`]: turns events into the exact bytes a gateway writes on a stream
//!   (the SSEGateway `{type,payload}` envelope for named application events,
//!   plain `data:` lines for unnamed ones, control events such as `ready`).
//!   It refuses, with a [`WireError`], any field that would corrupt the stream
//!   (an event name or id containing CR, LF or NUL) instead of writing it.
//! * [`parse`]: an incremental parser that follows the WHATWG "event stream
//!   interpretation" rules, for clients, load generators and tests.
//!
//! Architecture invariant: no I/O, no async, no allocation beyond the output.

pub mod encode;
pub mod parse;

pub use encode::{Event, WireError};
pub use parse::{Frame, ParsedEvent, Parser};
