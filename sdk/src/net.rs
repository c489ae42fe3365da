//! Serving a TCP port: what every socket listener needs around its
//! per-connection code.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::SdkError;
use crate::plugin::Listener;
use crate::uri::socket_address;

/// Binds the `host:port` of `uri` and runs `serve` for each connection on
/// this library's runtime, until the host stops the listener.
///
/// Binding happens before this returns, so a port in use is reported to the
/// host as the start-up error it is. `serve` gets a receiver that changes
/// when the listener stops: a connection should then finish and close.
/// Call it from [`crate::Plugin::start_listener`], which runs inside the
/// plugin's runtime.
///
/// ```no_run
/// use mist_sdk::{Listener, SdkError};
/// fn start(uri: &str) -> Result<Box<dyn Listener>, SdkError> {
///     mist_sdk::net::serve_tcp(uri, |stream, peer, _stop| async move {
///         tracing::info!(%peer, "connected");
///         drop(stream);
///     })
/// }
/// ```
pub fn serve_tcp<F, Fut>(uri: &str, serve: F) -> Result<Box<dyn Listener>, SdkError>
where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = socket_address(uri)?;
    let bound = std::net::TcpListener::bind(&addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|e| SdkError::unavailable(format!("cannot listen on {addr}: {e}")))?;
    let local_addr = bound
        .local_addr()
        .map_err(|e| SdkError::other(format!("cannot read the bound address: {e}")))?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(accept(bound, serve, stopped));
    Ok(Box::new(Serving { local_addr, stop }))
}

struct Serving {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Listener for Serving {
    fn local_addr(&self) -> String {
        self.local_addr.to_string()
    }

    fn stop(&self) {
        self.stop.send_replace(true);
    }
}

async fn accept<F, Fut>(listener: TcpListener, serve: F, mut stop: watch::Receiver<bool>)
where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve(stream, peer, stop.clone()));
                }
                // Out of file descriptors and the like: keep serving the
                // connections we have and try again shortly.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}
