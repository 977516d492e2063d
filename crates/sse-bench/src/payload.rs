//! The benchmark payload: `{"seq":N,"ts":MICROS}`, its encoding and a fast
//! extraction that works on both targets' event data.
//!
//! `ts` is microseconds since the UNIX epoch from this machine's clock, taken
//! just before the publish or send request is written; the receiver subtracts
//! it from its own reading of the same clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the UNIX epoch (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The payload JSON text for sequence number `seq` sent at `ts`.
pub fn encode(seq: u64, ts: u64) -> String {
    format!(r#"{{"seq":{seq},"ts":{ts}}}"#)
}

/// Like [`encode`], with a `"pad"` string of `pad` bytes after the two
/// numbers (events of a chosen size; [`decode`] still finds them).
pub fn encode_padded(seq: u64, ts: u64, pad: usize) -> String {
    if pad == 0 {
        return encode(seq, ts);
    }
    format!(r#"{{"seq":{seq},"ts":{ts},"pad":"{}"}}"#, "x".repeat(pad))
}

/// Reads `seq` and `ts` from event data: the bare payload (Nchan) or the
/// gateway's envelope `{"type":"bench","payload":{"seq":..,"ts":..}}`.
/// A scan for the two keys instead of a JSON parse: the client must keep up
/// with hundreds of thousands of events per second on a shared core.
pub fn decode(data: &str) -> Option<(u64, u64)> {
    Some((number_after(data, r#""seq":"#)?, number_after(data, r#""ts":"#)?))
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].trim_start();
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bare_payload_and_gateway_envelope() {
        let bare = encode(12, 1_764_000_000_000_000);
        assert_eq!(decode(&bare), Some((12, 1_764_000_000_000_000)));
        let envelope = format!(r#"{{"type":"bench","payload":{bare}}}"#);
        assert_eq!(decode(&envelope), Some((12, 1_764_000_000_000_000)));
        assert_eq!(decode(r#"{"seq": 3, "ts": 4}"#), Some((3, 4)));
    }

    #[test]
    fn padded_payloads_decode_alike() {
        let padded = encode_padded(7, 99, 100);
        assert_eq!(padded.len(), encode(7, 99).len() + 100 + r#","pad":"""#.len());
        assert_eq!(decode(&padded), Some((7, 99)));
        assert_eq!(encode_padded(7, 99, 0), encode(7, 99));
    }

    #[test]
    fn anything_else_is_none() {
        assert_eq!(decode(""), None);
        assert_eq!(decode(r#"{"seq":1}"#), None);
        assert_eq!(decode(r#"{"seq":"x","ts":1}"#), None);
    }
}
