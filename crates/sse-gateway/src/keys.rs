//! Routing keys: what a valid key is, and the keys a new stream is bound to
//! (the connect answer's `bindings`, else the `DEFAULT_BINDINGS` templates).
//!
//! Pure logic, no I/O; used by the command parser, the configuration and the
//! connect path.

use tracing::warn;

use crate::hook::Accepted;

/// Largest routing key accepted (AMQP's limit, so keys work with a broker too).
pub const MAX_KEY_BYTES: usize = 255;

/// A routing key: 1-255 bytes, no whitespace or control characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The routing keys of a new stream: the answer's bindings, else the default
/// templates with `{request_id}` filled in (skipped when there is no value).
pub(crate) fn bindings(defaults: &[String], accepted: &Accepted, url: &str) -> Vec<String> {
    let valid = |k: &String| is_valid_key(k);
    if !accepted.bindings.is_empty() {
        let keys: Vec<String> = accepted.bindings.iter().filter(|k| valid(k)).cloned().collect();
        if keys.len() != accepted.bindings.len() {
            warn!("ignored invalid routing keys in the connect answer");
        }
        return keys;
    }
    let request_id = accepted.request_id.clone().or_else(|| query_param(url, "request_id"));
    defaults
        .iter()
        .filter_map(|t| match (t.contains("{request_id}"), &request_id) {
            (false, _) => Some(t.clone()),
            (true, Some(id)) if !id.is_empty() => Some(t.replace("{request_id}", id)),
            (true, _) => None,
        })
        .filter(valid)
        .collect()
}

/// The first value of a query parameter, percent-decoded.
pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        vec!["broadcast".into(), "connection.{request_id}".into()]
    }

    #[test]
    fn answer_bindings_win_over_defaults() {
        let a = Accepted { bindings: vec!["subject.u".into(), "bad key".into()], ..Accepted::default() };
        assert_eq!(bindings(&defaults(), &a, "/s?request_id=q"), vec!["subject.u"]);
    }

    #[test]
    fn defaults_take_request_id_from_answer_then_query() {
        let a = Accepted { request_id: Some("ans".into()), ..Accepted::default() };
        assert_eq!(bindings(&defaults(), &a, "/s?request_id=q"), vec!["broadcast", "connection.ans"]);
        assert_eq!(
            bindings(&defaults(), &Accepted::default(), "/s?x=1&request_id=a%2Fb&request_id=2"),
            vec!["broadcast", "connection.a/b"]
        );
        assert_eq!(bindings(&defaults(), &Accepted::default(), "/s"), vec!["broadcast"]);
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(query_param("/?a=%zz%41+b%", "a").as_deref(), Some("%zzA b%"));
    }
}
