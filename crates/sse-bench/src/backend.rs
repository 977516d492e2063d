//! `backend`: a minimal callback backend for the gateway under test. It
//! answers every `POST` with 200 `{}` (accept, no bindings of its own) over
//! keep-alive connections, and keeps the set of live tokens (connect adds,
//! disconnect removes) for `GET /tokens`, which the `send` scenario reads.
//!
//! Raw HTTP/1.1 on tokio, like the client side: Content-Length bodies only
//! (what the gateway sends), nothing else of HTTP it does not need.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Largest request body accepted (callback bodies are a few hundred bytes).
const MAX_BODY: usize = 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// Options of `sse-bench backend`.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

type Tokens = Arc<Mutex<HashSet<String>>>;

/// Serves until the process is stopped.
pub async fn run(args: BackendArgs) -> anyhow::Result<()> {
    let listener = listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    // Scripts read this line to learn the port.
    println!("sse-bench backend listening on http://{}", listener.local_addr()?);
    let tokens: Tokens = Arc::default();
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let tokens = Arc::clone(&tokens);
                tokio::spawn(async move {
                    if let Err(e) = serve(tcp, tokens).await {
                        eprintln!("sse-bench backend: connection error: {e:#}");
                    }
                });
            }
            Err(e) => {
                eprintln!("sse-bench backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A listener with a deep accept queue: the gateway opens a burst of new
/// callback connections when hundreds of streams connect at once, and the
/// default backlog (128) would drop SYNs and stall them for a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

struct RequestHead {
    method: String,
    path: String,
    content_length: usize,
    close: bool,
    len: usize,
}

fn parse_head(buf: &[u8]) -> anyhow::Result<Option<RequestHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf).context("malformed request head")? else {
        return Ok(None);
    };
    let mut head = RequestHead {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        content_length: 0,
        close: false,
        len,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().context("bad Content-Length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked request bodies are not supported");
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    if head.content_length > MAX_BODY {
        bail!("request body of {} bytes is over {MAX_BODY}", head.content_length);
    }
    Ok(Some(head))
}

async fn serve(mut tcp: TcpStream, tokens: Tokens) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let head = loop {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            match tcp.read(&mut chunk).await? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head.len);
        while buf.len() < head.content_length {
            match tcp.read(&mut chunk).await? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head.content_length).collect();
        let (status, answer) = answer(&head.method, &head.path, &body, &tokens);
        let mut resp =
            format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", answer.len())
                .into_bytes();
        resp.extend_from_slice(&answer);
        tcp.write_all(&resp).await?;
        if head.close {
            return Ok(());
        }
    }
}

fn answer(method: &str, path: &str, body: &[u8], tokens: &Tokens) -> (&'static str, Vec<u8>) {
    match method {
        "POST" => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
                && let Some(token) = v.get("token").and_then(|t| t.as_str())
            {
                let mut live = tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match v.get("action").and_then(|a| a.as_str()) {
                    Some("connect") => {
                        live.insert(token.to_owned());
                    }
                    Some("disconnect") => {
                        live.remove(token);
                    }
                    _ => {}
                }
            }
            ("200 OK", b"{}".to_vec())
        }
        "GET" if path == "/tokens" => {
            let live = tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let list: Vec<&String> = live.iter().collect();
            ("200 OK", serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec()))
        }
        _ => ("404 Not Found", br#"{"error":"not found"}"#.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_adds_and_disconnect_removes_tokens() {
        let tokens = Tokens::default();
        let connect = br#"{"action":"connect","token":"t1","request":{"url":"/s","headers":{}}}"#;
        assert_eq!(answer("POST", "/callback", connect, &tokens), ("200 OK", b"{}".to_vec()));
        assert_eq!(answer("GET", "/tokens", b"", &tokens).1, br#"["t1"]"#.to_vec());
        let disconnect = br#"{"action":"disconnect","reason":"client_closed","token":"t1","request":{}}"#;
        answer("POST", "/callback", disconnect, &tokens);
        assert_eq!(answer("GET", "/tokens", b"", &tokens).1, b"[]".to_vec());
        assert_eq!(answer("GET", "/other", b"", &tokens).0, "404 Not Found");
    }

    #[test]
    fn request_heads_are_parsed_incrementally() {
        assert!(parse_head(b"POST /cb HTTP/1.1\r\nContent-Le").expect("partial is fine").is_none());
        let head = parse_head(b"POST /cb HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .expect("valid")
            .expect("complete");
        assert_eq!((head.method.as_str(), head.content_length, head.close, head.len), ("POST", 2, true, 59));
        assert!(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }
}
