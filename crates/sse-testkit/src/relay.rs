//! A loopback TCP relay for two servers that must each know the other's
//! address at start (a gateway's callback URL names the backend, the backend
//! names the gateway): the relay listens on port 0 at once, its address is
//! handed to the first server, and it pipes every connection to the second
//! once [`Relay::forward_to`] names it. No port is guessed or reused.
//!
//! It also plays a network blip between a client and a server that keeps
//! running: [`Relay::cut`] ends every piped connection and holds new ones
//! (accepted, nothing forwarded) until [`Relay::forward_to`] again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A listening relay. Dropping it stops accepting (piped connections end with their peers).
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on 127.0.0.1:0; connections wait until a target is set.
    pub async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (target, rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(to) = rx.wait_for(Option::is_some).await.map(|t| t.expect("set")) else { return };
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let mut inbound = inbound;
                        // Both sockets are dropped (closed) on a cut.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = rx.wait_for(Option::is_none) => {}
                        }
                    }
                });
            }
        });
        Relay { addr, target, task }
    }

    /// From now on (and for connections already waiting), pipe to `to`.
    pub fn forward_to(&self, to: SocketAddr) {
        self.target.send_replace(Some(to));
    }

    /// A network blip: closes every piped connection (both sides) and holds
    /// the connections accepted from now on until [`Relay::forward_to`].
    pub fn cut(&self) {
        self.target.send_replace(None);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
