//! What can go wrong talking to a broker.

/// An error from [`Client`](crate::Client).
///
/// ```no_run
/// # async fn demo(client: mist_client::Client) {
/// match client.publish(&["a"], "x").await {
///     Ok(()) => {}
///     Err(mist_client::Error::Server { message, .. }) => eprintln!("refused: {message}"),
///     Err(mist_client::Error::Closed) => eprintln!("the broker went away"),
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached.
    #[error("cannot reach {target}: {source}")]
    Connect {
        /// What was dialled, as given to [`Client::connect`](crate::Client::connect).
        target: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// The TLS handshake failed: most often, the server's certificate does
    /// not verify against the trusted roots (the system's, or the CA file
    /// given, whose certificates are also trusted as themselves). An
    /// unverified certificate is never accepted. Also what every call
    /// returns once the server has ended the connection with a TLS alert
    /// (over TLS 1.3, a server that wants a client certificate says so
    /// after the handshake).
    #[error("TLS with {target} failed: {reason}")]
    Tls {
        /// What was dialled.
        target: String,
        /// Why, in words, with what to do about it.
        reason: String,
    },

    /// The CA file to trust could not be used.
    #[error("cannot use the CA file {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },

    /// The WebSocket handshake or a frame failed.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),

    /// The broker refused the token.
    #[error("authentication failed: {0}")]
    Auth(String),

    /// The broker answered a request with an error reply.
    #[error("{command}: {message}")]
    Server {
        /// The command the broker names in its reply.
        command: String,
        /// The broker's reason, as it wrote it.
        message: String,
    },

    /// The connection is closed: by the broker, the network, or an earlier
    /// failure. Every later call returns this too (or [`Error::Tls`] when
    /// a TLS alert closed it).
    #[error("the connection to the broker is closed")]
    Closed,

    /// The broker sent something that is not a Mist message.
    #[error("the broker sent something that is not a Mist message: {0}")]
    Protocol(String),

    /// The broker sent a line (or WebSocket message) longer than `limit`
    /// bytes ([`MAX_LINE_BYTES`](crate::MAX_LINE_BYTES)); the connection is
    /// closed.
    #[error("the broker sent a line longer than {limit} bytes; the connection is closed")]
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },

    /// Writing to the connection failed.
    #[error("writing to the broker: {0}")]
    Io(#[from] std::io::Error),

    /// A tag set or message this client will not send (an empty tag set, an
    /// empty tag).
    #[error("{0}")]
    Invalid(&'static str),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Error {
        Error::WebSocket(Box::new(e))
    }
}
